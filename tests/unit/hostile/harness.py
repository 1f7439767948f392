"""Run a module of this collection the way Ansible does, and say how it ended.

Ansible runs a module as a separate Python process that reads its arguments
from a JSON file (``{"ANSIBLE_MODULE_ARGS": {...}}``) and prints one JSON
result. ``run_module`` does the same: ``python -m
ansible_collections.gpufleet.serving.plugins.modules.<name> ARGS_FILE`` with
this worktree's ``collections`` directory first on ``PYTHONPATH``, under a hard
timeout, and classifies what came back:

``clear``
    ``failed: true`` with a message that names the expected input;
``vague``
    ``failed: true`` but the message does not name it;
``traceback``
    no JSON result, a result from an uncaught exception, or a Python
    traceback anywhere in the output;
``hang``
    the process was still running at the timeout (it is killed);
``accepted``
    the module did not fail.

``snapshot(directory)`` records every entry under a directory (type, size,
modification time and a digest of regular files), so that a case can assert
that the module changed nothing on the host: ``snapshot(d) == before``.

Small API, for the other hostile suites too::

    outcome = run_module("vllm_plan", {"model": "/nowhere"}, expect="model")
    outcome.kind, outcome.msg, outcome.seconds, outcome.result

``run_cases`` runs many at once in a thread pool (start-up dominates a case).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
COLLECTIONS = os.path.join(ROOT, "collections")
MODULE_PACKAGE = "ansible_collections.gpufleet.serving.plugins.modules"
DEFAULT_TIMEOUT = 30.0
KINDS = ("clear", "vague", "traceback", "hang", "accepted")


@dataclass
class Outcome:
    """How one module run ended (``kind`` is one of ``KINDS``)."""

    kind: str
    msg: str = ""
    seconds: float = 0.0
    result: dict = field(default_factory=dict)
    output: str = ""


def _classify(returncode, stdout, stderr, expect):
    text = stdout + stderr
    try:
        result = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        # a module prints exactly one JSON object; several lines: try the whole output
        try:
            result = json.loads(stdout)
        except ValueError:
            result = None
    if not isinstance(result, dict) or "Traceback (most recent call last)" in text:
        return "traceback", "", result or {}
    msg = str(result.get("msg", ""))
    if result.get("exception") and "Traceback" in str(result.get("exception")):
        return "traceback", msg, result
    if not result.get("failed"):
        return "accepted", msg, result
    if expect and expect not in msg:
        return "vague", msg, result
    return "clear", msg, result


def run_module(name, args, timeout=DEFAULT_TIMEOUT, expect=None, *, env=None, cwd=None):
    """Run module ``name`` with ``args`` in a fresh Python process; returns an ``Outcome``.

    ``expect``: the text (an option name, a file name) the failure message must
    hold for the outcome to be ``clear``. ``env``: variables added to (or, with
    a ``None`` value, removed from) the process's environment.
    """
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([COLLECTIONS] + [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    environ.setdefault("LC_ALL", "C.UTF-8")
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    handle, args_file = tempfile.mkstemp(prefix="hostile-args-", suffix=".json")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump({"ANSIBLE_MODULE_ARGS": args}, out)
        began = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "%s.%s" % (MODULE_PACKAGE, name), args_file],
                capture_output=True,
                timeout=timeout,
                env=environ,
                cwd=cwd or tempfile.gettempdir(),
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode("utf-8", "replace") + (exc.stderr or b"").decode("utf-8", "replace")
            return Outcome("hang", "", time.monotonic() - began, {}, output[-4000:])
        seconds = time.monotonic() - began
    finally:
        os.unlink(args_file)
    stdout = done.stdout.decode("utf-8", "replace")
    stderr = done.stderr.decode("utf-8", "replace")
    kind, msg, result = _classify(done.returncode, stdout, stderr, expect)
    return Outcome(kind, msg, seconds, result, (stdout + stderr)[-4000:])


def snapshot(directory):
    """{relative path: (kind, size, mtime_ns, sha1)} of everything under ``directory`` (links are not followed).

    Regular files are hashed up to 16 MiB (a bigger file is compared by size and time);
    FIFOs, devices and sockets are recorded without being opened.
    """
    found = {}
    if directory is None or not os.path.lexists(directory):
        return found
    for top, dirs, files in os.walk(directory):
        for entry in dirs + files:
            path = os.path.join(top, entry)
            info = os.lstat(path)
            digest = None
            if stat.S_ISREG(info.st_mode) and info.st_size <= 16 * 1024 * 1024:
                with open(path, "rb") as handle:
                    digest = hashlib.sha1(handle.read()).hexdigest()
            kind = stat.S_IFMT(info.st_mode)
            found[os.path.relpath(path, directory)] = (kind, info.st_size if not stat.S_ISDIR(info.st_mode) else 0, info.st_mtime_ns, digest)
    return found


def run_cases(cases, workers=4, timeout=DEFAULT_TIMEOUT):
    """Run ``cases`` (dicts with ``id``, ``module``, ``args``, ``expect``, optional ``env`` and ``watch``) in parallel.

    Returns {id: (Outcome, changed)} where ``changed`` lists the paths under the
    case's ``watch`` directory that the run created, removed or modified.
    """

    def one(case):
        watch = case.get("watch")
        before = snapshot(watch)
        outcome = run_module(case["module"], case["args"], timeout=case.get("timeout", timeout), expect=case.get("expect"), env=case.get("env"))
        after = snapshot(watch)
        changed = sorted(path for path in set(before) | set(after) if before.get(path) != after.get(path))
        return case["id"], outcome, changed

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return {case_id: (outcome, changed) for case_id, outcome, changed in pool.map(one, cases)}


def tally(outcomes):
    """{kind: count} over the outcomes of ``run_cases``, every kind present."""
    counts = dict.fromkeys(KINDS, 0)
    for outcome, _changed in outcomes.values():
        counts[outcome.kind] += 1
    return counts
