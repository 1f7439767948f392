# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The action of hf_snapshot: the module runs with the Python its python option names (see plugin_utils/venv_python.py)."""

from __future__ import annotations

from ansible_collections.gpufleet.serving.plugins.plugin_utils.venv_python import VenvPythonAction


class ActionModule(VenvPythonAction):
    """Runs hf_snapshot with the interpreter of its python option."""
