# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.cache_router import CacheRouterError, router_exec_start

DOCUMENTATION = r"""
name: gateway_router_exec_start
short_description: The ExecStart= line of a cache-aware pool's vLLM router
version_added: 0.5.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - O(_input) is one C(cache_routers) entry of the gateway's site model (a model with C(balance=cache_aware) in
    C(gpufleet_models)); returns O(program) followed by the router's arguments (loopback ports, the C(cache_aware)
    policy, the workers' URLs, health checks, the request timeout), each one word for systemd.
  - Fails, naming the value, on an entry whose values the launch may not carry.
positional: _input, program
options:
  _input:
    description: The router entry of the site model.
    type: dict
    required: true
  program:
    description: Absolute path of C(vllm-router) in its virtualenv.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: The router's start line
  ansible.builtin.debug:
    msg: "ExecStart={{ router | gpufleet.serving.gateway_router_exec_start('/opt/gpufleet-router/venv/bin/vllm-router') }}"
"""

RETURN = r"""
_value:
  description: The value of C(ExecStart=).
  type: str
"""


def gateway_router_exec_start(router, program):
    try:
        return router_exec_start(program, router)
    except CacheRouterError as exc:
        raise AnsibleFilterError("gateway_router_exec_start: %s" % exc) from None


class FilterModule:
    def filters(self):
        return {"gateway_router_exec_start": gateway_router_exec_start}
