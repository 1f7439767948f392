"""Rolling updates and faults under steady load, on the fleet site.yml built.

Runs after test_site.py (file order): each test drives the fleet gateway with the
project's load generator (plugins/module_utils/loadgen.py, run inside t-site-gw1
against its port 80) while something happens to the fleet, then reads every
request's record. The counts of each case are written to
.cache/reports/site-faults.json for the closing notes.

The last test kills a whole GPU server: it must stay last.
"""

import re
import subprocess
import time

import pytest
from conftest import Load, container_running, instance_serves, report, run_playbook, served_by, sh, unit, unit_processes, wait_until

ROLLOUT_ENV = {"plan_extra_env": {"GPUFLEET_ROLLOUT": "1"}}
PIDS = {("t-site-gpu1", "0"), ("t-site-gpu1", "1"), ("t-site-gpu2", "main")}


def test_rolling_update_under_load_fails_no_request():
    before = {key: unit(key[0], key[1], "MainPID") for key in PIDS}
    load = Load()
    time.sleep(5)
    out, _recap = run_playbook("playbooks/rolling_update.yml", extra_vars=ROLLOUT_ENV)
    time.sleep(5)
    load.stop()
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    after = {key: unit(key[0], key[1], "MainPID") for key in PIDS}
    assert all(before[key] != after[key] for key in PIDS), (before, after)
    for container, name in PIDS:
        assert "GPUFLEET_ROLLOUT=1" in sh(container, "cat", "/etc/vllm/%s.env" % name).stdout
    report("rolling_update", requests=len(load.records), failed=len(load.failures()), outcomes=load.summary["outcomes"],
           ttft_p50_s=load.summary["ttft_p50"], ttft_p99_s=load.summary["ttft_p99"])  # fmt: skip
    assert len(load.records) >= 20, load.summary
    assert load.failures() == [], load.failures()[:5]
    # The gateways' files are back as the gateway role writes them: no server left marked down.
    for container in ("t-site-gw1", "t-site-gpu1", "t-site-gpu2"):
        assert " down " not in sh(container, "cat", "/etc/nginx/conf.d/gpufleet.conf").stdout, container


def test_rolling_update_again_changes_nothing():
    # Both servers in one batch: a run that restarts nothing has nothing to serialise.
    out, recap = run_playbook("playbooks/rolling_update.yml", extra_vars=dict(ROLLOUT_ENV, gpufleet_rolling_serial=2))
    assert out.returncode == 0, out.stdout[-4000:]
    assert recap and all(changed == 0 for changed in recap.values()), out.stdout[-4000:]
    assert "nothing to restart" in out.stdout


