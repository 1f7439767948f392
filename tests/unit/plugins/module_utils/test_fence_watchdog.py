"""fence_watchdog: the probe against real local servers, the fence state machine with fakes of the host, the files it writes."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import fence_watchdog as fw
from ansible_collections.gpufleet.serving.plugins.module_utils import gateway_layout

KEY = "k" * 40
SITE = {"version": gateway_layout.MODEL_VERSION, "server": {"upstream": {"servers": [{"label": "0"}, {"label": "1"}]}}, "fleet": None}


# --- real probes against local servers ---------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, data, kind="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": json.loads(body)})
        mode = self.server.mode
        if mode == "ok":
            self.reply(200, json.dumps({"choices": [{"text": "!"}]}).encode())
        elif mode == "500":
            self.reply(500, b'{"error": "engine dead"}')
        elif mode == "empty":
            self.reply(200, b"{}")
        elif mode == "hang":
            self.server.release.wait(5)
        elif mode == "trickle":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for _line in range(50):
                if self.server.release.wait(0.1):
                    return
                self.wfile.write(b"X-Slow: y\r\n")
                self.wfile.flush()

    def do_GET(self):
        if self.path != "/metrics":
            self.reply(404, b"")
            return
        self.server.reads += 1
        grown = self.server.reads * 10 if self.server.mode_metrics == "growing" else 10
        text = "# HELP vllm:prompt_tokens_total x\n# TYPE vllm:prompt_tokens_total counter\n"
        text += 'vllm:prompt_tokens_total{engine="0",model_name="tiny"} %d.0\n' % grown
        text += 'vllm:prompt_tokens_created{engine="0",model_name="tiny"} 1.7e9\n'
        text += 'vllm:generation_tokens_total{engine="0",model_name="tiny"} 5.0\n'
        self.reply(200, text.encode(), "text/plain")


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.mode, srv.mode_metrics, srv.seen, srv.reads, srv.release = "ok", "frozen", [], 0, threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def test_probe_sends_one_token_with_the_key(server):
    outcome = fw.completion_probe(server.server_address[1], "tiny", KEY, 2)
    assert outcome.ok and outcome.kind == "ok"
    assert server.seen == [{"path": "/v1/completions", "auth": "Bearer " + KEY, "body": {"model": "tiny", "prompt": "ok", "max_tokens": 1}}]


@pytest.mark.parametrize(("mode", "kind", "reason"), [("500", "http", "HTTP 500"), ("empty", "http", "HTTP 200 without a completion")])
def test_probe_counts_errors(server, mode, kind, reason):
    server.mode = mode
    outcome = fw.completion_probe(server.server_address[1], "tiny", KEY, 2)
    assert (outcome.ok, outcome.kind, outcome.reason) == (False, kind, reason)


def test_probe_of_a_closed_port_is_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcome = fw.completion_probe(port, "tiny", KEY, 2)
    assert (outcome.ok, outcome.kind, outcome.reason) == (False, "refused", "connection refused")


@pytest.mark.parametrize("mode", ["hang", "trickle"])
def test_probe_ends_at_its_deadline(server, mode):
    """A server that never answers, or trickles header bytes, holds the probe no longer than its deadline."""
    server.mode = mode
    began = time.monotonic()
    outcome = fw.completion_probe(server.server_address[1], "tiny", KEY, 0.6)
    took = time.monotonic() - began
    assert (outcome.ok, outcome.kind, outcome.reason) == (False, "timeout", "timed out after 0.6 s")
    assert 0.55 <= took < 1.2


def test_tokens_come_from_metrics_and_show_progress(server):
    port = server.server_address[1]
    assert fw.read_tokens(port, KEY) == 15.0
    assert fw.read_tokens(port, KEY) == 15.0
    server.mode_metrics = "growing"
    first, second = fw.read_tokens(port, KEY), fw.read_tokens(port, KEY)
    assert second > first


def test_tokens_unknown_without_the_counters():
    assert fw.tokens_in("# nothing\nvllm:num_requests_running 1\n") is None
    assert fw.tokens_in('vllm:generation_tokens_total 7\nvllm:prompt_tokens_total{a="b"} 3 1700000000\n') == 10.0


def test_answer_larger_than_the_bound_is_refused(monkeypatch, server):
    monkeypatch.setattr(fw, "MAX_ANSWER_BYTES", 64)
    outcome = fw.completion_probe(server.server_address[1], "tiny", KEY, 2)
    assert (outcome.ok, outcome.kind) == (False, "error") and "larger than 64 bytes" in outcome.reason


def test_chunked_answers_are_read():
    assert fw._dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n") == b"abcde"
    status, _headers, body = fw._split_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert (status, body) == (200, b"abc")
    with pytest.raises(fw.WatchdogError, match="not HTTP"):
        fw._split_answer(b"SSH-2.0-OpenSSH\r\n\r\n")


# --- the configuration -----------------------------------------------------------------------------
def base_config(**changes):
    value = {"version": 1, "instances": [{"name": "0", "port": 8001, "unit": "vllm@0.service", "served_model_name": "tiny"}]}
    value.update(changes)
    return value


def test_config_defaults():
    config = fw.check_config(base_config())
    assert (config["interval"], config["probe_timeout"], config["failures"], config["ready_successes"]) == (5, 5, 3, 2)
    assert config["key_file"] == "/etc/vllm/instance-api-key"
    assert config["nginx_dir"] == "/etc/nginx/gpufleet"


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"interval": 0}, "interval"),
        ({"interval": True}, "interval"),
        ({"probe_timeout": float("nan")}, "probe_timeout"),
        ({"failures": 2.5}, "failures"),
        ({"ready_successes": 1000}, "ready_successes"),
        ({"key_file": "/etc/../root/key"}, "key_file"),
        ({"nginx_dir": "/etc/nginx2/x"}, "nginx_dir"),
        ({"textfile_dir": "relative/dir"}, "textfile_dir"),
        ({"validator": "/bin/sh"}, "validator"),
        ({"version": 2}, "version"),
        ({"extra": 1}, "extra"),
        ({"instances": []}, "instances"),
        ({"instances": [{"name": "0; rm", "port": 8001, "unit": "vllm@0; rm.service", "served_model_name": "t"}]}, "instances[0].name"),
        ({"instances": [{"name": "0", "port": 0, "unit": "vllm@0.service", "served_model_name": "t"}]}, "instances[0].port"),
        ({"instances": [{"name": "0", "port": 8001, "unit": "ssh.service", "served_model_name": "t"}]}, "instances[0].unit"),
        ({"instances": [{"name": "0", "port": 8001, "unit": "vllm@0.service", "served_model_name": "a b"}]}, "served_model_name"),
        ({"instances": [{"name": "0", "port": 1, "unit": "vllm@0.service", "served_model_name": "t"}] * 2}, "own name"),
    ],
)
def test_config_refuses_what_it_cannot_use(changes, named):
    with pytest.raises(fw.WatchdogError, match=named.replace("[", r"\[").replace("]", r"\]")):
        fw.check_config(base_config(**changes))


def test_config_file_is_read_bounded(tmp_path):
    path = tmp_path / "watchdog.json"
    path.write_text(json.dumps(base_config()))
    assert fw.load_config(str(path))["instances"][0]["port"] == 8001
    path.write_text(json.dumps(base_config(interval=-1)))
    with pytest.raises(fw.WatchdogError, match=r"watchdog.json: interval must be"):
        fw.load_config(str(path))
    with pytest.raises(fw.WatchdogError, match="is a directory"):
        fw.load_config(str(tmp_path))


def test_config_from_the_plan():
    plan = {"launch": {"served_model_name": "tiny"}, "instances": [{"name": "0", "port": 8001, "gpus": [0]}, {"name": "1", "port": 8002, "gpus": [1]}]}
    config = fw.config_from_plan(plan, {"interval": 2, "textfile_dir": "/var/lib/node-exporter"})
    assert [i["unit"] for i in config["instances"]] == ["vllm@0.service", "vllm@1.service"]
    assert config["interval"] == 2 and config["textfile_dir"] == "/var/lib/node-exporter"
    with pytest.raises(fw.WatchdogError, match="plan must be a plan"):
        fw.config_from_plan({"instances": []}, {})


def test_key_file(tmp_path):
    path = tmp_path / "key"
    path.write_text("VLLM_API_KEY=%s\n" % KEY)
    assert fw.read_api_key(str(path)) == KEY
    path.write_text("VLLM_API_KEY=short\n")
    with pytest.raises(fw.WatchdogError, match="must hold one line VLLM_API_KEY"):
        fw.read_api_key(str(path))


# --- files -----------------------------------------------------------------------------------------
def test_atomic_write_leaves_only_the_file(tmp_path):
    target = tmp_path / "fenced.json"
    target.write_text("old")
    fw.atomic_write(str(target), b"new", 0o640)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["fenced.json"]


def test_atomic_write_that_fails_leaves_the_old_file(tmp_path):
    target = tmp_path / "dir"
    target.mkdir()
    with pytest.raises(OSError):
        fw.atomic_write(str(target), b"new")  # a directory cannot be replaced by a file
    assert sorted(os.listdir(tmp_path)) == ["dir"]


def test_fenced_file_round_trip():
    text = fw.fenced_document({"0": {"since": 1.5, "reason": "r"}}).decode()
    assert json.loads(text) == {"version": 1, "fenced": {"0": {"since": 1.5, "reason": "r"}}}
    assert fw.parse_fenced_file(text) == {"0": {"since": 1.5, "reason": "r"}}
    assert fw.parse_fenced_file(None) == {}
    for bad in ('{"version": 1, "fenced": {"../x": {"since": 1}}}', "[]", '{"version": 1, "fenced": {"0": {"since": NaN}}}'):
        with pytest.raises(fw.WatchdogError):
            fw.parse_fenced_file(bad)


def test_parse_show_of_several_units():
    text = "Id=vllm@0.service\nActiveState=active\nInvocationID=ab\nNRestarts=2\n\nId=vllm@1.service\nActiveState=failed\nResult=start-limit-hit\n"
    units = fw.parse_show(text)
    assert units["vllm@0.service"]["NRestarts"] == "2"
    assert units["vllm@1.service"]["Result"] == "start-limit-hit"


# --- the state machine, with fakes of the host ------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def time(self):
        return 1.7e9 + self.now

    def sleep(self, seconds):
        self.now += seconds


class FakeSystem:
    def __init__(self):
        self.units, self.calls, self.refuse = {}, [], None

    def set(self, name, active="active", invocation="aa", result="success", restarts=0):
        self.units["vllm@%s.service" % name] = {
            "Id": "vllm@%s.service" % name,
            "ActiveState": active,
            "InvocationID": invocation,
            "Result": result,
            "NRestarts": str(restarts),
        }

    def show(self, units):
        return {u: dict(self.units[u]) for u in units if u in self.units}

    def restart(self, unit):
        self.calls.append(("restart", unit))

    def reload_nginx(self):
        self.calls.append(("reload",))

    def validate(self, validator, candidate, target):
        self.calls.append(("validate", Path(candidate).read_text(), target))
        if self.refuse:
            raise fw.WatchdogError(self.refuse)


class Host:
    """A watchdog on a fake host: files in tmp_path, probes answer what `answers` says per instance."""

    def __init__(self, tmp_path, names=("0",), failures=3, ready=2):
        self.dirs = {k: tmp_path / k for k in ("etc", "nginx", "textfile", "state")}
        for path in self.dirs.values():
            path.mkdir()
        (self.dirs["etc"] / "key").write_text("VLLM_API_KEY=%s\n" % KEY)
        (self.dirs["nginx"] / "site.json").write_text(json.dumps(SITE))
        self.system, self.clock, self.logs, self.rendered = FakeSystem(), FakeClock(), [], []
        self.answers = {name: fw.Outcome(True) for name in names}
        self.token_counts = {name: 10.0 for name in names}
        for name in names:
            self.system.set(name)
        instances = [{"name": n, "port": 8001 + i, "unit": "vllm@%s.service" % n, "served_model_name": "tiny"} for i, n in enumerate(names)]
        self.config = fw.check_config({"version": 1, "instances": instances, "failures": failures, "ready_successes": ready})
        self.config.update(
            key_file=str(self.dirs["etc"] / "key"),
            nginx_dir=str(self.dirs["nginx"]),
            textfile_dir=str(self.dirs["textfile"]),
            state_dir=str(self.dirs["state"]),
        )
        self.dog = self.new()

    def new(self):
        port_names = {i["port"]: i["name"] for i in self.config["instances"]}
        dog = fw.Watchdog(
            self.config,
            system=self.system,
            clock=self.clock,
            render=self.render,
            log=self.logs.append,
            probe=lambda port, served, key, timeout: self.answers[port_names[port]],
            tokens=lambda port, key: self.token_counts[port_names[port]],
        )
        dog.start()
        return dog

    def render(self, model, drained, fenced):
        self.rendered.append((model["version"], drained["server"], list(fenced)))
        return "# fenced: %s\n" % " ".join(fenced)

    def cycles(self, count=1):
        for _cycle in range(count):
            self.dog.cycle()
            self.clock.now += 5

    def fenced(self):
        return json.loads((self.dirs["nginx"] / "fenced.json").read_text())["fenced"]

    def metrics(self):
        return (self.dirs["textfile"] / "gpufleet_watchdog.prom").read_text()


HUNG = fw.Outcome(False, "timeout", "timed out after 5.0 s")


def test_a_hung_engine_is_fenced_restarted_and_put_back(tmp_path):
    host = Host(tmp_path)
    host.cycles(2)  # answers: it has answered since its start
    host.answers["0"] = HUNG
    host.cycles(3)
    assert host.logs[-2:] == [
        "vllm@0: fenced after 3 failed probes (timed out after 5.0 s; no tokens generated since the last probe)",
        "vllm@0: restarting",
    ]
    assert "vllm@0: probe failed (1 of 3): timed out after 5.0 s; no earlier token count to compare" in host.logs
    assert list(host.fenced()) == ["0"] and host.fenced()["0"]["reason"].startswith("timed out")
    assert stat.S_IMODE((host.dirs["nginx"] / "fenced.json").stat().st_mode) == 0o640
    assert host.rendered[-1] == (gateway_layout.MODEL_VERSION, [], ["0"])
    servers = host.dirs["nginx"] / "local-servers.conf"
    assert servers.read_text() == "# fenced: 0\n"
    # In this order: the server lines tested, nginx reloaded, then the restart.
    assert host.system.calls == [("validate", "# fenced: 0\n", str(servers)), ("reload",), ("restart", "vllm@0.service")]
    assert 'gpufleet_watchdog_fenced{vllm_instance="0"} 1' in host.metrics()
    assert 'gpufleet_watchdog_fences_total{vllm_instance="0"} 1' in host.metrics()
    # The old process is going; the new one starts and answers twice.
    host.system.set("0", active="deactivating", invocation="aa")
    host.cycles(1)
    host.system.set("0", invocation="bb", restarts=1)
    host.answers["0"] = fw.Outcome(True)
    host.cycles(1)
    assert list(host.fenced()) == ["0"]
    host.cycles(1)
    assert host.logs[-1] == "vllm@0: back in service after 15 s"
    assert host.fenced() == {} and servers.read_text() == "# fenced: \n"
    assert host.system.calls[-2:] == [("validate", "# fenced: \n", str(servers)), ("reload",)]
    assert 'gpufleet_watchdog_fenced{vllm_instance="0"} 0' in host.metrics()
    assert 'gpufleet_vllm_unit_restarts_total{vllm_instance="0"} 1' in host.metrics()
    assert not [n for n in os.listdir(host.dirs["nginx"]) if n.startswith(".")]


def test_a_busy_engine_is_not_fenced(tmp_path):
    host = Host(tmp_path)
    host.cycles(1)
    host.answers["0"] = HUNG
    for _cycle in range(6):
        host.token_counts["0"] += 50
        host.cycles(1)
    assert host.dog.instances[0].state == fw.SERVING
    assert next(line for line in host.logs if "busy, not hung" in line) == (
        "vllm@0: busy, not hung: the probe timed out after 5.0 s but the engine counted 50 tokens more; not counted"
    )
    assert ("restart", "vllm@0.service") not in host.system.calls


@pytest.mark.parametrize("failure", [fw.Outcome(False, "refused", "connection refused"), fw.Outcome(False, "http", "HTTP 500")])
def test_refused_and_http_errors_count(tmp_path, failure):
    host = Host(tmp_path)
    host.cycles(1)
    host.answers["0"] = failure
    host.cycles(3)
    assert host.logs[-2] == "vllm@0: fenced after 3 failed probes (%s)" % failure.reason


def test_an_instance_that_never_answered_since_its_start_is_not_judged(tmp_path):
    host = Host(tmp_path)
    host.answers["0"] = fw.Outcome(False, "refused", "connection refused")
    host.cycles(5)
    assert host.dog.instances[0].state == fw.SERVING and host.system.calls == []
    # It answers once, then a new start (a new invocation) is again not judged until it answers.
    host.answers["0"] = fw.Outcome(True)
    host.cycles(1)
    host.system.set("0", invocation="cc")
    host.answers["0"] = HUNG
    host.cycles(5)
    assert host.system.calls == []


def test_drained_instances_are_skipped(tmp_path):
    host = Host(tmp_path, names=("0", "1"))
    (host.dirs["nginx"] / "drained.json").write_text(json.dumps({"version": 1, "server": ["0"], "fleet": []}))
    host.cycles(1)
    host.answers["0"] = HUNG
    host.answers["1"] = HUNG
    host.cycles(3)
    assert "vllm@0: skipped: drained by the operator" in host.logs
    assert host.logs.count("vllm@0: skipped: drained by the operator") == 1
    assert host.system.calls[-1] == ("restart", "vllm@1.service")
    assert ("restart", "vllm@0.service") not in host.system.calls
    # The drained set goes to the renderer as it is: vllm@0 stays down as drained.
    assert host.rendered[-1] == (gateway_layout.MODEL_VERSION, ["0"], ["1"])


def test_one_hung_instance_does_not_stop_the_others(tmp_path):
    host = Host(tmp_path, names=("0", "1"))
    host.cycles(1)
    host.answers["0"] = HUNG
    host.cycles(3)
    assert 'gpufleet_watchdog_probe_ok{vllm_instance="1"} 1' in host.metrics()
    assert 'gpufleet_watchdog_consecutive_failures{vllm_instance="0"} 0' in host.metrics()
    assert list(host.fenced()) == ["0"]


def test_a_unit_at_its_start_limit_stays_fenced_until_the_operator_starts_it(tmp_path):
    host = Host(tmp_path)
    host.cycles(1)
    host.answers["0"] = HUNG
    host.cycles(3)
    host.system.set("0", active="failed", invocation="", result="start-limit-hit", restarts=4)
    host.cycles(4)
    assert host.logs.count("vllm@0: failed (start limit); stays fenced") == 1
    assert host.system.calls.count(("restart", "vllm@0.service")) == 1
    assert list(host.fenced()) == ["0"]
    # systemctl reset-failed vllm@0; systemctl start vllm@0
    host.system.set("0", invocation="dd")
    host.answers["0"] = fw.Outcome(True)
    host.cycles(2)
    assert "vllm@0: started again (by the operator); put back when it answers" in host.logs
    assert host.logs[-1].startswith("vllm@0: back in service after")
    assert host.fenced() == {}


def test_a_restart_that_hangs_again_is_restarted_again(tmp_path):
    host = Host(tmp_path)
    host.cycles(1)
    host.answers["0"] = HUNG
    host.cycles(3)
    host.system.set("0", invocation="bb")
    host.answers["0"] = fw.Outcome(True)
    host.cycles(1)  # answered once: its start is over
    host.answers["0"] = HUNG
    host.cycles(3)
    assert host.system.calls.count(("restart", "vllm@0.service")) == 2
    assert "vllm@0: failed 3 probes again after its restart" in host.logs


def test_no_answer_within_the_start_timeout_restarts_again(tmp_path):
    host = Host(tmp_path)
    host.config["start_timeout"] = 30
    host.cycles(1)
    host.answers["0"] = HUNG
    host.cycles(3)
    host.system.set("0", invocation="bb")
    host.cycles(8)
    assert host.system.calls.count(("restart", "vllm@0.service")) == 2
    assert "vllm@0: no answer from a new start within 30 s of the restart" in host.logs


def test_a_restarted_watchdog_keeps_the_fenced_set(tmp_path):
    host = Host(tmp_path)
    host.cycles(1)
    host.answers["0"] = HUNG
    host.cycles(3)
    calls = len(host.system.calls)
    host.answers["0"] = fw.Outcome(True)
    host.dog = host.new()  # the service restarted: nothing in memory
    assert host.logs[-1].startswith("vllm@0: fenced since an earlier run (timed out after 5.0 s")
    host.cycles(2)
    assert host.logs[-1].startswith("vllm@0: back in service after")
    assert ("restart", "vllm@0.service") not in host.system.calls[calls:]
    # The fence count survives the restart.
    assert 'gpufleet_watchdog_fences_total{vllm_instance="0"} 1' in host.metrics()


def test_names_no_longer_planned_leave_the_fenced_set(tmp_path):
    host = Host(tmp_path)
    (host.dirs["nginx"] / "fenced.json").write_text(fw.fenced_document({"7": {"since": 1.0, "reason": "old"}}).decode())
    host.dog = host.new()
    assert "vllm@7: in the fenced set but not in this host's plan; dropped from it" in host.logs
    host.cycles(1)
    assert host.fenced() == {}


def test_nginx_refusing_the_server_lines_is_retried_and_the_restart_still_happens(tmp_path):
    host = Host(tmp_path)
    host.cycles(1)
    host.system.refuse = "nginx -t rejects the new /etc/nginx/gpufleet/local-servers.conf"
    host.answers["0"] = HUNG
    host.cycles(3)
    assert any(line.startswith("cannot update the server tier's server lines (nginx -t rejects") for line in host.logs)
    assert host.system.calls[-1] == ("restart", "vllm@0.service")
    assert ("reload",) not in host.system.calls
    assert not (host.dirs["nginx"] / "local-servers.conf").exists()
    assert list(host.fenced()) == ["0"]
    host.system.refuse = None
    host.cycles(1)
    assert (host.dirs["nginx"] / "local-servers.conf").read_text() == "# fenced: 0\n"
    assert host.system.calls[-1] == ("reload",)
    assert not [n for n in os.listdir(host.dirs["nginx"]) if n.startswith(".")]


def test_without_a_site_model_the_fence_is_logged_and_the_restart_happens(tmp_path):
    host = Host(tmp_path)
    (host.dirs["nginx"] / "site.json").unlink()
    host.cycles(1)
    host.answers["0"] = HUNG
    host.cycles(3)
    assert any("there is no site model (site.json): run the gateway role on this host" in line for line in host.logs)
    assert host.system.calls == [("restart", "vllm@0.service")]


def test_a_broken_drained_set_is_not_rendered_over(tmp_path):
    host = Host(tmp_path)
    (host.dirs["nginx"] / "drained.json").write_text('{"version": 1, "server": ["a b"]}')
    host.cycles(1)
    host.answers["0"] = HUNG
    host.cycles(3)
    assert any(line.startswith("the drained set %s cannot be used" % (host.dirs["nginx"] / "drained.json")) for line in host.logs)
    assert any("the server lines are left as they are" in line for line in host.logs)
    assert host.rendered == []


def test_no_key_no_probe(tmp_path):
    host = Host(tmp_path)
    (host.dirs["etc"] / "key").unlink()
    host.answers["0"] = HUNG
    host.cycles(5)
    assert sum("cannot read the instances' key" in line for line in host.logs) == 1
    assert host.system.calls == []


def test_metrics_are_skipped_without_their_folder(tmp_path):
    host = Host(tmp_path)
    host.dirs["textfile"].rmdir()
    host.cycles(1)
    assert not host.dirs["textfile"].exists()


def test_metrics_text_names_and_labels():
    inst = fw.Instance({"name": "0", "port": 8001, "unit": "vllm@0.service", "served_model_name": "t"})
    inst.probe_ok, inst.fences_total, inst.unit_restarts = True, 2, 3
    text = fw.metrics_text([inst], 1700000000.25)
    assert "gpufleet_watchdog_last_cycle_timestamp_seconds 1700000000.250\n" in text
    assert "# TYPE gpufleet_watchdog_fences_total counter" in text
    for line in (
        'probe_ok{vllm_instance="0"} 1',
        'consecutive_failures{vllm_instance="0"} 0',
        'fenced{vllm_instance="0"} 0',
        'fences_total{vllm_instance="0"} 2',
    ):
        assert "gpufleet_watchdog_" + line in text
    assert 'gpufleet_vllm_unit_restarts_total{vllm_instance="0"} 3' in text
    assert "instance=" not in text.replace("vllm_instance=", "")


def test_run_sleeps_to_the_next_interval(tmp_path):
    host = Host(tmp_path)
    began = host.clock.now
    host.dog.run(cycles=3)
    assert host.clock.now == began + 10  # two sleeps of one interval each: the fake cycles take no time


def test_an_unexpected_error_does_not_end_the_daemon(tmp_path):
    host = Host(tmp_path)

    def broken(port, served, key, timeout):
        raise RuntimeError("boom")

    host.dog.probe = broken
    host.dog.run(cycles=2)
    assert host.logs.count("this cycle stopped on an unexpected RuntimeError (boom); the next one starts afresh") == 2


def test_main_refuses_a_bad_config(tmp_path, capsys):
    path = tmp_path / "watchdog.json"
    path.write_text(json.dumps(base_config(failures=0)))
    assert fw.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpufleet-watchdog: %s: failures must be a whole number from 1 to 100" % path)
    assert fw.main(["--config", str(tmp_path / "missing.json")]) == 2
    with pytest.raises(SystemExit):
        fw.main(["--config", str(path), "--cycles", "0"])


def test_the_real_renderer_is_named_when_it_is_missing(tmp_path, monkeypatch):
    """Without gateway_layout.local_servers_conf (a mismatched install) the fence is logged and the restart still happens."""
    monkeypatch.delattr(gateway_layout, "local_servers_conf", raising=False)
    host = Host(tmp_path)
    host.dog.render = fw.gateway_render
    host.cycles(1)
    host.answers["0"] = HUNG
    host.cycles(3)
    assert any("gateway_layout.py has no local_servers_conf" in line for line in host.logs), host.logs
    assert host.system.calls == [("restart", "vllm@0.service")]


def test_a_renderer_that_breaks_does_not_stop_the_restart(tmp_path):
    host = Host(tmp_path)

    def broken(model, drained, fenced):
        raise KeyError("upstream")

    host.dog.render = broken
    host.cycles(1)
    host.answers["0"] = HUNG
    host.cycles(3)
    assert any(line.startswith("cannot update the server tier's server lines ('upstream')") for line in host.logs), host.logs
    assert host.system.calls == [("restart", "vllm@0.service")]


def test_reasons_are_written_as_the_gateway_role_reads_them():
    reason = fw.printable_reason("timed out\n\x1b[31m" + "x" * 900)
    assert len(reason) == fw.MAX_REASON == gateway_layout.MAX_REASON and reason.isprintable()
    names, problems = gateway_layout.parse_fenced(fw.fenced_document({"0": {"since": 1.0, "reason": reason}}).decode())
    assert (list(names), problems) == (["0"], [])


def test_the_marks_are_put_back_while_an_instance_is_fenced(tmp_path):
    """A gateway run that read the fenced set just before the fence rewrites the server lines without it:
    the next cycle writes them again."""
    host = Host(tmp_path)
    host.cycles(1)
    host.answers["0"] = HUNG
    host.cycles(3)
    servers = host.dirs["nginx"] / "local-servers.conf"
    assert servers.read_text() == "# fenced: 0\n"
    servers.write_text("# written by the gateway role without the fence\n")
    reloads = host.system.calls.count(("reload",))
    host.cycles(1)
    assert servers.read_text() == "# fenced: 0\n"
    assert host.system.calls.count(("reload",)) == reloads + 1
    host.cycles(1)
    assert host.system.calls.count(("reload",)) == reloads + 1
