# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The few ansible-core test hooks that differ across the versions meta/runtime.yml claims.

The collection's own code runs unchanged on ansible-core 2.17 to 2.19; only the
hooks the unit tests use to drive it moved with 2.19's data tagging. Each name
here is 2.19's own where it exists and the older equivalent otherwise, so one
test runs on both `make unit` (.venv, the newest) and `make unit-oldest`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from unittest import mock

from ansible.module_utils import basic
from ansible.module_utils.common import warnings as ansible_warnings

__all__ = ["DATA_TAGGING", "holds", "import_controller_plugin", "load_trusted", "patch_module_args", "run_as_module", "trust_as_template"]

try:  # 2.19: a string is a template only when trusted
    from ansible.template import trust_as_template

    DATA_TAGGING = True
except ImportError:  # before 2.19 every string is a template
    DATA_TAGGING = False

    def trust_as_template(value):
        """Before 2.19 every string given to Templar is a template: nothing to mark."""
        return value


def load_trusted(loader, path):
    """A role's YAML file (defaults, vars) as Ansible loads it, its strings templates on every version."""
    if DATA_TAGGING:
        return loader.load_from_file(str(path), trusted_as_template=True)
    return loader.load_from_file(str(path))


def holds(templar, conditions):
    """Whether a task's ``when``/``that`` (a string or a list of them) holds with the templar's variables."""
    if hasattr(templar, "evaluate_conditional"):  # 2.19
        return templar.evaluate_conditional(conditions)
    from ansible.playbook.conditional import Conditional  # noqa: PLC0415 - only before 2.19

    conditional = Conditional(loader=templar._loader)
    conditional.when = conditions if isinstance(conditions, list) else [conditions]
    return conditional.evaluate_conditional(templar, templar.available_variables)


try:  # 2.19
    from ansible.module_utils.testing import patch_module_args
except ImportError:

    @contextlib.contextmanager
    def patch_module_args(args=None):
        """Expose ``args`` to AnsibleModule instances created in this context (as 2.19's helper does)."""
        if not isinstance(args, (dict, type(None))):
            raise TypeError("patch_module_args takes a dict or None, not %s" % type(args).__name__)
        payload = json.dumps({"ANSIBLE_MODULE_ARGS": args or {}}).encode()
        with mock.patch.object(basic, "_ANSIBLE_ARGS", payload):
            yield


try:  # 2.19: importing controller code flips a process-wide flag that reroutes module warnings
    from ansible.module_utils import _internal as _module_utils_internal
except ImportError:  # before 2.19 AnsibleModule.warn() always lands in the result
    _module_utils_internal = None


def import_controller_plugin(name):
    """Import a filter plugin (controller code) and leave ansible's is_controller flag as it was.

    On 2.19 importing ansible.errors sets the flag, after which AnsibleModule.warn() in
    other test files goes to the controller's display instead of the module's result.
    """
    was = _module_utils_internal.is_controller if _module_utils_internal is not None else None
    try:
        return importlib.import_module(name)
    finally:
        if _module_utils_internal is not None:
            _module_utils_internal.is_controller = was


def run_as_module(monkeypatch):
    """Start a test with no warnings kept from another test, and AnsibleModule acting target-side."""
    # 2.19 keeps warnings in a dict, older versions in a list: an empty one of the same kind.
    monkeypatch.setattr(ansible_warnings, "_global_warnings", type(ansible_warnings._global_warnings)())
    if _module_utils_internal is not None:
        monkeypatch.setattr(_module_utils_internal, "is_controller", False)
