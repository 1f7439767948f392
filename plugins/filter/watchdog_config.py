# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import json
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.fence_watchdog import WatchdogError, config_from_plan

DOCUMENTATION = r"""
name: watchdog_config
short_description: The configuration of a GPU server's fence watchdog, from its plan
version_added: 0.4.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - Turns a host's plan (the plan role's C(gpufleet_plan), or the JSON the vllm role keeps in C(/etc/vllm/plan.json))
    into what C(gpufleet-watchdog.service) reads from C(/etc/gpufleet/watchdog.json) - each instance's name, port, unit
    and served model name, and the watchdog's settings - and checks all of it the way the watchdog does when it starts.
  - Fails with a message that names the field to change when the plan or a setting cannot be used.
positional: _input, settings, plan_file
options:
  _input:
    description: The plan, as a dict or as JSON text; an empty one means O(plan_file).
    type: raw
    required: true
  settings:
    description: The watchdog's settings (C(interval), C(probe_timeout), C(failures), C(ready_successes),
      C(start_timeout), C(key_file), C(textfile_dir), C(state_dir), C(nginx_dir), C(validator)); absent ones take the
      watchdog's defaults.
    type: dict
    required: true
  plan_file:
    description: The content of the plan file the vllm role keeps on the host (JSON text), used when O(_input) is empty;
      null when there is none.
    type: raw
    default: null
"""

EXAMPLES = r"""
- name: Write the watchdog's configuration
  ansible.builtin.copy:
    content: "{{ gpufleet_plan | gpufleet.serving.watchdog_config({'interval': 5, 'failures': 3}) | to_nice_json }}"
    dest: /etc/gpufleet/watchdog.json
    mode: "0640"
"""

RETURN = r"""
_value:
  description: The checked configuration, C(version) 1, every setting filled in and C(instances) as
    C([{name, port, unit, served_model_name}]).
  type: dict
"""


def _plan(plan, plan_file):
    if not plan and plan_file is None:
        raise AnsibleFilterError(
            "watchdog_config: there is no plan for this host: pass watchdog_plan (site.yml passes the plan role's gpufleet_plan) "
            "or run the vllm role on it first (it writes the plan file watchdog_plan_path names)"
        )
    value = plan or plan_file
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise AnsibleFilterError("watchdog_config: the plan file is not JSON (%s): run the vllm role on the host again" % str(exc)[:200]) from None
    return value


def watchdog_config(plan, settings, plan_file=None):
    if not isinstance(settings, Mapping):
        raise AnsibleFilterError("watchdog_config: the settings must be a mapping")
    try:
        return config_from_plan(_plan(plan, plan_file), dict(settings))
    except WatchdogError as exc:
        raise AnsibleFilterError("watchdog_config: %s" % exc) from None


class FilterModule:
    def filters(self):
        return {"watchdog_config": watchdog_config}