def test_sigkill_of_a_backend_costs_only_its_requests():
    pid = unit("t-site-gpu1", "0", "MainPID")
    restarts = int(unit("t-site-gpu1", "0", "NRestarts"))
    # Every process of the instance (the API server and its engine core below it).
    group = unit_processes("t-site-gpu1", "vllm@0.service")
    assert pid in group and len(group) > 1, group
    load = Load()
    # Alongside the steady load and only until the kill, long answers (400 tokens, seconds each): the
    # kill then finds a request in flight on vllm@0, without loading the 2-core test fleet all along.
    long_load = Load(mix="8:400", rate=0.5, name="long")
    time.sleep(10)
    # Kill at a moment vllm@0 itself reports a running request; the kill's moment is taken where it
    # happens (podman exec itself takes seconds on a busy host).
    killer = (
        "for i in $(seq 1200); do"
        " n=$(curl -s --max-time 2 http://127.0.0.1:8001/metrics | awk '/^vllm:num_requests_running/ {s += $2} END {print int(s)}');"
        ' [ "${n:-0}" -ge 1 ] && break; sleep 0.1; done;'
        " date +%%s.%%N; echo $n; kill -9 %s" % pid
    )
    killed_at, running_at_kill = sh("t-site-gpu1", "sh", "-c", killer).stdout.split()[:2]
    killed_at, running_at_kill = float(killed_at), int(running_at_kill)
    long_load.stop()
    wait_until("vllm@0 is restarted by systemd", lambda: unit("t-site-gpu1", "0", "MainPID") not in ("0", pid))
    wait_until("vllm@0 answers again", lambda: instance_serves("t-site-gpu1", 8001))
    back_at = time.time()
    # Back in service behind nginx: it takes requests of the load again (its counters restarted at 0).
    wait_until("vllm@0 serves requests from the gateway", lambda: served_by("t-site-gpu1", 8001) >= 2, timeout=120)
    load.stop()
    assert int(unit("t-site-gpu1", "0", "NRestarts")) == restarts + 1
    # No process of the killed instance is left (KillMode=control-group): not the engine core either.
    assert group.isdisjoint(sh("t-site-gpu1", "ps", "-eo", "pid=").stdout.split()), group
    records = load.records + long_load.records
    in_flight = [r for r in records if r["start"] <= killed_at < r["end"]]
    failed = load.failures() + long_load.failures()
    failed_in_flight = [r for r in failed if r["start"] <= killed_at < r["end"]]
    # Until nginx marks vllm@0 down, a request it sends there after the kill can still fail once sent (a
    # POST is not replayed). nginx marks it down after max_fails failed attempts in each worker (no shared
    # zone); after that, no new request may fail.
    conf = sh("t-site-gpu1", "cat", "/etc/nginx/gpufleet/local-servers.conf").stdout
    max_fails = int(re.search(r"127\.0\.0\.1:8001 .*max_fails=(\d+)", conf).group(1))
    workers = len(sh("t-site-gpu1", "pgrep", "-f", "nginx: worker process").stdout.split())
    failed_after = [r for r in failed if r["start"] > killed_at]
    marked_down_at = max([r["end"] for r in failed_after], default=killed_at)
    started_after_down = [r for r in records if r["start"] > marked_down_at]
    report("sigkill_backend", requests=len(records), in_flight_at_kill=len(in_flight), running_on_vllm0_at_kill=running_at_kill,
           failed=len(failed), failed_in_flight=len(failed_in_flight), failed_before_marked_down=len(failed_after),
           marked_down_after_s=round(marked_down_at - killed_at, 1), nginx_attempts_to_mark_down=max_fails * workers,
           failed_outcomes=sorted({r["outcome"] for r in failed}), started_after_marked_down=len(started_after_down),
           restart_to_serving_s=round(back_at - killed_at, 1))  # fmt: skip
    # The kill found work on the instance: the case is not empty.
    assert running_at_kill >= 1 and len(in_flight) >= running_at_kill, (running_at_kill, len(in_flight))
    # Nothing failed before the kill; of the requests in flight, at most those fail.
    assert len(failed_in_flight) + len(failed_after) == len(failed), failed
    assert len(failed_in_flight) <= len(in_flight)
    # After the kill, at most the attempts nginx needs to mark vllm@0 down fail ...
    assert len(failed_after) <= max_fails * workers, failed_after
    # ... and every request started after that succeeds.
    assert len(started_after_down) >= 10 and all(r["outcome"] == "ok" for r in started_after_down), started_after_down[:5]


