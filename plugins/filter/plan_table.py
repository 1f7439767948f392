# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.vllm_planner import format_plan_table, rows_from_results

DOCUMENTATION = r"""
name: plan_table
short_description: Format vllm_plan results of many hosts as a readable text table
version_added: 0.1.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - Turns the plans of many hosts into one table (host, cards, model, topology, weights per card, KV tokens per
    instance, max concurrency), followed by each host's reasons, warnings, or the error that refused it.
  - The input is either a list of rows (dicts with C(host) and C(plan) or C(error)), or a list of host names, in
    which case O(hostvars) and O(result) say where each host's plan is - the C(gpufleet_plan) the
    C(gpufleet.serving.plan) role publishes (a plan, or C(refused) with the message), or a registered
    M(gpufleet.serving.vllm_plan) result.
positional: _input, hostvars
options:
  _input:
    description: Rows, or host names.
    type: list
    elements: raw
    required: true
  hostvars:
    description: The C(hostvars) mapping; required when O(_input) holds host names.
    type: dict
  result:
    description: Name of the variable that holds each host's plan (or its registered M(gpufleet.serving.vllm_plan) result).
    type: str
    default: gpufleet_plan
  width:
    description: Width at which reasons and warnings are wrapped.
    type: int
    default: 120
"""

EXAMPLES = r"""
- name: Print the plans of every GPU server
  ansible.builtin.debug:
    msg: "{{ ansible_play_hosts_all | gpufleet.serving.plan_table(hostvars) }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: The table, one line per host, then the notes of each host.
  type: str
"""


def plan_table(data, hostvars=None, result="gpufleet_plan", width=120):
    if not isinstance(data, (list, tuple)):
        raise AnsibleFilterError("plan_table: expects a list of rows or of host names, not %s" % type(data).__name__)
    if all(isinstance(item, str) for item in data) and data:
        if hostvars is None:
            raise AnsibleFilterError("plan_table: a list of host names needs hostvars, as in hosts | gpufleet.serving.plan_table(hostvars)")
        results = {}
        for host in data:
            try:
                variables = hostvars[host]
            except KeyError:
                results[host] = None
                continue
            registered = variables.get(result) if hasattr(variables, "get") else None
            results[host] = dict(registered) if hasattr(registered, "keys") else None
        rows = rows_from_results(list(data), results)
    else:
        rows = list(data)
        for row in rows:
            if not hasattr(row, "get"):
                raise AnsibleFilterError("plan_table: every row must be a dict with host and plan or error, not %r" % (row,))
    return format_plan_table(rows, width=int(width))


class FilterModule:
    def filters(self):
        return {"plan_table": plan_table}
