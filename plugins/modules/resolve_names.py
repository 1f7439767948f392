#!/usr/bin/python
# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: resolve_names
short_description: Resolve host names to addresses on the host, each within a time limit
version_added: 0.3.0
description:
  - Looks each of O(names) up with the host's own resolver (C(getaddrinfo), so C(/etc/hosts) and the host's DNS
    settings apply), and returns the distinct addresses of each. Changes nothing.
  - An address literal resolves to itself. A name the resolver does not know, or that does not answer within
    O(timeout) seconds, resolves to no address; the module does not fail for it, so that the caller can say which
    variable to change.
  - Names are looked up at the same time, so the module takes about O(timeout) seconds at most.
author: gpufleet.serving contributors (@gpufleet)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - gpufleet.serving.attributes
options:
  names:
    description: Host names or IP addresses (at most 512).
    type: list
    elements: str
    required: true
  timeout:
    description: Seconds to wait for each name (at most 120).
    type: float
    default: 10
"""

EXAMPLES = r"""
- name: Resolve the GPU servers behind this gateway
  gpufleet.serving.resolve_names:
    names: [gpu1, gpu2.example.net, 10.0.0.12]
  register: resolved

- name: Fail when one of them has no address
  ansible.builtin.assert:
    that: resolved.unresolved | length == 0
    fail_msg: "cannot resolve {{ resolved.unresolved | join(', ') }}"
"""

RETURN = r"""
addresses:
  description: For each name, its distinct addresses in the resolver's order (empty when it did not resolve).
  returned: always
  type: dict
  sample: {"gpu1": ["10.0.0.11"], "10.0.0.12": ["10.0.0.12"], "gone.example.net": []}
unresolved:
  description: The names with no address, sorted.
  returned: always
  type: list
  elements: str
  sample: [gone.example.net]
timed_out:
  description: The names whose look-up did not end within O(timeout), sorted (they are in RV(unresolved) too).
  returned: always
  type: list
  elements: str
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.serving.plugins.module_utils import name_resolution
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            names=dict(type="list", elements="str", required=True),
            timeout=dict(type="float", default=10),
        ),
        supports_check_mode=True,
    )
    names = module.params["names"]
    try:
        name_resolution.check_inputs(names, module.params["timeout"])
    except InputError as exc:
        module.fail_json(msg=str(exc))
    found, timed_out = name_resolution.resolve(names, module.params["timeout"])
    unresolved = sorted(name for name, addresses in found.items() if not addresses)
    module.exit_json(changed=False, addresses=found, unresolved=unresolved, timed_out=timed_out)


if __name__ == "__main__":
    main()
