# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.server_groups import KEYS, group_input

DOCUMENTATION = r"""
name: server_group
short_description: The planner's group input for a server that may be grouped with others (gpufleet_server_group)
version_added: 0.1.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - Returns C({group, problems}) for O(host) - C(group) is the O(gpufleet.serving.vllm_plan#module:group) option
    (the servers sharing its C(gpufleet_server_group), in inventory order, each with its address between the
    servers, its cards and its vLLM version) or C(None) when the host is in no server group; C(problems) names
    the variable to change.
  - Reads of each server only C(gpufleet_server_group), C(gpufleet_group_interface), C(gpufleet_group_address),
    C(gpufleet_group_port), C(plan_gpu_profile), C(plan_gpu_count), C(plan_device), C(vllm_version),
    C(vllm_cpu_version) and its facts (C(nvidia_gpus), the network facts).
positional: _input, hostvars, host, play_hosts
options:
  _input:
    description: The inventory's hosts in order (C(groups['all'])).
    type: list
    elements: str
    required: true
  hostvars:
    description: C(hostvars).
    type: raw
    required: true
  host:
    description: The server being planned.
    type: str
    required: true
  play_hosts:
    description: The hosts of this run (C(ansible_play_hosts_all)).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: The group this server may be planned in
  ansible.builtin.debug:
    msg: "{{ groups['all'] | gpufleet.serving.server_group(hostvars, inventory_hostname, ansible_play_hosts_all) }}"
"""

RETURN = r"""
_value:
  description: C(group) (the planner's group input, or None) and C(problems) (sentences).
  type: dict
"""

_READ = (*KEYS, "plan_gpu_profile", "plan_gpu_count", "plan_device", "vllm_version", "vllm_cpu_version", "ansible_facts")


def _own(hostvars, host):
    try:
        own = hostvars[host]
    except (KeyError, TypeError) as exc:
        raise AnsibleFilterError("server_group: %s is not in the inventory" % host) from exc
    return {key: own[key] for key in _READ if key in own}


def server_group(hosts, hostvars, host, play_hosts):
    if not isinstance(hosts, list) or not isinstance(play_hosts, list) or not isinstance(hostvars, Mapping):
        raise AnsibleFilterError("server_group: give groups['all'], hostvars, the host and ansible_play_hosts_all")
    name = _own(hostvars, host).get("gpufleet_server_group")
    if not name:
        return {"group": None, "problems": []}
    members = []
    for other in hosts:
        own = hostvars[other]
        if "gpufleet_server_group" in own and own["gpufleet_server_group"] == name:
            members.append((other, _own(hostvars, other)))
    return group_input(host, members, list(play_hosts))


class FilterModule:
    def filters(self):
        return {"server_group": server_group}
