# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.vllm_launch import exec_start, instance_exec_start

DOCUMENTATION = r"""
name: systemd_exec_start
short_description: Quote a vLLM instance's argument vector for systemd's ExecStart=
version_added: 0.1.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - Returns C(<python> -m vllm.entrypoints.openai.api_server) followed by every argument of O(_input), each one word
    for systemd (double-quoted with backslash escapes when needed), C(%) doubled (specifiers) and C($) doubled
    (variables), so that a value with a space stays one argument and nothing is expanded.
  - Given a whole plan instance instead of its C(argv), returns the instance's command as the vllm role runs it.
    A member of a group of servers (topology C(pp)) runs under the group guard (O(guard)), and a follower runs
    C(vllm serve --headless) through the headless launcher (O(headless)).
  - Fails on a control character (a newline would end the line).
positional: _input, python
options:
  _input:
    description: The arguments (a plan instance's C(argv)), or the plan instance itself.
    type: raw
    required: true
  python:
    description: Absolute path of the interpreter of vLLM's virtualenv.
    type: str
    required: true
  guard:
    description: Absolute path of the group guard's launcher (a member of a group only).
    type: str
    default: ""
  headless:
    description: Absolute path of the headless launcher (a group's follower only).
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: The drop-in line of one instance
  ansible.builtin.debug:
    msg: "ExecStart={{ instance['argv'] | gpufleet.serving.systemd_exec_start('/opt/vllm/venv/bin/python') }}"
"""

RETURN = r"""
_value:
  description: The value of C(ExecStart=).
  type: str
"""


def systemd_exec_start(argv, python, guard="", headless=""):
    if isinstance(argv, dict):
        words = argv.get("argv")
        if not isinstance(words, (list, tuple)) or not all(isinstance(word, str) for word in words):
            raise AnsibleFilterError("systemd_exec_start: the instance has no argv (a list of strings)")
        try:
            return instance_exec_start(python, argv, guard, headless)
        except (TypeError, ValueError) as exc:
            raise AnsibleFilterError("systemd_exec_start: %s" % exc) from exc
    if not isinstance(argv, (list, tuple)) or not all(isinstance(word, str) for word in argv):
        raise AnsibleFilterError("systemd_exec_start: expects a list of strings (an instance's argv), not %r" % (argv,))
    try:
        return exec_start(python, list(argv))
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError("systemd_exec_start: %s" % exc) from exc


class FilterModule:
    def filters(self):
        return {"systemd_exec_start": systemd_exec_start}
