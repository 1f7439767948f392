# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Run a module with the Python its ``python`` option names (a virtualenv's), whatever else sets the interpreter.

``python_package_info`` and ``hf_snapshot`` ask about, or use, what a
virtualenv has installed, so they must run under its Python. The task
variable ``ansible_python_interpreter`` would do, except that an extra
variable (``-e ansible_python_interpreter=/usr/bin/python3``, common on the
command line and in this repository's test fleet) takes precedence over task
variables. The action plugins of those modules give the module's ``python``
option to Ansible as the interpreter for that one task; the module checks that
it really runs under it.
"""

from __future__ import annotations

import os
import re

from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash

PYTHON_RE = re.compile(r"^/[A-Za-z0-9._+@/-]{1,4095}$")


def interpreter_vars(task_vars, python):
    """task_vars with ``ansible_python_interpreter`` set to ``python`` (a copy), or ValueError naming ``python``."""
    if python is None:
        return task_vars
    if not isinstance(python, str) or not PYTHON_RE.fullmatch(python) or os.path.normpath(python) != python:
        raise ValueError(
            "python %r must be the absolute, normalised path of a Python interpreter (letters, digits and ._+@/-),"
            " such as /opt/vllm/venv/bin/python" % (python,)
        )
    out = dict(task_vars)
    out["ansible_python_interpreter"] = python
    return out


class VenvPythonAction(ActionBase):
    """Runs the module of the same name with the interpreter its ``python`` argument names."""

    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        try:
            module_vars = interpreter_vars(task_vars or {}, self._task.args.get("python"))
        except ValueError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        result = merge_hash(result, self._execute_module(task_vars=module_vars))
        self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
