# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.gateway_layout import apply_drained, empty_drained, parse_drained

DOCUMENTATION = r"""
name: gateway_drained
short_description: Mark the drained upstream servers of a gateway site model down
version_added: 0.3.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - O(_input) is the drained set a host keeps (the JSON of C(/etc/nginx/gpufleet/drained.json), or null when there
    is none); O(model) a site model from M(gpufleet.serving.gateway_site_model).
  - A drained set that is not what the drain entry point writes is reported in C(problems) and not used.
positional: _input, model, reset
options:
  _input:
    description: The drained set, C({version, server, fleet}) as JSON text or a dict, or null.
    type: raw
    required: true
  model:
    description: The site model.
    type: dict
    required: true
  reset:
    description: Put every server back (C(gateway_undrain_all)); the set read is then only reported, and a set that
      cannot be read is no reason to stop.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: The site model with the drained servers marked down
  ansible.builtin.debug:
    msg: "{{ (__state.content | b64decode) | gpufleet.serving.gateway_drained(_gateway_model) }}"
"""

RETURN = r"""
_value:
  description:
    - C(model) (the site model with C(down) set), C(drained) (the set in force, as the state file holds it),
      C(kept) (per tier, the names marked down), C(released) (per tier, the names O(reset) put back),
      C(stale) (per tier, drained names the model has no server for, left out) and C(problems).
  type: dict
"""


def gateway_drained(state, model, reset=False):
    if not isinstance(model, Mapping):
        raise AnsibleFilterError("gateway_drained: the model must be a site model (a dict)")
    drained, problems = parse_drained(state)
    if problems and not reset:
        return {"model": model, "drained": drained, "kept": {}, "released": {}, "stale": {}, "problems": problems}
    found = apply_drained(model, drained)
    result = apply_drained(model, empty_drained()) if reset else found
    in_force = empty_drained()
    in_force.update(result["kept"])
    released = found["kept"] if reset else {tier: [] for tier in found["kept"]}
    return {"model": result["model"], "drained": in_force, "kept": result["kept"], "released": released, "stale": found["stale"], "problems": []}


class FilterModule:
    def filters(self):
        return {"gateway_drained": gateway_drained}
