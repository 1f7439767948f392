"""site.yml end to end: plan, vLLM and both nginx tiers, checked through the fleet gateway.

Keys, paths and what is reachable from where are test_gateway.py's."""

import json
import re
import shlex
import subprocess

import pytest
import yaml
from conftest import run_playbook

testinfra_hosts = ["podman://t-site-gw1"]
KEY = "demo-key-0123456789"


def call(host, path, body=None, key=KEY):
    args = ["curl", "-sS", "--max-time", "120", "-o", "/tmp/body", "-w", "%{http_code}"]
    if key:
        args += ["-H", "Authorization: Bearer %s" % key]
    if body is not None:
        args += ["-H", "content-type: application/json", "-d", json.dumps(body)]
    out = host.run(shlex.join([*args, "http://127.0.0.1%s" % path]))
    assert out.rc == 0, out.stderr
    return int(out.stdout), host.file("/tmp/body").content_string


@pytest.fixture(scope="module")
def plans():
    found = {}
    for name in ("t-site-gpu1", "t-site-gpu2"):
        out = subprocess.run(["podman", "exec", name, "cat", "/etc/vllm/plan.json"], capture_output=True, text=True, check=True)
        found[name] = json.loads(out.stdout)
    return found


def test_one_server_dp_the_other_tp(plans):
    assert plans["t-site-gpu1"]["topology"] == "dp"
    assert len(plans["t-site-gpu1"]["instances"]) == 2
    assert plans["t-site-gpu2"]["topology"] == "tp"
    assert plans["t-site-gpu2"]["tensor_parallel_size"] == 2


def test_chat_completion_through_the_fleet_gateway(host):
    status, body = call(host, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})
    assert status == 200, body
    reply = json.loads(body)
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["usage"]["completion_tokens"] >= 1


def test_every_instance_of_both_servers_serves(host):
    # Enough requests that least_conn reaches both servers and all three instances.
    for _i in range(12):
        status, body = call(host, "/v1/completions", {"model": "tiny", "prompt": "ping", "max_tokens": 2})
        assert status == 200, body
    for name, ports in (("t-site-gpu1", (8001, 8002)), ("t-site-gpu2", (8001,))):
        for port in ports:
            out = subprocess.run(["podman", "exec", name, "curl", "-s", "http://127.0.0.1:%d/metrics" % port], capture_output=True, text=True, check=True)
            served = re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.]+)", out.stdout, re.M)
            assert served and sum(float(x) for x in served) >= 1, (name, port)


def test_check_mode_reports_no_change():
    out, recap = run_playbook("site.yml", "--check", "--diff")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert recap and all(changed == 0 for changed in recap.values()), out.stdout[-3000:]


def upstream_servers(host):
    """The GPU servers named in the fleet gateway's upstream (the comment after each server line)."""
    text = host.file("/etc/nginx/conf.d/gpufleet.conf").content_string
    return sorted(set(re.findall(r"^\s*server \S+:8000 [^;]*;\s*# (\S+)", text, re.M)))


def test_add_servers_puts_a_new_server_behind_the_gateway(host):
    # The gateway as it was before t-site-gpu2 joined: only t-site-gpu1 behind it.
    out, _recap = run_playbook("molecule/site/gateway.yml", "--limit", "t-site-gw1", extra_vars={"gateway_backends": [{"address": "t-site-gpu1"}]})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert upstream_servers(host) == ["t-site-gpu1"]
    # A limit without the gateways is refused before anything runs, and says what is missing.
    out, recap = run_playbook("playbooks/add_servers.yml", "--limit", "t-site-gpu2")
    words = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0 and "Left out: t-site-gw1." in words, words[-2000:]
    assert "PLAY [Plan every GPU server" not in out.stdout
    # The operator's command: site.yml for the new server, every gateway rewritten over all servers.
    out, recap = run_playbook("playbooks/add_servers.yml", "--limit", "t-site-gpu2,gateways")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert set(recap) == {"t-site-gpu2", "t-site-gw1"}, recap  # t-site-gpu1 is not touched
    assert recap["t-site-gpu2"] == 0 and recap["t-site-gw1"] >= 1, recap
    assert upstream_servers(host) == ["t-site-gpu1", "t-site-gpu2"]
    assert host.run("nginx -t").rc == 0
    # Prometheus on t-site-gw1 still scrapes every instance, t-site-gpu1's (outside the run) included:
    # the monitoring host read its plan from it.
    scraped = yaml.safe_load(host.file("/etc/prometheus/prometheus.yml").content_string)
    vllm = [c["labels"] for job in scraped["scrape_configs"] if job["job_name"] == "vllm" for c in job["static_configs"]]
    assert sorted((c["server"], c["vllm_instance"]) for c in vllm) == [("t-site-gpu1", "0"), ("t-site-gpu1", "1"), ("t-site-gpu2", "main")], vllm
    for _i in range(6):
        status, body = call(host, "/v1/completions", {"model": "tiny", "prompt": "joined", "max_tokens": 2})
        assert status == 200, body
