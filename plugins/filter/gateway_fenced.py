# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.gateway_layout import fenced_details, parse_fenced

DOCUMENTATION = r"""
name: gateway_fenced
short_description: The instances the watchdog fenced, from the fenced set a GPU server keeps
version_added: 0.3.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - O(_input) is the fenced set a GPU server keeps (the JSON of C(/etc/nginx/gpufleet/fenced.json), written only by the
    watchdog), or null when there is none; O(model) a site model from M(gpufleet.serving.gateway_site_model) or the
    one the host keeps.
  - A set that is not what the watchdog writes is reported in C(problems) and gives no names.
positional: _input, model
options:
  _input:
    description: The fenced set, C({version, fenced}) as JSON text or a dict, or null.
    type: raw
    required: true
  model:
    description: The site model whose server tier the names are looked up in.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: The fenced instances
  ansible.builtin.debug:
    msg: "{{ (__fenced.content | b64decode) | gpufleet.serving.gateway_fenced(_gateway_model) }}"
"""

RETURN = r"""
_value:
  description:
    - C(fenced) (every instance name of the set, sorted), C(kept) (those the model's server tier has, each as
      C(vllm@NAME (REASON)) for the play's output) and C(problems) (sentences that follow the file's name).
  type: dict
"""


def gateway_fenced(state, model):
    if not isinstance(model, Mapping):
        raise AnsibleFilterError("gateway_fenced: the model must be a site model (a dict)")
    names, problems = parse_fenced(state)
    if problems:
        return {"fenced": [], "kept": [], "problems": problems}
    server = model.get("server") or {}
    labels = [s.get("label") for s in (server.get("upstream") or {}).get("servers") or [] if isinstance(s, Mapping)]
    reasons = fenced_details(state)
    kept = ["vllm@%s (%s)" % (name, reasons[name] or "no reason given") for name in labels if name in reasons]
    return {"fenced": names, "kept": kept, "problems": []}


class FilterModule:
    def filters(self):
        return {"gateway_fenced": gateway_fenced}
