"""A hung engine under steady load: the watchdog fences it, Prometheus says it stalled.

vLLM's API server keeps answering /health while its engine core is stopped; SIGSTOP of the engine core
process is that failure, made on purpose. Runs after test_site_drain.py and before
test_update_and_faults.py (file order), and leaves the fleet serving as it found it.

The scenario's inventory leaves the watchdog off (each probe costs vLLM's CPU build about a core-second,
host_vars/t-site-gpu1/watchdog.yml); the `watchdog` fixture turns it on for t-site-gpu2 with the role
alone (molecule/site/watchdog.yml), checks that a second run changes nothing and that Prometheus scrapes
its metrics, and turns it off again at the end.

1. The watchdog (roles/watchdog) on t-site-gpu2, whose one `tp` instance hangs: the time until the
   instance is out of the server tier's upstream, the server tier answering 503 meanwhile (the fleet
   tier then sends every request to t-site-gpu1), the failed requests, and the instance back in
   service after the watchdog's restart.
2. Prometheus on t-site-gw1, for vllm@1 of t-site-gpu1, which runs no watchdog (its host_vars: so nothing
   repairs the hang): the time until the engine-stalled alert fires. SIGCONT then ends the hang.

The two cases run at once (the `hung_without_watchdog` fixture starts the second before the first):
each waits about 90 s for something slow (the alert's window, the restart), and one after the other
they cost `make test` two minutes more. So that the first case's traffic never meets the second's hung
engine, vllm@1 is drained from t-site-gpu1's server tier first (the rolling playbooks' drain entry
point), and its own requests come from a load generator on t-site-gpu1 straight to the instance.

The figures go to .cache/reports/site-faults.json with the other fault cases.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from conftest import Load, drain_playbook, instance_key, instance_serves, report, run_playbook, set_drain, sh, unit, unit_processes, wait_until
from test_monitoring import DASHBOARDS, RULES, WATCHDOG_NAMES, api, metric_names

GW = "t-site-gw1"
FENCED = "/etc/nginx/gpufleet/fenced.json"
SERVERS = "/etc/nginx/gpufleet/local-servers.conf"
WATCHDOG = "gpufleet-watchdog.service"
STALL_ALERT = "GpufleetEngineStalled"


def engine_core(container, name):
    """The PID of the instance's engine core: the process of the unit's group that vLLM titles EngineCore."""
    main = unit(container, name, "MainPID")
    group = unit_processes(container, "vllm@%s.service" % name) - {main}
    titled = [pid for pid in group if "EngineCore" in sh(container, "cat", "/proc/%s/cmdline" % pid, check=False).stdout]
    assert len(titled) == 1, (group, titled)
    return titled[0]


def stop_when_busy(container, pid, port, signal="STOP"):
    """Send the signal at a moment the instance reports a running request; its time, as the host saw it."""
    script = (
        "for i in $(seq 1200); do"
        " n=$(curl -s --max-time 2 http://127.0.0.1:%d/metrics | awk '/^vllm:num_requests_running/ {s += $2} END {print int(s)}');"
        ' [ "${n:-0}" -ge 1 ] && break; sleep 0.1; done;'
        " date +%%s.%%N; echo $n; kill -%s %s" % (port, signal, pid)
    )
    at, running = sh(container, "sh", "-c", script).stdout.split()[:2]
    return float(at), int(running)


def requests_on(container, port):
    """Running plus waiting requests, as the instance's /metrics reports them (the engine's last word)."""
    script = "curl -s --max-time 5 http://127.0.0.1:%d/metrics | awk '/^vllm:num_requests_(running|waiting)[{ ]/ {s += $2} END {print int(s)}'" % port
    return int(sh(container, "sh", "-c", script).stdout.strip() or 0)


def hang_with_work(container, pid, port, tries=5):
    """SIGSTOP the engine core while it holds requests, and make sure it still does once stopped.

    The running gauge comes from the engine core's own outputs, which the API server may not have read
    yet when it answered: the request seen running may already be finished in an output still queued.
    A few seconds after the stop the API server has read everything the engine sent; if the gauges then
    say nothing is running or waiting, the engine hung idle (a case only the watchdog's probe sees,
    roles/monitoring/README.md), so it is continued and stopped again at the next busy moment.
    """
    for attempt in range(1, tries + 1):
        hung_at, running = stop_when_busy(container, pid, port)
        time.sleep(3)
        held = requests_on(container, port)
        if running >= 1 and held >= 1:
            return hung_at, held, attempt
        sh(container, "kill", "-CONT", pid, check=False)
        time.sleep(5)
    pytest.fail("the engine core of port %d held no request once stopped, %d times" % (port, tries))


def fenced(container):
    text = sh(container, "cat", FENCED, check=False).stdout
    return set(json.loads(text).get("fenced", {})) if text.strip() else set()


def marked_down(container, port):
    text = sh(container, "cat", SERVERS, check=False).stdout
    return re.search(r"^\s*server 127\.0\.0\.1:%d down\b" % port, text, re.M) is not None


def journal_time(container, unit_name, pattern, since):
    """The time of the first journal line of `unit_name` after `since` that matches `pattern`, or None."""
    out = sh(container, "journalctl", "-u", unit_name, "-o", "short-unix", "--no-pager", "--since", "@%d" % int(since - 1)).stdout
    for line in out.splitlines():
        stamp, _sep, text = line.partition(" ")
        if re.search(pattern, text):
            return float(stamp)
    return None


def server_tier_status(container):
    return sh(container, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-H", "content-type: application/json",
              "-d", '{"model": "tiny", "prompt": "fenced?", "max_tokens": 1}', "http://127.0.0.1:8000/v1/completions", check=False).stdout  # fmt: skip


def switch_watchdog(on):
    out, recap = run_playbook("molecule/site/watchdog.yml", "--limit", "t-site-gpu2", extra_vars={"watchdog_enabled": on})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    return recap


@pytest.fixture(scope="module")
def watchdog():
    """The watchdog on t-site-gpu2 for this file's tests, as the role installs it; off again afterwards."""
    assert switch_watchdog(True)["t-site-gpu2"] >= 1
    try:
        assert switch_watchdog(True) == {"t-site-gpu2": 0}, "a second run of the watchdog role changed something"
        yield "t-site-gpu2"
    finally:
        switch_watchdog(False)
    assert sh("t-site-gpu2", "systemctl", "is-active", WATCHDOG, check=False).stdout.strip() != "active"


