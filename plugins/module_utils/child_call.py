# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Run one function in a forked child process, under a time limit, and bring back its small JSON answer.

Some work a module must do cannot be bounded from inside: ``import vllm``
(which may hang on a driver, print to standard output, or load native code)
and Hugging Face's ``snapshot_download`` (which has no overall time limit and
downloads on worker threads). ``call_in_child`` runs such a function in a child
process whose standard output goes to standard error (the module's own output
stays one JSON object), waits at most ``timeout`` seconds, and kills the child
when it runs longer: nothing of it survives the module. The child answers
through a pipe, at most ``max_bytes`` of JSON.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

MAX_ANSWER = 1 << 20
# How long the parent waits for a child that closed its pipe to exit, before it kills it.
_EXIT_GRACE = 5.0


class ChildError(Exception):
    """The function failed, ran out of time, or the child died; the message says which."""


def _child(write_fd, fn, max_bytes):
    """In the child: run fn, write {"ok", "value" | "error"} and leave without running any clean-up of the parent."""
    try:
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        try:
            data = json.dumps({"ok": True, "value": fn()}).encode("utf-8")
        except BaseException as exc:  # pylint: disable=broad-except
            text = str(exc).strip().splitlines()
            data = json.dumps({"ok": False, "error": "%s: %s" % (type(exc).__name__, text[-1] if text else "")}).encode("utf-8")
        if len(data) > max_bytes:
            data = json.dumps({"ok": False, "error": "its answer is longer than %d bytes" % max_bytes}).encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
    finally:
        os._exit(0)


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    os.waitpid(pid, 0)


def _read_answer(read_fd, pid, deadline, max_bytes):
    """The bytes the child wrote until it closed the pipe; kills it and raises at the deadline or past max_bytes."""
    chunks = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            _kill(pid)
            raise ChildError("it did not finish within its time limit and was stopped")
        ready, _w, _x = select.select([read_fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            _kill(pid)
            raise ChildError("its answer is longer than %d bytes" % max_bytes)
        chunks.append(chunk)


def _reap(pid):
    """The child's wait status; it is killed when it has not exited _EXIT_GRACE seconds after closing its pipe."""
    until = time.monotonic() + _EXIT_GRACE
    while time.monotonic() < until:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    _kill(pid)
    return None


def call_in_child(fn, timeout, max_bytes=MAX_ANSWER):
    """fn()'s value (JSON-serialisable) computed in a forked child within ``timeout`` seconds, or ChildError."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves through os._exit, which coverage does not see
        os.close(read_fd)
        _child(write_fd, fn, max_bytes)
    os.close(write_fd)
    try:
        raw = _read_answer(read_fd, pid, time.monotonic() + timeout, max_bytes)
    finally:
        os.close(read_fd)
    status = _reap(pid)
    try:
        answer = json.loads(raw.decode("utf-8")) if raw else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        if status is not None and os.WIFSIGNALED(status):
            raise ChildError("it was ended by signal %d before it answered" % os.WTERMSIG(status))
        raise ChildError("it ended without an answer")
    if not answer.get("ok"):
        raise ChildError(str(answer.get("error", "it failed")))
    return answer.get("value")
