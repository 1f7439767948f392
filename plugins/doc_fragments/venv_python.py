# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The python option of the modules that run inside a virtualenv's interpreter."""

from __future__ import annotations


class ModuleDocFragment:
    # For modules with an action plugin built on plugin_utils/venv_python.py.
    DOCUMENTATION = r"""
options:
  python:
    description:
      - The Python interpreter to run the module with, such as a virtualenv's C(bin/python).
      - The module's action plugin makes Ansible use it for this task even where C(ansible_python_interpreter) is set
        otherwise (an extra variable included); the module fails when it does not run under it.
      - By default the host's interpreter, as for any module.
    type: str
"""
