"""Helpers the site scenario's tests share: run a playbook of this repository against the scenario's fleet."""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def run_playbook(name, *options, extra_vars=None, env=None, timeout=1800):
    """ansible-playbook NAME (a path in this repository) against molecule's inventory, as molecule's own converge runs it.

    Returns the completed process and the recap's changed count per host."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.fail("MOLECULE_INVENTORY_FILE is not set: run through molecule verify")
    env = dict(
        os.environ,
        GPUFLEET_REPO_DIR=str(ROOT),
        ANSIBLE_COLLECTIONS_PATH="%s/collections:%s/.cache/collections" % (ROOT, ROOT),
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        **(env or {}),
    )
    # As molecule's own runs (molecule.yml, provisioner options): every server of the fleet in one batch.
    args = ["ansible-playbook", "-i", inventory, "-e", "gpufleet_serial=100%", *options, str(ROOT / name)]
    if extra_vars:
        args += ["-e", json.dumps(extra_vars)]
    out = subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=timeout, cwd=str(ROOT / "molecule" / "site"))
    recap = {host: int(changed) for host, changed in re.findall(r"^(\S+)\s*: ok=\d+\s+changed=(\d+)", out.stdout, re.M)}
    return out, recap


# --- the fleet under load (test_stall_fence.py, test_update_and_faults.py) -------------------------
GW = "t-site-gw1"
KEY = "demo-key-0123456789"
LOADGEN = ROOT / "plugins" / "module_utils" / "loadgen.py"
REPORT = ROOT / ".cache" / "reports" / "site-faults.json"


def sh(container, *args, check=True):
    return subprocess.run(["podman", "exec", container, *args], capture_output=True, text=True, check=check)


def unit(container, name, prop):
    return sh(container, "systemctl", "show", "-P", prop, "vllm@%s.service" % name).stdout.strip()


def report(case, **figures):
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[case] = figures
    REPORT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class Load:
    """The load generator running inside a host (the gateway by default, against its port 80), at a steady rate, until stopped.

    Half a request a second by default: on vLLM's CPU build each worker process spins for a second
    after every engine step (vLLM's shared-memory queue), so serving costs far more CPU than the
    tokens do; at one request a second the spinning workers took about 1.4 of the machine's 2 cores
    and every vLLM restart under load waited for CPU (top during the rolling update, 2026-12-02)."""

    def __init__(self, rate=0.5, timeout=120, mix="8:8,24:16", name="load", container=GW, url="http://127.0.0.1", key=KEY):
        self.container = container
        self.stop_file, self.record_file = "/tmp/%s.stop" % name, "/tmp/%s.jsonl" % name
        sh(container, "rm", "-f", self.stop_file, self.record_file)
        args = ["--url", url, "--model", "tiny", "--key", key, "--mix", mix, "--rate", str(rate),
                "--concurrency", "8", "--duration", "3600", "--stop-file", self.stop_file, "--records", self.record_file,
                "--timeout", str(timeout)]  # fmt: skip
        with LOADGEN.open("rb") as script:
            argv = ["podman", "exec", "-i", container, "python3", "-", *args]
            self.proc = subprocess.Popen(argv, stdin=script, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.summary = None
        self.records = []

    def stop(self):
        sh(self.container, "touch", self.stop_file)
        out, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, err.decode()[-2000:]
        self.summary = json.loads(out)
        self.records = [json.loads(line) for line in sh(self.container, "cat", self.record_file).stdout.splitlines()]
        return self

    def failures(self):
        return [r for r in self.records if r["outcome"] != "ok"]


def wait_until(what, predicate, timeout=600, every=3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(every)
    pytest.fail("timed out after %ds waiting until %s" % (timeout, what))


def instance_key(container):
    """The key every vLLM instance of the host asks for (the vllm role's /etc/vllm/instance-api-key)."""
    return sh(container, "sed", "-n", "s/^VLLM_API_KEY=//p", "/etc/vllm/instance-api-key").stdout.strip()


def instance_serves(container, port):
    """A one-token completion straight from the instance, with the host's instance key."""
    out = sh(container, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60", "-H", "content-type: application/json",
             "-H", "Authorization: Bearer " + instance_key(container),
             "-d", '{"model": "tiny", "prompt": "ping", "max_tokens": 1}', "http://127.0.0.1:%d/v1/completions" % port, check=False)  # fmt: skip
    return out.stdout == "200"


def container_running(name):
    out = subprocess.run(["podman", "inspect", "--format", "{{.State.Running}}", name], capture_output=True, text=True, check=False)
    return out.stdout.strip() != "false"


def served_by(container, port):
    out = sh(container, "curl", "-s", "--max-time", "10", "http://127.0.0.1:%d/metrics" % port, check=False).stdout
    return sum(float(x) for x in re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.]+)", out, re.M))


def unit_processes(container, unit_name):
    """The PIDs (as text) of every process in a unit's control group."""
    lines = sh(container, "ps", "-eo", "pid=,unit=").stdout.splitlines()
    return {line.split()[0] for line in lines if line.split()[1:] == [unit_name]}


# --- drain (test_site_drain.py, test_stall_fence.py) -------------------------------------------------
def drain_playbook(directory, host, names):
    """A playbook that does what the rolling playbook does: include its one drain task file on a GPU server.

    The state (drained or serving) is an extra var of each run: set_drain()."""
    path = directory / ("drain-%s.yml" % host)
    path.write_text(
        "- name: Drain as the rolling playbook does\n"
        "  hosts: %s\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - name: The rolling playbooks' drain entry point\n"
        "      ansible.builtin.include_tasks: %s\n"
        "      vars:\n"
        "        gpufleet_drain_tier: server\n"
        "        gpufleet_drain_names: %s\n" % (host, ROOT / "playbooks" / "tasks" / "drain.yml", json.dumps(list(names)))
    )
    return str(path)


def set_drain(playbook, state):
    out, _recap = run_playbook(playbook, extra_vars={"gpufleet_drain_state": state}, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    return out
