"""call_in_child: the answer comes back, failures and time-outs are errors, and nothing of the child is left."""

from __future__ import annotations

import os
import sys
import time

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import child_call
from ansible_collections.gpufleet.serving.plugins.module_utils.child_call import ChildError, call_in_child


def test_the_value_comes_back():
    assert call_in_child(lambda: {"pid": os.getpid(), "list": [1, "a"]}, 10)["list"] == [1, "a"]


def test_it_runs_in_another_process():
    assert call_in_child(os.getpid, 10) != os.getpid()


def test_what_the_child_prints_does_not_reach_standard_output(capfd):
    def noisy():
        print("INFO loading")
        sys.stdout.flush()
        os.write(1, b"native print\n")
        return 7

    assert call_in_child(noisy, 10) == 7
    out, err = capfd.readouterr()
    assert "loading" not in out and "native" not in out
    assert "loading" in err and "native" in err


def test_an_exception_is_an_error_naming_it():
    def broken():
        raise ImportError("libnuma.so.1: cannot open shared object file\nsecond line")

    with pytest.raises(ChildError, match="ImportError: second line"):
        call_in_child(broken, 10)


def test_system_exit_in_the_child_is_an_error():
    with pytest.raises(ChildError, match="SystemExit"):
        call_in_child(lambda: sys.exit(3), 10)


def test_a_child_past_its_time_limit_is_killed():
    began = time.monotonic()
    with pytest.raises(ChildError, match="time limit"):
        call_in_child(lambda: time.sleep(60), 0.5)
    assert time.monotonic() - began < 5


def test_a_child_killed_by_a_signal_is_named():
    with pytest.raises(ChildError, match="signal 9"):
        call_in_child(lambda: os.kill(os.getpid(), 9), 10)


def test_an_answer_that_cannot_be_json_is_an_error():
    with pytest.raises(ChildError, match="TypeError"):
        call_in_child(object, 10)


def test_an_answer_too_long_is_refused():
    with pytest.raises(ChildError, match="longer than 100 bytes"):
        call_in_child(lambda: "x" * 1000, 10, max_bytes=100)


def test_a_child_that_keeps_running_after_it_answered_is_reaped(monkeypatch):
    monkeypatch.setattr(child_call, "_EXIT_GRACE", 0.3)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        os.close(write_fd)
        time.sleep(60)
        os._exit(0)
    os.close(read_fd)
    os.close(write_fd)
    began = time.monotonic()
    assert child_call._reap(pid) is None
    assert time.monotonic() - began < 3
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
