"""Drain state that lasts: an instance drained with the rolling playbooks' drain entry point
(playbooks/tasks/drain.yml) stays drained through a later site.yml, and undrain puts it back.

Runs after test_site.py and before test_update_and_faults.py (file order), and leaves the fleet as
it found it. Cheap: site.yml runs only its plan and gateway stages (the gateway play is the one that
reads the drained set), limited to t-site-gpu1 and the gateway.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from conftest import drain_playbook, run_playbook, set_drain

GPU, GW = "t-site-gpu1", "t-site-gw1"
# The server tier's upstreams (included in conf.d/gpufleet.conf's http level).
SERVERS = "/etc/nginx/gpufleet/local-servers.conf"
# t-site-gpu1 is planned dp: vllm@0 on 8001, vllm@1 on 8002.
DRAINED, SERVING = ("1", 8002), ("0", 8001)


def sh(container, *args, check=True):
    return subprocess.run(["podman", "exec", container, *args], capture_output=True, text=True, check=check)


def server_line(port):
    """The server tier's upstream line of the instance on `port`: the same in gpufleet_local and in the
    instance's own upstream (gpufleet_instance_<name>, the routers' route to it)."""
    text = sh(GPU, "cat", SERVERS).stdout
    lines = re.findall(r"^\s*server 127\.0\.0\.1:%d\b.*$" % port, text, re.M)
    assert len(lines) == 2 and lines[0] == lines[1], text
    return lines[0].strip()


def served(port):
    out = sh(GPU, "curl", "-s", "--max-time", "10", "http://127.0.0.1:%d/metrics" % port, check=False).stdout
    return sum(float(x) for x in re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.]+)", out, re.M))


def send_to_the_server_tier(count):
    """Completions through t-site-gpu1's own nginx (loopback is let in; the server tier checks no key)."""
    for _request in range(count):
        status = sh(GPU, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "120", "-H", "content-type: application/json",
                    "-d", '{"model": "tiny", "prompt": "drain", "max_tokens": 1}', "http://127.0.0.1:8000/v1/completions").stdout  # fmt: skip
        assert status == "200", status


@pytest.fixture(scope="module")
def playbook(tmp_path_factory):
    return drain_playbook(tmp_path_factory.mktemp("drain"), GPU, [DRAINED[0]])


def test_a_drained_instance_stays_drained_through_site_yml_until_undrained(playbook):
    try:
        set_drain(playbook, "drained")
        assert server_line(DRAINED[1]).startswith("server 127.0.0.1:%d down " % DRAINED[1])
        assert json.loads(sh(GPU, "cat", "/etc/nginx/gpufleet/drained.json").stdout)["server"] == [DRAINED[0]]

        # site.yml writes the site file again from its template: the mark stays, and the run says so.
        out, _recap = run_playbook("site.yml", "--limit", "%s,%s" % (GPU, GW), "--tags", "plan,gateway", timeout=900)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        words = " ".join(out.stdout.split())
        assert "WARNING: %s keeps drained" % GPU in words and "vllm@%s." % DRAINED[0] in words, words[-3000:]
        assert " down " in server_line(DRAINED[1]) and " down " not in server_line(SERVING[1])
        assert sh(GPU, "nginx", "-t", check=False).returncode == 0

        # No traffic for the drained instance; the other one takes it all.
        before = {port: served(port) for port in (DRAINED[1], SERVING[1])}
        send_to_the_server_tier(6)
        assert served(DRAINED[1]) == before[DRAINED[1]]
        assert served(SERVING[1]) >= before[SERVING[1]] + 6
    finally:
        set_drain(playbook, "serving")

    # Back in service: no mark, an empty set, and requests reach it again.
    assert " down " not in server_line(DRAINED[1])
    assert json.loads(sh(GPU, "cat", "/etc/nginx/gpufleet/drained.json").stdout)["server"] == []
    before = served(DRAINED[1])
    send_to_the_server_tier(6)
    assert served(DRAINED[1]) > before
