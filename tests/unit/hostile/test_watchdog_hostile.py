# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Hostile inputs against the fence watchdog (issue 20).

- CONFIGS: one bad configuration file per row, given to the daemon as the host
  runs it (a process of its own, `--check --config FILE`, 30 s bound): each
  must end with exit status 2 and one line on stderr that names the field,
  no traceback, no hang.
- FILES: what the daemon reads on the host every round (its fenced set, the
  instances' key, the drained set) replaced by a FIFO, a directory,
  /dev/zero, a huge file or junk: the round goes on, says what is wrong once,
  and never blocks.
- SERVERS: instances that answer with junk, too much, or not at all.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import fence_watchdog as fw
from ansible_collections.gpufleet.serving.tests.unit.plugins.module_utils.test_fence_watchdog import HUNG, Host

ROOT = Path(__file__).resolve().parents[3]
GOOD_INSTANCE = {"name": "0", "port": 8001, "unit": "vllm@0.service", "served_model_name": "tiny"}
RUN = "import sys; from ansible_collections.gpufleet.serving.plugins.module_utils import fence_watchdog; sys.exit(fence_watchdog.main(sys.argv[1:]))"


def config(**changes):
    value = {"version": 1, "instances": [dict(GOOD_INSTANCE)]}
    value.update(changes)
    return json.dumps(value)


def instance(**changes):
    return config(instances=[dict(GOOD_INSTANCE, **changes)])


# (case id, file content: str, bytes, or a callable making the file, expected words in the message)
CONFIGS = [
    ("interval-zero", config(interval=0), "interval must be"),
    ("interval-string", config(interval="5"), "interval must be"),
    ("interval-bool", config(interval=True), "interval must be"),
    ("interval-huge", config(interval=10**30), "interval must be"),
    ("probe-timeout-negative", config(probe_timeout=-1), "probe_timeout must be"),
    ("probe-timeout-nan", '{"version": 1, "probe_timeout": NaN, "instances": []}', "NaN is not a number JSON allows"),
    ("failures-float", config(failures=2.5), "failures must be a whole number"),
    ("ready-successes-huge", config(ready_successes=101), "ready_successes must be"),
    ("start-timeout-small", config(start_timeout=1), "start_timeout must be"),
    ("key-file-traversal", config(key_file="/etc/../root/.ssh/id_rsa"), "key_file must be"),
    ("key-file-outside", config(key_file="/root/key"), "key_file must be"),
    ("textfile-tmp", config(textfile_dir="/tmp/x"), "textfile_dir must be"),
    ("state-dir-relative", config(state_dir="var/lib/x"), "state_dir must be"),
    ("nginx-dir-etc", config(nginx_dir="/etc"), "nginx_dir must be"),
    ("nginx-dir-newline", config(nginx_dir="/etc/nginx/gpufleet\n"), "nginx_dir must be"),
    ("validator-shell", config(validator="/bin/sh"), "validator must be"),
    ("validator-space", config(validator="/usr/local/libexec/a b"), "validator must be"),
    ("unknown-field", config(ExecStartPre="/bin/sh"), "does not know: ExecStartPre"),
    ("version-missing", json.dumps({"instances": [GOOD_INSTANCE]}), "version must be 1"),
    ("top-level-list", "[]", "must be a JSON object"),
    ("no-instances", config(instances=[]), "instances must be a list of 1 to 256"),
    ("too-many-instances", config(instances=[dict(GOOD_INSTANCE, name=str(i), port=1000 + i, unit="vllm@%d.service" % i) for i in range(300)]), "1 to 256"),
    ("instance-not-object", config(instances=["0"]), "instances[0] must be an object"),
    ("instance-extra-key", instance(argv=["--x"]), "instances[0] must be an object with exactly"),
    ("name-newline", instance(name="0\nExecStart=/bin/sh", unit="vllm@0\nExecStart=/bin/sh.service"), "instances[0].name"),
    ("name-semicolon", instance(name="0;reboot", unit="vllm@0;reboot.service"), "instances[0].name"),
    ("name-long", instance(name="a" * 64, unit="vllm@%s.service" % ("a" * 64)), "instances[0].name"),
    ("name-int", instance(name=0, unit="vllm@0.service"), "instances[0].name"),
    ("port-zero", instance(port=0), "instances[0].port"),
    ("port-high", instance(port=70000), "instances[0].port"),
    ("port-string", instance(port="8001"), "instances[0].port"),
    ("port-bool", instance(port=True), "instances[0].port"),
    ("unit-other", instance(unit="sshd.service"), "instances[0].unit must be vllm@0.service"),
    ("served-traversal", instance(served_model_name="a/../b"), "served_model_name"),
    ("served-space", instance(served_model_name="tiny model"), "served_model_name"),
    ("served-huge", instance(served_model_name="a" * 5000), "served_model_name"),
    ("duplicate-ports", config(instances=[GOOD_INSTANCE, dict(GOOD_INSTANCE, name="1", unit="vllm@1.service")]), "its own port"),
    ("duplicate-names", config(instances=[GOOD_INSTANCE, dict(GOOD_INSTANCE, port=8002)]), "its own name"),
    ("deep-json", "[" * 100000 + "]" * 100000, "nests JSON deeper"),
    ("not-json", "{version: 1}", "is not readable JSON"),
    ("not-utf8", b"\xff\xfe{}", "is not UTF-8"),
    ("empty", "", "is not readable JSON"),
    ("huge", lambda path: path.write_bytes(b" " * (2 << 20)), "more than the 1048576"),
    ("directory", lambda path: path.mkdir(), "is a directory"),
    ("fifo", os.mkfifo, "not a regular file"),
    ("dev-zero", lambda path: path.symlink_to("/dev/zero"), "not a regular file"),
    ("missing", lambda path: None, "cannot be read"),
    ("dangling-link", lambda path: path.symlink_to(path.parent / "nowhere"), "cannot be read"),
]


def _make(path, content):
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize(("content", "words"), [row[1:] for row in CONFIGS], ids=[row[0] for row in CONFIGS])
def test_a_bad_config_stops_the_daemon_with_the_field_named(tmp_path, content, words):
    path = tmp_path / "watchdog.json"
    _make(path, content)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "collections"))
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", RUN, "--check", "--config", str(path)], capture_output=True, text=True, timeout=30, check=False, env=env)
    assert time.monotonic() - began < 30
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpufleet-watchdog: "), done.stderr
    assert words in lines[0], lines[0]
    assert os.listdir(tmp_path) == (["watchdog.json"] if os.path.lexists(path) else [])


