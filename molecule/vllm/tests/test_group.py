"""A group of servers: `tiny-b` over t-vllm2 (the leader) and t-vllm3 (a follower), pipeline parallel.

vLLM's own multi-node launch (`--nnodes`, `--node-rank`, `--master-addr`,
followers `--headless`), each member's unit under the group guard
(plugins/module_utils/group_guard.py). The fault case kills the follower's
vLLM under load through the fleet gateway and measures how long the group
takes to serve again and which requests failed (t-vllm4 serves tiny-b too,
so the fleet keeps serving the model meanwhile); the figures go to
.cache/reports/vllm-group.json.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "collections"))
from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_launch  # noqa: E402

LEADER, FOLLOWER, GATEWAY = "t-vllm2", "t-vllm3", "t-vllm-cache"
# tiny-b's other server (alone): it serves while the group restarts.
OTHER = "t-vllm4"
KEY = "vllm-scenario-key-0123456789"
MODEL = "tiny-b"
LOADGEN = ROOT / "plugins" / "module_utils" / "loadgen.py"
REPORT = ROOT / ".cache" / "reports" / "vllm-group.json"
PYTHON = "/opt/vllm/venv/bin/python"
GUARD, HEADLESS = "/opt/vllm/gpufleet-group-guard.py", "/opt/vllm/vllm-headless.py"


def sh(container, *args, check=True, timeout=120):
    return subprocess.run(["podman", "exec", container, *args], capture_output=True, text=True, check=check, timeout=timeout)


def plan_of(container):
    return json.loads(sh(container, "cat", "/etc/vllm/plan.json").stdout)


def unit(container, prop, name="main"):
    return sh(container, "systemctl", "show", "-P", prop, "vllm@%s.service" % name).stdout.strip()


def cmdline(container, pid):
    return sh(container, "sh", "-c", "tr '\\0' '\\n' < /proc/%s/cmdline" % pid).stdout.splitlines()


def child_of(container, pid):
    """The one child process of pid (the guard's vLLM)."""
    children = sh(container, "pgrep", "-P", str(pid), check=False).stdout.split()
    assert len(children) == 1, (container, pid, children)
    return children[0]


def unit_processes(container, unit_name):
    lines = sh(container, "ps", "-eo", "pid=,unit=").stdout.splitlines()
    return {line.split()[0] for line in lines if line.split()[1:] == [unit_name]}


def leader_serves(port, key):
    """The group's leader answers a one-token completion on its own instance (the group serves)."""
    body = json.dumps({"model": MODEL, "prompt": "ping", "max_tokens": 1})
    out = sh(LEADER, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30", "-H", "Authorization: Bearer " + key,
             "-H", "content-type: application/json", "-d", body, "http://127.0.0.1:%d/v1/completions" % port, check=False)  # fmt: skip
    return out.stdout == "200"


def api_lines(container):
    """Completions the server tier of container has answered 200 (its access log)."""
    log = sh(container, "cat", "/var/log/nginx/gpufleet-access.log").stdout
    return sum(1 for line in log.splitlines() if "/v1/completions HTTP" in line and '" 200 ' in line)


def guard_stopped_at(container, since):
    """When the member's group guard logged that the group broke (its journal), as a Unix time."""
    lines = sh(container, "journalctl", "-u", "vllm@main.service", "-o", "short-unix", "--no-pager", "--since", "@%d" % int(since)).stdout
    for line in lines.splitlines():
        if "gpufleet-group-guard:" in line and ("lost " in line or "vLLM ended" in line or "silent for" in line):
            return float(line.split()[0])
    pytest.fail("%s's guard logged no broken group since %s:\n%s" % (container, since, lines[-3000:]))


def wait_until(what, predicate, timeout=600, every=2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return time.time()
        time.sleep(every)
    pytest.fail("timed out after %ds waiting until %s" % (timeout, what))


@pytest.fixture(scope="module")
def plans():
    return {LEADER: plan_of(LEADER), FOLLOWER: plan_of(FOLLOWER)}


def test_one_group_two_ranks(plans):
    leader, follower = plans[LEADER], plans[FOLLOWER]
    for plan in (leader, follower):
        assert (plan["topology"], plan["pipeline_parallel_size"], plan["tensor_parallel_size"]) == ("pp", 2, 1)
        assert plan["group"]["name"] == "pair-0" and plan["group"]["leader"] == LEADER
        assert [(m["host"], m["rank"]) for m in plan["group"]["members"]] == [(LEADER, 0), (FOLLOWER, 1)]
    assert (leader["group"]["node_rank"], follower["group"]["node_rank"]) == (0, 1)
    assert [i["role"] for i in leader["instances"]] == ["leader"] and [i["role"] for i in follower["instances"]] == ["follower"]
    # The leader's address is t-vllm2's own on the interface the inventory names.
    address = sh(LEADER, "sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1").stdout.strip()
    assert leader["group"]["master_addr"] == address


@pytest.mark.parametrize("container", [LEADER, FOLLOWER])
def test_each_member_runs_its_launch_under_the_guard(plans, container):
    """The unit's main process is the guard with the plan's options; its one child is the plan's command, word for word."""
    instance = plans[container]["instances"][0]
    main_pid = unit(container, "MainPID")
    assert cmdline(container, main_pid) == [PYTHON, "-I", "-s", GUARD, *instance["guard_argv"], "--", *vllm_launch.instance_command(PYTHON, instance, HEADLESS)]
    child = cmdline(container, child_of(container, main_pid))
    assert child == vllm_launch.instance_command(PYTHON, instance, HEADLESS)
    assert ("--headless" in child) == (container == FOLLOWER)
    env = instance["env"]
    assert env["VLLM_HOST_IP"] == next(m["address"] for m in plans[container]["group"]["members"] if m["host"] == container)
    assert env["GLOO_SOCKET_IFNAME"] == "eth0"


def test_only_the_leader_serves_http(plans):
    port = plans[FOLLOWER]["instances"][0]["port"]
    assert sh(FOLLOWER, "curl", "-s", "-m", "5", "http://127.0.0.1:%d/health" % port, check=False).returncode != 0
    # The leader is a backend of the fleet gateway's tiny-b pool (beside t-vllm4), the follower is not.
    conf = sh(GATEWAY, "cat", "/etc/nginx/conf.d/gpufleet.conf").stdout
    assert "# %s" % LEADER in conf and "# %s" % OTHER in conf and "# %s" % FOLLOWER not in conf


def test_group_traffic_only_from_members(plans):
    """The units let only the group's addresses through (besides loopback): a member reaches the leader's
    rendezvous (vLLM's TCP store, which listens on every address), the gateway host (not a member) does not."""
    addresses = sorted(m["address"] for m in plans[LEADER]["group"]["members"])
    for container in (LEADER, FOLLOWER):
        allowed = unit(container, "IPAddressAllow").split()
        assert all(a + "/32" in allowed or a in allowed for a in addresses), allowed
    leader_ip, port = plans[LEADER]["group"]["master_addr"], plans[LEADER]["group"]["master_port"]
    assert ":%d " % port in sh(LEADER, "ss", "-Hltn").stdout
    probe = "timeout 5 bash -c 'exec 3<>/dev/tcp/%s/%d'" % (leader_ip, port)
    assert sh(FOLLOWER, "sh", "-c", probe, check=False).returncode == 0
    assert sh(GATEWAY, "sh", "-c", probe, check=False).returncode != 0


class Load:
    """The project's load generator on the gateway host, against the fleet gateway, until stopped."""

    def __init__(self, rate=0.5, name="group-load"):
        self.stop_file, self.records_file = "/tmp/%s.stop" % name, "/tmp/%s.jsonl" % name
        sh(GATEWAY, "rm", "-f", self.stop_file, self.records_file)
        args = ["--url", "http://127.0.0.1", "--model", MODEL, "--key", KEY, "--mix", "8:8,16:32", "--rate", str(rate), "--concurrency", "4",
                "--duration", "1800", "--stop-file", self.stop_file, "--records", self.records_file, "--timeout", "60"]  # fmt: skip
        with LOADGEN.open("rb") as script:
            self.proc = subprocess.Popen(["podman", "exec", "-i", GATEWAY, "python3", "-", *args], stdin=script, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.records = []

    def stop(self):
        sh(GATEWAY, "touch", self.stop_file)
        out, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, err.decode()[-2000:]
        self.records = [json.loads(line) for line in sh(GATEWAY, "cat", self.records_file).stdout.splitlines()]
        return json.loads(out)


def test_a_killed_follower_restarts_the_group_and_the_model_keeps_serving(plans):
    """SIGKILL of the follower's vLLM under load, at a moment the leader holds a request: the group goes down as a
    whole (the leader too, not a leader that answers /health and hangs), systemd brings both back; meanwhile the
    fleet gateway sends tiny-b's requests to its other server (t-vllm4), so only the requests the group held fail;
    once back, the leader takes requests again."""
    leader_restarts, follower_restarts = int(unit(LEADER, "NRestarts")), int(unit(FOLLOWER, "NRestarts"))
    follower_group = unit_processes(FOLLOWER, "vllm@main.service")
    victim = child_of(FOLLOWER, unit(FOLLOWER, "MainPID"))
    port = plans[LEADER]["instances"][0]["port"]
    key = sh(LEADER, "sed", "-n", "s/^VLLM_API_KEY=//p", "/etc/vllm/instance-api-key").stdout.strip()
    load = Load()
    time.sleep(8)
    # The kill at a moment the leader's vLLM reports a running request (up to a minute), so that the group holds
    # one; the kill's moment is taken where it happens.
    wait_running = (
        "for i in $(seq 600); do"
        " n=$(curl -s --max-time 2 http://127.0.0.1:%d/metrics | awk '/^vllm:num_requests_running/ {s += $2} END {print int(s)}');"
        ' [ "${n:-0}" -ge 1 ] && break; sleep 0.1; done; echo ${n:-0}' % port
    )
    running_at_kill = int(sh(LEADER, "sh", "-c", wait_running).stdout.split()[-1])
    killed_at = float(sh(FOLLOWER, "sh", "-c", "date +%%s.%%N; kill -9 %s" % victim).stdout.split()[0])
    wait_until("the leader's unit restarts", lambda: int(unit(LEADER, "NRestarts")) > leader_restarts, timeout=60, every=1)
    leader_down_at = time.time()
    # When the leader's guard took the group down (its journal): requests that overlap the kill and that moment
    # were in the group's hands while it broke.
    broke_at = guard_stopped_at(LEADER, killed_at)
    back_at = wait_until("the group's leader answers again", lambda: leader_serves(port, key), timeout=600, every=2)
    served_before = api_lines(LEADER)
    in_pool_at = wait_until("the fleet gateway sends requests to the leader again", lambda: api_lines(LEADER) > served_before, timeout=120)
    time.sleep(8)
    summary = load.stop()
    records = load.records
    failed = [r for r in records if r["outcome"] != "ok"]
    in_flight = [r for r in records if r["start"] <= broke_at and r["end"] > killed_at]
    during = [r for r in records if broke_at < r["start"] < back_at]
    after = [r for r in records if r["start"] >= back_at]
    figures = {
        "killed": "the follower's vLLM (vllm serve --headless), SIGKILL",
        "leader_running_requests_at_kill": running_at_kill,
        "group_down_after_s": round(broke_at - killed_at, 2),
        "leader_restarted_after_s": round(leader_down_at - killed_at, 1),
        "serving_again_after_s": round(back_at - killed_at, 1),
        "back_in_the_pool_after_s": round(in_pool_at - killed_at, 1),
        "requests": len(records),
        "in_flight_at_kill": len(in_flight),
        "failed_in_flight": len([r for r in in_flight if r["outcome"] != "ok"]),
        "started_while_down": len(during),
        "failed_while_down": len([r for r in during if r["outcome"] != "ok"]),
        "started_after": len(after),
        "failed_after": len([r for r in after if r["outcome"] != "ok"]),
        "failed_outcomes": sorted({r["outcome"] for r in failed}),
        "load": {k: summary[k] for k in ("requests", "ok") if k in summary},
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print("group fault:", json.dumps(figures, sort_keys=True))
    # The whole group went down and came back: both units restarted, by systemd, once.
    assert int(unit(LEADER, "NRestarts")) == leader_restarts + 1
    assert int(unit(FOLLOWER, "NRestarts")) == follower_restarts + 1
    assert unit(LEADER, "ActiveState") == "active" and unit(FOLLOWER, "ActiveState") == "active"
    # No process of the follower's old group survives (KillMode=control-group).
    assert follower_group.isdisjoint(sh(FOLLOWER, "ps", "-eo", "pid=").stdout.split()), follower_group
    # Only requests the group held while it broke failed: nothing before the kill, nothing the fleet gateway
    # received while the group was down (its other server took them), nothing after.
    assert all(r["outcome"] == "ok" for r in records if r["end"] <= killed_at)
    assert [r for r in failed if r not in in_flight] == [], [r for r in failed if r not in in_flight][:5]
    assert figures["started_while_down"] >= 5 and figures["failed_while_down"] == 0, during[:5]
    assert figures["started_after"] >= 3 and figures["failed_after"] == 0, after[:5]
