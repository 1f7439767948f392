"""The group guard: real guards on loopback, real child processes; a member's death ends every member."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import group_guard as gg

GUARD = Path(gg.__file__)
PY = sys.executable


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def guard(role, rank, port, command, nnodes=2, members="127.0.0.1", extra=()):
    argv = [PY, str(GUARD), "--role", role, "--group", "g-0", "--rank", str(rank), "--nnodes", str(nnodes),
            "--address", "127.0.0.1", "--port", str(port), "--beat", "0.2", "--dead-after", "1.5", "--join-timeout", "20",
            "--stop-timeout", "3", *extra]  # fmt: skip
    if role == "leader":
        argv += ["--members", members]
    return subprocess.Popen([*argv, "--", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sleeper(marker, seconds=60):
    """A stand-in for vLLM: writes its pid to marker, then sleeps."""
    code = "import os, time, pathlib; pathlib.Path(%r).write_text(str(os.getpid())); time.sleep(%d)" % (str(marker), seconds)
    return [PY, "-c", code]


def stubborn(marker):
    """A stand-in for vLLM whose worker (a grandchild of the guard) ignores SIGTERM, as a headless worker did."""
    code = (
        "import os, signal, subprocess, sys, time, pathlib\n"
        "w = subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
        "pathlib.Path(%r).write_text(str(w.pid))\n"
        "time.sleep(120)\n"
    ) % str(marker)
    return [PY, "-c", code]


def wait_for(path, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError("%s never appeared" % path)


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def ends(proc, timeout=15):
    proc.wait(timeout)
    return proc.returncode, proc.stderr.read()


@pytest.fixture
def group(tmp_path):
    """A leader and one follower guard on loopback, each over a sleeper; yields (leader, follower, their child pids)."""
    port = free_port()
    procs = []
    follower = guard("follower", 1, port, sleeper(tmp_path / "f.pid"))
    procs.append(follower)
    # Followers start first: the follower's child waits until the leader has welcomed it.
    time.sleep(0.5)
    assert not (tmp_path / "f.pid").exists()
    leader = guard("leader", 0, port, sleeper(tmp_path / "l.pid"))
    procs.append(leader)
    pids = {"leader": wait_for(tmp_path / "l.pid"), "follower": wait_for(tmp_path / "f.pid")}
    yield leader, follower, pids
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_leader_starts_only_once_every_follower_joined(tmp_path):
    port = free_port()
    leader = guard("leader", 0, port, sleeper(tmp_path / "l.pid"), nnodes=3, members="127.0.0.1")
    one = two = None
    try:
        one = guard("follower", 1, port, sleeper(tmp_path / "f1.pid"), nnodes=3)
        wait_for(tmp_path / "f1.pid")
        time.sleep(0.5)
        assert not (tmp_path / "l.pid").exists(), "the leader started before rank 2 joined"
        two = guard("follower", 2, port, sleeper(tmp_path / "f2.pid"), nnodes=3)
        wait_for(tmp_path / "l.pid")
        wait_for(tmp_path / "f2.pid")
    finally:
        for proc in (leader, one, two):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_a_dead_follower_child_ends_the_whole_group(group):
    leader, follower, pids = group
    subprocess.run(["kill", "-9", str(pids["follower"])], check=True)
    status, err = ends(follower)
    assert status == gg.EXIT_VLLM_ENDED and "vLLM ended" in err
    status, err = ends(leader)
    assert status == gg.EXIT_PEER_LOST and "lost rank 1" in err, err
    assert not alive(pids["leader"]), "the leader's vLLM outlived its group"


def test_a_broken_group_kills_what_vllm_started(tmp_path):
    """A worker that ignores SIGTERM does not outlive its group (systemd would wait out TimeoutStopSec for it)."""
    port = free_port()
    follower = guard("follower", 1, port, stubborn(tmp_path / "worker.pid"))
    leader = guard("leader", 0, port, sleeper(tmp_path / "l.pid"))
    try:
        worker = wait_for(tmp_path / "worker.pid")
        wait_for(tmp_path / "l.pid")
        leader.kill()
        status, err = ends(follower, timeout=10)
        assert status == gg.EXIT_PEER_LOST, err
        deadline = time.time() + 5
        while alive(worker) and time.time() < deadline:
            time.sleep(0.05)
        assert not alive(worker), "the follower's worker outlived its group"
    finally:
        for proc in (leader, follower):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_dead_leader_ends_its_followers(group):
    leader, follower, pids = group
    leader.kill()  # the guard itself, as a crash or SIGKILL of the unit's main process would
    status, err = ends(follower)
    assert status == gg.EXIT_PEER_LOST and "lost leader" in err, err
    assert not alive(pids["follower"])


def test_a_silent_peer_counts_as_lost(group):
    leader, follower, pids = group
    subprocess.run(["kill", "-STOP", str(follower.pid)], check=True)
    try:
        status, err = ends(leader)
        assert status == gg.EXIT_PEER_LOST and "silent" in err, err
        assert not alive(pids["leader"])
    finally:
        subprocess.run(["kill", "-CONT", str(follower.pid)], check=False)


def test_sigterm_stops_vllm_and_exits_cleanly(group):
    leader, follower, pids = group
    follower.terminate()
    status, err = ends(follower)
    assert status == 0 and "stopped by signal" in err
    assert not alive(pids["follower"])
    assert ends(leader)[0] == gg.EXIT_PEER_LOST


def connect(port, timeout=15):
    """A connection to the guard at port, once it listens (a guard started on a busy machine takes a while)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def refused(port, hello):
    """True when the guard at port closes (or resets) a connection that says hello."""
    with connect(port) as conn:
        conn.sendall(hello)
        try:
            return conn.recv(64) == b""
        except ConnectionResetError:
            return True


