# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.serving.plugins.module_utils.gateway_layout import GatewayLayoutError, drain, load_model, parse_drained

DOCUMENTATION = r"""
name: gateway_drain
short_description: The drained set of a gateway after a drain request
version_added: 0.3.0
author: gpufleet.serving contributors (@gpufleet)
description:
  - For the gateway role's C(drain) entry point. O(_input) is the site model the host's configuration was last
    written from (C(/etc/nginx/gpufleet/site.json)); O(drained) the drained set the host keeps (or null).
  - Names that are not upstream servers of O(tier) in the model are returned in C(unknown); the entry point
    refuses the request then. A model or set the role did not write is reported in C(problems).
positional: _input, drained, tier, names, state
options:
  _input:
    description: The host's site model, as JSON text or a dict; null when the host has none.
    type: raw
    required: true
  drained:
    description: The host's drained set, as JSON text or a dict, or null.
    type: raw
    required: true
  tier:
    description: C(server) (instances of a GPU server) or C(fleet) (GPU servers of a gateway).
    type: str
    required: true
  names:
    description: Instance names, or GPU servers' names.
    type: list
    elements: str
    required: true
  state:
    description: C(drained) or C(serving).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: The new drained set
  ansible.builtin.set_fact:
    _set: "{{ _model | gpufleet.serving.gateway_drain(_drained, 'server', ['1'], 'drained') }}"
"""

RETURN = r"""
_value:
  description: C(drained) (the new set), C(model) (the host's site model), C(unknown) (names refused) and C(problems).
  type: dict
"""


def gateway_drain(model, drained, tier, names, state):
    if model is None:
        return {"drained": None, "model": None, "unknown": [], "problems": ["the site model is missing: the gateway role has not run on this host yet"]}
    model, problems = load_model(model)
    if problems:
        return {"drained": None, "model": None, "unknown": [], "problems": ["the site model " + p for p in problems]}
    current, problems = parse_drained(drained)
    if problems:
        return {"drained": None, "model": None, "unknown": [], "problems": ["the drained set " + p for p in problems]}
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise AnsibleFilterError("gateway_drain: names must be a list of strings")
    try:
        result = drain(model, current, tier, names, state)
    except GatewayLayoutError as exc:
        raise AnsibleFilterError("gateway_drain: %s" % exc) from None
    return dict(result, model=model, problems=[])


class FilterModule:
    def filters(self):
        return {"gateway_drain": gateway_drain}