def test_prometheus_scrapes_the_watchdog_metrics(watchdog):
    """The watchdog's textfile metrics (node_exporter's folder), named in the rules and dashboards, reach Prometheus."""
    used = set()
    for path in sorted(RULES.glob("*.yml")):
        used |= metric_names.names_in_rules(path)
    for path in sorted(DASHBOARDS.glob("*.json")):
        used |= metric_names.names_in_dashboard(path)
    wanted = used & WATCHDOG_NAMES
    assert "gpufleet_watchdog_fenced" in wanted and "gpufleet_vllm_unit_restarts_total" in wanted, (wanted, WATCHDOG_NAMES)
    wait_until("the watchdog's metrics are scraped", lambda: wanted <= set(api("label/__name__/values")), timeout=120, every=5)
    assert sh(watchdog, "systemctl", "is-enabled", WATCHDOG, check=False).stdout.strip() == "enabled"


def test_the_watchdog_fences_a_hung_engine_and_brings_it_back(watchdog, hung_without_watchdog):
    """The watchdog's case; the alert's case (hung_without_watchdog) runs beside it, on the other server."""
    gpu, name, port = watchdog, "main", 8001
    assert sh(gpu, "systemctl", "is-active", WATCHDOG, check=False).stdout.strip() == "active"
    assert fenced(gpu) == set() and not marked_down(gpu, port)
    pid, restarts = unit(gpu, name, "MainPID"), int(unit(gpu, name, "NRestarts"))
    core = engine_core(gpu, name)
    load = Load(name="stall")
    hung_at, running = stop_when_busy(gpu, core, port)
    wait_until("the watchdog fences vllm@main", lambda: name in fenced(gpu) and marked_down(gpu, port), timeout=120, every=1)
    seen_fenced_at = time.time()
    fenced_at = journal_time(gpu, WATCHDOG, r"vllm@main.*fenced", hung_at) or seen_fenced_at
    # Every instance of t-site-gpu2 is out: its server tier answers 503 at once, and the fleet tier
    # sends the requests to t-site-gpu1.
    assert server_tier_status(gpu) == "503"
    wait_until("the watchdog restarts vllm@main", lambda: unit(gpu, name, "MainPID") not in ("0", pid), timeout=300)
    wait_until("vllm@main is back in the upstream", lambda: fenced(gpu) == set() and not marked_down(gpu, port), timeout=600, every=2)
    back_at = time.time()
    assert instance_serves(gpu, port)
    time.sleep(20)
    load.stop()
    assert int(unit(gpu, name, "NRestarts")) == restarts, "the watchdog restarted it, not systemd's Restart="
    # Every step in the journal, with the instance's name.
    log = sh(gpu, "journalctl", "-u", WATCHDOG, "--no-pager", "--since", "@%d" % int(hung_at - 1)).stdout
    for step in (r"vllm@main.*fenced", r"vllm@main.*restart", r"vllm@main.*back in service"):
        assert re.search(step, log), (step, log[-3000:])
    records = load.records
    failed = load.failures()
    in_flight = [r for r in records if r["start"] <= hung_at < r["end"]]
    # nginx reloads after the fence: allow the reload's second before counting requests as "after".
    started_after = [r for r in records if r["start"] > fenced_at + 1]
    # Until the fence, nginx has no sign of the hang and still sends the instance its share.
    failed_before_fence = [r for r in failed if hung_at < r["start"] <= fenced_at + 1]
    report("stall_fence", requests=len(records), running_on_instance_at_hang=running, in_flight_at_hang=len(in_flight),
           failed=len(failed), failed_in_flight_at_hang=len([r for r in failed if r["start"] <= hung_at]),
           failed_started_between_hang_and_fence=len(failed_before_fence),
           failed_outcomes=sorted({r["outcome"] for r in failed}), fenced_after_s=round(fenced_at - hung_at, 1),
           back_in_service_after_s=round(back_at - hung_at, 1), started_after_fence=len(started_after))  # fmt: skip
    assert running >= 1
    assert fenced_at - hung_at <= 30, fenced_at - hung_at
    # What fails is what was on the instance when it hung, and what nginx sent it between the hang and
    # the fence (the watchdog's detection time): nothing started after the fence.
    assert len(failed) - len(failed_before_fence) <= len(in_flight), failed[:5]
    assert all(r["start"] <= fenced_at + 1 for r in failed), failed[:5]
    assert len(started_after) >= 10 and all(r["outcome"] == "ok" for r in started_after), [r for r in started_after if r["outcome"] != "ok"][:5]


