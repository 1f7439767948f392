# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.cache_router import backend_instances
from ansible_collections.gpufleet.serving.plugins.module_utils.gateway_layout import plans_read

DOCUMENTATION = r"""
name: gateway_backend_instances
short_description: The vLLM instances of each GPU server, for the routers of cache-aware pools
version_added: 0.5.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - Returns a mapping of each server of O(_input) to its instances' names, from this run's plan of each
    (C(gpufleet_plan) in O(hostvars)), else from the plan the vllm role left on it (O(remote), the results of a
    C(slurp) loop over the servers). A server with neither is left out.
positional: _input, hostvars, remote
options:
  _input:
    description: The GPU servers' inventory names.
    type: list
    elements: str
    required: true
  hostvars:
    description: The C(hostvars) mapping.
    type: dict
    required: true
  remote:
    description: The C(results) of a C(slurp) of each server's plan file (C(item) the server).
    type: list
    elements: dict
    default: []
"""

EXAMPLES = r"""
- name: The instances of the pool's servers
  ansible.builtin.debug:
    msg: "{{ groups['gpu_servers'] | gpufleet.serving.gateway_backend_instances(hostvars, __plans.results | default([])) }}"
"""

RETURN = r"""
_value:
  description: The instances' names of each server whose plan is known.
  type: dict
"""


def gateway_backend_instances(servers, hostvars, remote=None):
    if not isinstance(servers, list):
        raise AnsibleFilterError("gateway_backend_instances: expects a list of server names, not %r" % (servers,))
    fetched = plans_read(remote)
    plans = {}
    for server in servers:
        plan = (hostvars.get(server) or {}).get("gpufleet_plan")
        plans[server] = plan if isinstance(plan, dict) and plan.get("instances") else fetched.get(server)
    return backend_instances(plans)


class FilterModule:
    def filters(self):
        return {"gateway_backend_instances": gateway_backend_instances}