def test_a_unit_that_always_fails_stops_at_its_start_limit():
    """The unit's own restart policy (Restart=always, RestartSec, StartLimitBurst/IntervalSec) with a program
    that always fails in place of vLLM (a runtime drop-in replaces ExecStart only).

    systemd 252 (Debian 12) counts the refused restart in NRestarts and keeps Result=exit-code; the journal
    says "Start request repeated too quickly"."""
    host = "t-site-gpu2"
    sh(host, "sh", "-c", "cp /etc/vllm/main.env /etc/vllm/broken.env && mkdir -p /run/systemd/system/vllm@broken.service.d && "
       "printf '[Service]\\nExecStart=\\nExecStart=/bin/false\\n' > /run/systemd/system/vllm@broken.service.d/fail.conf && "
       "systemctl daemon-reload")  # fmt: skip
    try:
        sh(host, "systemctl", "start", "vllm@broken.service", check=False)
        burst = int(unit(host, "broken", "StartLimitBurst"))
        every = int(unit(host, "broken", "RestartUSec").rstrip("s") or 10)

        def state():
            return "%s/%s" % (unit(host, "broken", "ActiveState"), unit(host, "broken", "SubState"))

        deadline = time.time() + 60 + burst * (every + 30)
        while state() != "failed/failed":
            if time.time() > deadline:
                pytest.fail("vllm@broken still restarting: " + sh(host, "systemctl", "show", "vllm@broken.service", "-p",
                            "ActiveState,SubState,Result,NRestarts,StartLimitBurst,StartLimitIntervalUSec,RestartUSec").stdout)  # fmt: skip
            time.sleep(3)
        restarts = int(unit(host, "broken", "NRestarts"))
        journal = sh(host, "journalctl", "-u", "vllm@broken.service", "--no-pager", "-o", "cat").stdout
        # It stays down: no start in twice the restart delay.
        time.sleep(2 * every + 5)
        assert state() == "failed/failed"
        assert int(unit(host, "broken", "NRestarts")) == restarts, "a start after the limit"
        starts = journal.count("Started vllm@broken.service")
        report("start_limit", start_limit_burst=burst, restart_sec=every, starts=starts, restarts_counted=restarts,
               stopped_by_limit="Start request repeated too quickly" in journal)  # fmt: skip
        assert "Start request repeated too quickly" in journal, journal[-2000:]
        assert starts == burst, journal[-2000:]
    finally:
        sh(host, "sh", "-c", "systemctl reset-failed vllm@broken.service; rm -rf /etc/vllm/broken.env "
           "/run/systemd/system/vllm@broken.service.d; systemctl daemon-reload", check=False)  # fmt: skip


def test_a_whole_server_down_the_fleet_keeps_serving():
    """t-site-gpu1 is killed like a power loss (no shutdown, no TCP reset). Its in-flight requests fail
    (here when the client's 20 s timeout ends them); every request started after the kill is served by
    t-site-gpu2. Must stay the last test: the server stays down."""
    load = Load(rate=1.0, timeout=20)  # 40 s after the kill: enough requests to count
    time.sleep(10)
    # The kill lasts from the command's start until the container is seen down: a request that overlaps
    # that window was in flight on a dying server; one started after it must be served by t-site-gpu2.
    kill_started = time.time()
    killed = subprocess.run(["podman", "kill", "--signal", "KILL", "t-site-gpu1"], capture_output=True, text=True, check=False)
    if killed.returncode != 0:
        # podman sends the signal, then waits a fixed time for conmon's exit file; on a loaded host the
        # container's many processes can take longer to be reaped, and podman reports that wait as an
        # error although the kill was delivered. What counts is that the container is down.
        wait_until("t-site-gpu1 is down after podman kill (rc %d: %s)" % (killed.returncode, killed.stderr.strip()),
                   lambda: not container_running("t-site-gpu1"), timeout=120, every=1)  # fmt: skip
    kill_done = time.time()
    time.sleep(40)
    load.stop()
    in_flight = [r for r in load.records if r["start"] <= kill_done and r["end"] > kill_started]
    failed = load.failures()
    started_after = [r for r in load.records if r["start"] > kill_done]
    slow = [r for r in started_after if r["latency"] > 4]
    report("server_down", requests=len(load.records), in_flight_at_kill=len(in_flight), failed=len(failed),
           failed_outcomes=sorted({r["outcome"] for r in failed}), started_after_kill=len(started_after),
           failed_after_kill=len([r for r in started_after if r["outcome"] != "ok"]), slowed_by_connect_retries=len(slow),
           kill_took_s=round(kill_done - kill_started, 1), podman_kill_rc=killed.returncode)  # fmt: skip
    assert all(r in in_flight for r in failed), failed
    assert len(started_after) >= 30 and all(r["outcome"] == "ok" for r in started_after), [r for r in started_after if r["outcome"] != "ok"][:5]