def alerts():
    out = sh(GW, "curl", "-s", "--max-time", "10", "http://127.0.0.1:9090/api/v1/alerts", check=False).stdout
    return json.loads(out)["data"]["alerts"] if out.strip() else []


def stall_alert(server, name):
    return [
        a for a in alerts()
        if a["labels"].get("alertname") == STALL_ALERT and a["labels"].get("server") == server
        and a["labels"].get("vllm_instance") == name and a["state"] == "firing"
    ]  # fmt: skip


class AlertWatch(threading.Thread):
    """Asks Prometheus every 2 s whether the engine-stalled alert fires for one instance; keeps when it first did."""

    def __init__(self, server, name, timeout=300):
        super().__init__(daemon=True)
        self.server, self.name, self.deadline = server, name, time.time() + timeout
        self.fired_at, self.alert, self.halt = None, None, threading.Event()

    def run(self):
        while not self.halt.is_set() and time.time() < self.deadline:
            try:
                firing = stall_alert(self.server, self.name)
            except ValueError:  # a half-written answer while Prometheus reloads: ask again
                firing = []
            if firing:
                self.fired_at, self.alert = time.time(), firing[0]
                return
            self.halt.wait(2)


@pytest.fixture(scope="module")
def hung_without_watchdog(tmp_path_factory):
    """vllm@1 of t-site-gpu1 hung while it holds requests, drained from the server tier, watched for the alert.

    t-site-gpu1 runs no watchdog (its host_vars): nothing repairs the hang until the teardown's SIGCONT."""
    gpu, name, port = "t-site-gpu1", "1", 8002
    # The inventory leaves this server without a watchdog: the role's "off" path stopped nothing and left no unit running.
    assert sh(gpu, "systemctl", "is-active", WATCHDOG, check=False).stdout.strip() != "active"
    playbook = drain_playbook(tmp_path_factory.mktemp("stall"), gpu, [name])
    set_drain(playbook, "drained")
    core = engine_core(gpu, name)
    load = Load(name="stall-alert", container=gpu, url="http://127.0.0.1:%d" % port, key=instance_key(gpu))
    watch = None
    try:
        hung_at, held, attempts = hang_with_work(gpu, core, port)
        watch = AlertWatch(gpu, name)
        watch.start()
        yield {"server": gpu, "name": name, "hung_at": hung_at, "held": held, "attempts": attempts, "watch": watch}
    finally:
        if watch is not None:
            watch.halt.set()
            watch.join(timeout=30)
        sh(gpu, "kill", "-CONT", core, check=False)
        try:
            load.stop()
        finally:
            # Back in the server tier whatever happened: the tests after this file expect it serving.
            set_drain(playbook, "serving")
    wait_until("vllm@1 answers after SIGCONT", lambda: instance_serves(gpu, port), timeout=300)


def test_prometheus_says_an_engine_stalled(hung_without_watchdog):
    case = hung_without_watchdog
    watch = case["watch"]
    # Started before the fence case, which took about as long as the alert needs: mostly no wait left.
    watch.join(timeout=max(0.0, watch.deadline - time.time()) + 5)
    assert watch.alert, "the engine-stalled alert did not fire for %s vllm@%s within 300 s of the hang" % (case["server"], case["name"])
    fired_after = watch.fired_at - case["hung_at"]
    report("stall_alert", alert_fired_after_s=round(fired_after, 1), requests_held_by_hung_engine=case["held"],
           stops_until_one_held_work=case["attempts"], beside_the_fence_case=True)  # fmt: skip
    assert fired_after <= 120, fired_after
    # The alert names the server and the instance for the person it wakes.
    assert case["server"] in json.dumps(watch.alert["annotations"]) and watch.alert["labels"]["vllm_instance"] == case["name"], watch.alert
