# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.artifact_cache import ArtifactError, allow_list

DOCUMENTATION = r"""
name: artifact_cache_allow
short_description: Who may fetch from the fleet's artifact cache, for nginx and for tcp wrappers
version_added: 0.3.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - Loopback, and the addresses or CIDR ranges of O(_input) when it is not empty; when it is empty, every non-link-local
    address the facts give for the hosts of O(hosts) (C(all_ipv4_addresses), C(all_ipv6_addresses), and
    C(ansible_host) when it is an address).
  - Entries that are not addresses or ranges, and ranges of every address (C(0.0.0.0/0)), are reported in C(problems)
    rather than used.
positional: _input, hostvars, hosts
options:
  _input:
    description: The explicit list (C(artifact_cache_allow)); empty means the fleet's addresses.
    type: list
    elements: raw
    required: true
  hostvars:
    description: The C(hostvars) mapping.
    type: dict
  hosts:
    description: The hosts the cache serves.
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Who may fetch from the cache
  ansible.builtin.set_fact:
    _access: "{{ artifact_cache_allow | gpufleet.serving.artifact_cache_allow(hostvars, groups['gpu_servers']) }}"
"""

RETURN = r"""
_value:
  description:
    - C(nginx) (entries for C(allow)), C(tcpd) (the same in the form of C(/etc/hosts.allow)), C(missing) (hosts
      without a usable address in their facts) and C(problems) (entries of O(_input) refused, each with its reason).
  type: dict
"""


def _tcpd(entry):
    network = ipaddress.ip_network(entry, strict=False)
    if network.version == 6:
        return "[%s]" % entry if network.num_addresses == 1 else "[%s]/%d" % (network.network_address, network.prefixlen)
    return entry if network.num_addresses == 1 else "%s/%s" % (network.network_address, network.netmask)


def _addresses(variables):
    facts = variables.get("ansible_facts") or {}
    found = list(facts.get("all_ipv4_addresses") or []) + list(facts.get("all_ipv6_addresses") or [])
    host = variables.get("ansible_host")
    if isinstance(host, str):
        try:
            found.append(str(ipaddress.ip_address(host)))
        except ValueError:
            pass
    return found


def artifact_cache_allow(explicit, hostvars=None, hosts=None):
    if not isinstance(explicit, list):
        return {"nginx": [], "tcpd": [], "missing": [], "problems": ["artifact_cache_allow must be a list, not %r" % (explicit,)]}
    problems = []
    for entry in explicit:
        try:
            allow_list([entry], {})
        except ArtifactError as exc:
            problems.append(str(exc))
    if problems:
        return {"nginx": [], "tcpd": [], "missing": [], "problems": problems}
    addresses = {}
    for host in hosts or []:
        try:
            variables = hostvars[host]
        except (KeyError, TypeError) as exc:
            raise AnsibleFilterError("artifact_cache_allow: %s is not in the inventory" % host) from exc
        addresses[host] = _addresses(variables)
    entries, missing = allow_list(list(explicit), addresses)
    return {"nginx": entries, "tcpd": [_tcpd(e) for e in entries], "missing": missing, "problems": []}


class FilterModule:
    def filters(self):
        return {"artifact_cache_allow": artifact_cache_allow}
