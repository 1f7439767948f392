# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils import fleet_models

DOCUMENTATION = r"""
name: fleet_models
short_description: Check gpufleet_models, the models a fleet serves, and place a GPU server or the fleet in it
version_added: 0.5.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - O(_input) is C(gpufleet_models), a list of C({name, group, balance}) (empty - one model for the whole fleet).
  - With O(host), the problems of the list and of that GPU server's place in it (in exactly one model's group;
    O(served_name) empty or the model's name) - the plan role's check.
  - With O(server_hosts), the problems for the fleet as a whole (every GPU server in exactly one model's group,
    every model with a server) - the gateway role's check on a fleet gateway.
  - With O(want=name), the served name of O(host)'s model (empty when there is none); with O(want=balance), its
    C(balance) (empty when it has none of its own).
  - With O(want=pools), the fleet tier's pools of O(backends) - C([{model, backends, balance}]) in the list's order, one pool of
    every backend (model empty) without models; with O(want=pool_problems), why O(backends) cannot be pooled (a
    backend of C(gateway_backends) without a C(model) of the list, or a GPU server in no model's group).
  - Returns a list of sentences, empty when all is well, the name, or the pools.
positional: _input, groups
options:
  _input:
    description: C(gpufleet_models).
    type: list
    elements: dict
    required: true
  groups:
    description: The C(groups) mapping.
    type: dict
    required: true
  host:
    description: A GPU server's inventory name.
    type: str
    default: ""
  served_name:
    description: That server's C(plan_served_model_name).
    type: str
    default: ""
  server_hosts:
    description: Every GPU server (the hosts of the server group), for the fleet's check.
    type: list
    elements: str
  server_group:
    description: The server group's name, for the messages.
    type: str
    default: gpu_servers
  backends:
    description: The fleet tier's backends (the gateway role's), for O(want=pools) and O(want=pool_problems).
    type: list
    elements: dict
  want:
    description: What to return.
    type: str
    default: problems
    choices: [problems, name, balance, pools, pool_problems]
"""

EXAMPLES = r"""
- name: Check this server's place among the fleet's models
  ansible.builtin.assert:
    that: _problems | length == 0
    fail_msg: "{{ _problems | join(' ') }}"
  vars:
    _problems: "{{ gpufleet_models | default([]) | gpufleet.serving.fleet_models(groups, host=inventory_hostname) }}"
"""

RETURN = r"""
_value:
  description: The problems (sentences naming what to change), or with O(want=name) the served name, with O(want=balance) the balance.
  type: raw
"""


def fleet_models_filter(models, groups, host="", served_name="", server_hosts=None, server_group="gpu_servers", backends=None, want="problems"):
    if want not in ("problems", "name", "balance", "pools", "pool_problems"):
        raise AnsibleFilterError("fleet_models: want must be problems, name, balance, pools or pool_problems, not %r" % (want,))
    if want == "name":
        return fleet_models.model_name(host, models or [], groups or {})
    if want == "balance":
        return fleet_models.model_balance(host, models or [], groups or {})
    if want in ("pools", "pool_problems"):
        if not isinstance(backends, list):
            raise AnsibleFilterError("fleet_models: want=%s needs backends, a list of the fleet tier's backends" % want)
        try:
            found = fleet_models.pools(backends, models or [], groups or {})
        except ValueError as exc:
            if want == "pool_problems":
                return [str(exc)]
            raise AnsibleFilterError("fleet_models: %s (the gateway role's preflight says what to change)" % exc) from None
        return found if want == "pools" else []
    if server_hosts is not None:
        return fleet_models.fleet_problems(models, groups or {}, list(server_hosts), server_group)
    if not host:
        raise AnsibleFilterError("fleet_models: give host (a GPU server's check) or server_hosts (the fleet's)")
    return fleet_models.host_problems(host, models, groups or {}, served_name or "")


class FilterModule:
    def filters(self):
        return {"fleet_models": fleet_models_filter}