@pytest.mark.parametrize(
    ("members", "hello", "logged"),
    [
        ("192.0.2.7", b"HELLO g-0 1\n", "not a member of group g-0"),
        ("127.0.0.1", b"HELLO other-0 1\n", "refused a join from 127.0.0.1: 'HELLO other-0 1'"),
        ("127.0.0.1", b"HELLO g-0 0\n", "refused a join from 127.0.0.1: 'HELLO g-0 0'"),
    ],
)
def test_a_stranger_and_a_wrong_group_are_refused(tmp_path, members, hello, logged):
    port = free_port()
    leader = guard("leader", 0, port, sleeper(tmp_path / "l.pid"), members=members)
    try:
        assert refused(port, hello), "a join was welcomed"
        time.sleep(0.3)
        assert not (tmp_path / "l.pid").exists()
    finally:
        leader.kill()
        leader.wait()
    assert logged in leader.stderr.read()


def test_a_follower_gives_up_after_its_join_timeout(tmp_path):
    port = free_port()
    proc = guard("follower", 1, port, sleeper(tmp_path / "f.pid"), extra=("--join-timeout", "2"))
    status, err = ends(proc)
    assert status == gg.EXIT_NO_GROUP and "could not join" in err
    assert not (tmp_path / "f.pid").exists()


BASE = ["--group", "g", "--nnodes", "2", "--address", "a", "--port", "2000"]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--role", "leader", "--rank", "1", "--", "/bin/true"], "rank 1"),
        (["--role", "follower", "--rank", "2", "--", "/bin/true"], "rank 2"),
        (["--role", "follower", "--rank", "1", "--", "true"], "absolute"),
        (["--role", "follower", "--rank", "1"], "absolute"),
        (["--role", "follower", "--rank", "1", "--beat", "5", "--", "/bin/true"], "--dead-after"),
        (["--role", "leader", "--rank", "0", "--members", "a b", "--", "/bin/true"], "--members"),
    ],
)
def test_bad_options_are_one_line_not_a_traceback(argv, words, capsys):
    assert gg.main(BASE + argv) == gg.EXIT_USAGE
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--role", "boss"],
        ["--role", "leader", "--group", "Bad Name", "--rank", "0", "--nnodes", "2", "--address", "a", "--port", "2000", "--", "/bin/true"],
        ["--role", "leader", "--group", "g", "--rank", "0", "--nnodes", "99", "--address", "a", "--port", "2000", "--", "/bin/true"],
        ["--role", "leader", "--group", "g", "--rank", "0", "--nnodes", "2", "--address", "-x", "--port", "2000", "--", "/bin/true"],
        ["--role", "leader", "--group", "g", "--rank", "0", "--nnodes", "2", "--address", "a", "--port", "80", "--", "/bin/true"],
        ["--role", "leader", "--group", "g", "--rank", "0", "--nnodes", "2", "--address", "a", "--port", "2000", "--beat", "nan", "--", "/bin/true"],
    ],
)
def test_argparse_refusals_exit_2(argv, capsys):
    assert gg.main(argv) == gg.EXIT_USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_read_hello():
    assert gg.read_hello("HELLO g-0 1", "g-0", 2, {}) == 1
    assert gg.read_hello("HELLO g-0 1", "g-1", 2, {}) is None
    assert gg.read_hello("HELLO g-0 0", "g-0", 2, {}) is None
    assert gg.read_hello("HELLO g-0 2", "g-0", 2, {}) is None
    assert gg.read_hello("HELLO g-0 1", "g-0", 3, {1: object()}) is None
    assert gg.read_hello("HELLO g-0 x", "g-0", 3, {}) is None
    assert gg.read_hello("", "g-0", 3, {}) is None
