# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.gateway_layout import backends, fleet_peers, group_follower, names_to_resolve, plans_read

DOCUMENTATION = r"""
name: gateway_hosts
short_description: The GPU servers behind a fleet gateway and the gateways in front of a GPU server
version_added: 0.3.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - For the gateway role. The fleet tier's backends are O(_input) (C(gateway_backends)) when it is not empty, else
    every host of O(server_hosts) with its own C(gateway_address), C(gateway_server_port) and C(gateway_weight)
    (O(default_port) and 1 when it sets none). Only those three host variables and the plan are read from O(hostvars).
  - A follower of a group of servers (its plan's C(group.node_rank) above 0) serves no HTTP and is no backend. A
    server's plan is this run's (C(gpufleet_plan) in O(hostvars)), else the one read from the server (O(remote)), so
    that a run limited to the gateways (C(playbooks/add_servers.yml)) leaves the followers out too. A server whose
    plan is known neither way stays a backend.
  - The fleet peers are the C(gateway_address) (else the name) of every host of O(fleet_hosts).
  - Port and weight given as strings of digits become numbers; other values are passed on as they are, for the
    role's input check to name them.
positional: _input, hostvars, server_hosts, fleet_hosts, default_port
options:
  _input:
    description: C(gateway_backends), a list of C({address, name, port, weight}); empty means the server group.
    type: list
    elements: dict
    required: true
  hostvars:
    description: The C(hostvars) mapping.
    type: dict
    required: true
  server_hosts:
    description: The hosts of C(gateway_server_group).
    type: list
    elements: str
    required: true
  fleet_hosts:
    description: The hosts of C(gateway_fleet_group).
    type: list
    elements: str
    required: true
  default_port:
    description: C(gateway_server_port) of the host the role runs on.
    type: int
    required: true
  is_server:
    description: Whether the host runs the server tier.
    type: bool
    default: false
  is_fleet:
    description: Whether the host runs the fleet tier.
    type: bool
    default: false
  remote:
    description: The C(results) of a C(slurp) of the plan file of the servers outside this run (C(item) the server).
    type: list
    elements: dict
    default: []
"""

EXAMPLES = r"""
- name: The GPU servers behind this gateway
  ansible.builtin.debug:
    msg: >-
      {{ (gateway_backends | gpufleet.serving.gateway_hosts(hostvars, groups['gpu_servers'], groups['gateways'],
          gateway_server_port))['backends'] }}
"""

RETURN = r"""
_value:
  description:
    - C(backends) (the fleet tier's backends, C({name, address, port, weight})), C(from_group) (the backends the
      server group gives, whatever O(_input) says), C(peers) (the fleet gateways' names or addresses) and
      C(names) (what this host resolves - the backends' addresses on a fleet gateway, the peers on either tier).
  type: dict
"""

_HOST_KEYS = ("gateway_address", "gateway_server_port", "gateway_weight")


def _host_vars(hostvars, hosts):
    """host -> the few variables of it the role reads, those it sets."""
    out = {}
    for host in hosts:
        try:
            own = hostvars[host]
        except (KeyError, TypeError) as exc:
            raise AnsibleFilterError("gateway_hosts: %s is not in the inventory" % host) from exc
        out[host] = {key: own[key] for key in _HOST_KEYS if key in own}
    return out


def _plan(hostvars, host, fetched):
    """This run's plan of host, else the plan read from it (None when neither is known)."""
    try:
        plan = hostvars[host].get("gpufleet_plan")
    except (KeyError, TypeError, AttributeError):
        plan = None
    return plan if isinstance(plan, Mapping) and plan else fetched.get(host)


def gateway_hosts(given, hostvars, server_hosts, fleet_hosts, default_port, *, is_server=False, is_fleet=False, remote=None):
    if not isinstance(given, list) or not all(isinstance(b, Mapping) for b in given):
        raise AnsibleFilterError("gateway_backends must be a list of {address, name, port, weight}, not %r" % (given,))
    if not isinstance(hostvars, Mapping):
        raise AnsibleFilterError("gateway_hosts: hostvars must be the hostvars mapping")
    # A follower of a group of servers (its plan's group, node_rank above 0) serves no HTTP: not a backend.
    if remote is not None and not isinstance(remote, list):
        raise AnsibleFilterError("gateway_hosts: remote must be the results of a slurp loop, not %r" % (remote,))
    fetched = plans_read(remote)
    server_hosts = [host for host in server_hosts if not group_follower(_plan(hostvars, host, fetched))]
    host_vars = _host_vars(hostvars, list(server_hosts) + list(fleet_hosts))
    from_group = backends([], list(server_hosts), host_vars, default_port)
    chosen = backends(given, [], {}, default_port) if given else from_group
    peers = fleet_peers(list(fleet_hosts), host_vars)
    return {"backends": chosen, "from_group": from_group, "peers": peers, "names": names_to_resolve(chosen, peers, is_server, is_fleet)}


class FilterModule:
    def filters(self):
        return {"gateway_hosts": gateway_hosts}
