# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible_collections.gpufleet.serving.plugins.module_utils.role_inputs import role_input_problems as _problems

DOCUMENTATION = r"""
name: role_input_problems
short_description: What is wrong with a role's variables before it touches a host (empty when nothing)
version_added: 0.1.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - Checks the variables of one of the collection's roles (V(gateway), V(vllm), V(plan), V(nvidia), V(artifact_cache),
    V(bakeoff), V(watchdog), V(monitoring)) against the role's schema - names in a strict character set, ports and their ranges, nginx times, sizes
    and rates, addresses and networks (never everyone), host names, paths confined to their directory, URLs, bounded
    lists and numbers, booleans that are real booleans - and then against each other (ports that must differ, instance
    ports that must fit below 65536).
  - Only the variables present in the mapping are checked; the roles pass every variable with their prefix.
  - Returns one message per problem, each starting with the variable's name and saying what to change. Secrets (API
    keys, tokens, private keys) are never quoted.
positional: _input, variables
options:
  _input:
    description: The role's name.
    type: str
    required: true
  variables:
    description: The role's variables, name to value. The gateway role adds C(_gateway_backends) and C(_gateway_instances),
      the backends and instances it worked out, so that values from other hosts and from the plan are checked too.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Check the role's inputs
  ansible.builtin.assert:
    that: _problems | length == 0
    fail_msg: "{{ _problems | join(' ') }}"
  vars:
    _names: "{{ query('ansible.builtin.varnames', '^nvidia_') }}"
    _problems: "{{ 'nvidia' | gpufleet.serving.role_input_problems(dict(_names | zip(query('ansible.builtin.vars', *_names)))) }}"
"""

RETURN = r"""
_value:
  description: Messages, one per problem; empty when the variables can be used as they are.
  type: list
  elements: str
"""


def role_input_problems(role, variables):
    return _problems(role, variables)


class FilterModule:
    def filters(self):
        return {"role_input_problems": role_input_problems}
