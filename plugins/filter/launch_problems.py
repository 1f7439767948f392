# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible_collections.gpufleet.serving.plugins.module_utils.vllm_launch import LaunchError, check_plan

DOCUMENTATION = r"""
name: launch_problems
short_description: Why a vllm_plan cannot be launched as it is (empty when it can)
version_added: 0.1.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - Checks a plan given to the vllm role (from M(gpufleet.serving.vllm_plan), or edited by hand) before anything is
    written - instances with their own cards and ports (1024-65535), names fit for a systemd unit, arguments and
    environment that systemd can carry, and a launch that agrees field by field with the plan's figures
    (C(--max-model-len), C(--dtype), C(--gpu-memory-utilization) or C(--kv-cache-memory-bytes), C(--max-num-seqs),
    the parallel sizes, C(CUDA_VISIBLE_DEVICES)).
  - Returns a list with the message of the first problem, naming the variable to change; an empty list when the plan
    can be launched.
positional: _input, prefix
options:
  _input:
    description: The plan.
    type: raw
    required: true
  prefix:
    description: Prefix of the variable names in the messages (the vllm role passes V(vllm_)).
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: Check the plan
  ansible.builtin.assert:
    that: _problems | length == 0
    fail_msg: "{{ _problems | join(' ') }}"
  vars:
    _problems: "{{ vllm_plan | gpufleet.serving.launch_problems('vllm_') }}"
"""

RETURN = r"""
_value:
  description: Messages (at most one); empty when the plan can be launched.
  type: list
  elements: str
"""


def launch_problems(plan, prefix=""):
    try:
        check_plan(plan, prefix=prefix)
    except LaunchError as exc:
        return [str(exc)]
    return []


class FilterModule:
    def filters(self):
        return {"launch_problems": launch_problems}