def test_the_table_is_large():
    assert len(CONFIGS) >= 40


# --- files on the host, every round ------------------------------------------------------------
def _fifo(path):
    os.mkfifo(path)


def _zero(path):
    path.symlink_to("/dev/zero")


def _huge(path):
    path.write_bytes(b"{" * (17 << 20))


def _dir(path):
    path.mkdir()


def _junk(path):
    path.write_bytes(b"\x00\xff junk")


BAD_FILES = [("fifo", _fifo), ("dev-zero", _zero), ("huge", _huge), ("directory", _dir), ("junk", _junk)]


@pytest.mark.parametrize("maker", [made for _name, made in BAD_FILES], ids=[name for name, _made in BAD_FILES])
def test_a_bad_fenced_set_at_start_is_said_and_replaced(tmp_path, maker):
    host = Host(tmp_path)
    fenced = host.dirs["nginx"] / "fenced.json"
    maker(fenced)
    began = time.monotonic()
    host.dog = host.new()
    assert any(line.startswith("the fenced set %s cannot be used" % fenced) for line in host.logs), host.logs
    if maker is not _dir:
        host.cycles(1)
        assert host.fenced() == {}
    assert time.monotonic() - began < 5


@pytest.mark.parametrize("maker", [made for _name, made in BAD_FILES], ids=[name for name, _made in BAD_FILES])
def test_a_bad_key_file_stops_the_probes_not_the_daemon(tmp_path, maker):
    host = Host(tmp_path)
    key = host.dirs["etc"] / "key"
    key.unlink()
    maker(key)
    host.answers["0"] = HUNG
    began = time.monotonic()
    host.cycles(4)
    assert time.monotonic() - began < 5
    assert sum("cannot read the instances' key" in line for line in host.logs) == 1, host.logs
    assert host.system.calls == []


@pytest.mark.parametrize("maker", [made for _name, made in BAD_FILES], ids=[name for name, _made in BAD_FILES])
def test_a_bad_drained_set_is_said_once_and_never_rendered_over(tmp_path, maker):
    host = Host(tmp_path)
    maker(host.dirs["nginx"] / "drained.json")
    host.cycles(1)
    host.answers["0"] = HUNG
    began = time.monotonic()
    host.cycles(4)
    assert time.monotonic() - began < 5
    assert sum(line.startswith("the drained set") for line in host.logs) == 1, host.logs
    assert host.rendered == []
    assert host.system.calls[-1] == ("restart", "vllm@0.service")


def test_a_hostile_site_model_is_not_rendered(tmp_path):
    host = Host(tmp_path)
    (host.dirs["nginx"] / "site.json").unlink()
    _fifo(host.dirs["nginx"] / "site.json")
    host.cycles(1)
    host.answers["0"] = HUNG
    host.cycles(3)
    assert any("cannot update the server tier's server lines" in line and "not a regular file" in line for line in host.logs), host.logs
    assert host.rendered == []


# --- instances that answer badly -----------------------------------------------------------------
def _serve(answer):
    """A one-shot TCP server on loopback that reads a request and writes `answer` (bytes, or a callable given the socket)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def loop():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _peer = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    answer(conn, stop) if callable(answer) else conn.sendall(answer)
                except OSError:
                    pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return listener.getsockname()[1], stop, listener


def _endless(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    while not stop.is_set():
        conn.sendall(b"vllm:prompt_tokens_total 1\n" * 4096)


SERVERS = [
    ("not-http", b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "error"),
    ("bad-status", b"HTTP/1.1 abc\r\n\r\n", "error"),
    ("closed-at-once", b"", "error"),
    ("json-not-object", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]", "http"),
    ("not-json", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "http"),
    ("endless", _endless, "error"),
]


@pytest.mark.parametrize(("answer", "kind"), [row[1:] for row in SERVERS], ids=[row[0] for row in SERVERS])
def test_a_bad_answer_is_a_failed_probe_within_the_deadline(answer, kind):
    port, stop, listener = _serve(answer)
    try:
        began = time.monotonic()
        outcome = fw.completion_probe(port, "tiny", "k" * 40, 2)
        assert time.monotonic() - began < 2.5
        assert (outcome.ok, outcome.kind) == (False, kind), outcome
    finally:
        stop.set()
        listener.close()


def test_endless_metrics_are_cut_at_the_bound(monkeypatch):
    monkeypatch.setattr(fw, "MAX_METRICS_BYTES", 1 << 20)
    port, stop, listener = _serve(_endless)
    try:
        began = time.monotonic()
        assert fw.read_tokens(port, "k" * 40, timeout=2) is None
        assert time.monotonic() - began < 2.5
    finally:
        stop.set()
        listener.close()
