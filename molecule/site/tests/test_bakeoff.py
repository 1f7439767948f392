"""The bake-off on the site scenario's fleet: playbooks/bakeoff.yml measures
dp and vllm_dp on t-site-gpu1 (real vLLM, CPU build) with a small bounded mix,
writes the report, the plots and the measurement file on the control node, and
puts t-site-gpu1 back to its `dp` plan; a following plan reads the measurement.

Two of the three topologies, to keep `make test` within its hour: each one more
costs a vLLM restart on the 2-core fleet (about 90 s). vllm_dp because nothing
else starts it on a real host; tp runs on t-site-gpu2 here and on t-vllm2 in
the vllm scenario. The bake-off code does not depend on which
topologies it measures; docs/bakeoff-local/ is a run with all three.

This file runs first (file-name order): the tests after it expect the converged
state, and the last test here checks that state is back.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from conftest import run_playbook

SERVER, OTHER, GW = "t-site-gpu1", "t-site-gpu2", "t-site-gw1"
KEY = "demo-key-0123456789"
TOPOLOGIES = ["dp", "vllm_dp"]
LEVELS = [1, 4]
COLORS = {"dp": "#1f77b4", "tp": "#d62728", "vllm_dp": "#2ca02c"}
# Small and bounded: 2 levels x 6 requests per topology, 10 requests per balancer.
EXTRA = {
    "bakeoff_hosts": SERVER,
    "bakeoff_topologies": TOPOLOGIES,
    "bakeoff_concurrency": LEVELS,
    "bakeoff_mix": "16:8",
    "bakeoff_requests_per_level": 6,
    "bakeoff_warmup_requests": 2,
    "bakeoff_request_timeout": 120,
    "bakeoff_balance_mix": "16:4,16:96",
    "bakeoff_balance_concurrency": 4,
    "bakeoff_balance_requests": 10,
}


def podman(name, *argv):
    return subprocess.run(["podman", "exec", name, *argv], capture_output=True, text=True, timeout=120, check=False)


def state(name):
    """What decides the server's behaviour: its plan, its nginx site, its vllm units."""
    units = podman(name, "systemctl", "list-units", "--plain", "--no-legend", "--state=active", "vllm@*").stdout
    return {
        "plan": podman(name, "cat", "/etc/vllm/plan.json").stdout,
        "site": podman(name, "sha256sum", "/etc/nginx/conf.d/gpufleet.conf").stdout.split()[0],
        "units": sorted(line.split()[0] for line in units.splitlines() if line.strip()),
    }


@pytest.fixture(scope="module")
def bakeoff(tmp_path_factory):
    report_dir = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY") or tmp_path_factory.mktemp("bakeoff")) / "bakeoff"
    shutil.rmtree(report_dir, ignore_errors=True)
    before = state(SERVER)
    extra = dict(EXTRA, bakeoff_report_dir=str(report_dir))
    started = time.monotonic()
    # Task timings (ansible.posix.profile_tasks) go to the log with the output.
    run, _recap = run_playbook("playbooks/bakeoff.yml", extra_vars=extra, env={"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks"})
    seconds = time.monotonic() - started
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "playbook.log").write_text(run.stdout + run.stderr)
    print("bake-off playbook: %.0f s (log: %s)" % (seconds, report_dir / "playbook.log"))
    return {"run": run, "dir": report_dir / SERVER, "measured": report_dir / "measured.json", "before": before, "seconds": seconds}


def test_bakeoff_playbook_runs(bakeoff):
    run = bakeoff["run"]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    recap = run.stdout[run.stdout.rindex("PLAY RECAP") :]
    assert OTHER not in recap  # one server was asked for, one was measured


def test_report_has_every_topology_level_and_winner(bakeoff):
    text = (bakeoff["dir"] / "report.md").read_text()
    assert text.startswith("# Bake-off on %s\n" % SERVER)
    for topology in TOPOLOGIES:
        for level in LEVELS:
            row = next((line for line in text.splitlines() if line.startswith("| %s | %d | " % (topology, level))), None)
            assert row, (topology, level, text)
            assert "| 6 / 0 |" in row or "| 8 / 0 |" in row, row  # every request answered (8 = 2 x level 4)
    for objective in ("throughput", "latency", "ttft"):
        assert "* **%s**: `" % objective in text, text
    assert "## least_conn vs round_robin" in text
    assert "least_conn / round_robin: latency p99 ratio " in text
    report = json.loads((bakeoff["dir"] / "report.json").read_text())
    assert report["balance"]["topology"] == "dp"
    assert set(report["balance"]["runs"]) == {"least_conn", "round_robin"}
    assert all(run["failed"] == 0 for run in report["balance"]["runs"].values())
    assert report["balance"]["latency_p99_ratio"] > 0
    assert {t: info["refused"] for t, info in report["topologies"].items()} == dict.fromkeys(TOPOLOGIES, "")
    assert report["settings"]["url"] == "http://127.0.0.1:8000"


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, kinds = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0], kind
        kinds.append((kind, body))
        pos += 12 + length
    assert kinds[0][0] == b"IHDR" and kinds[-1][0] == b"IEND"
    return struct.unpack(">II", kinds[0][1][:8])


def test_plots_are_pngs_with_a_series_per_topology(bakeoff):
    from matplotlib import image  # noqa: PLC0415 - the control node's plotting library

    report = json.loads((bakeoff["dir"] / "report.json").read_text())
    assert [p["file"] for p in report["plots"]] == ["throughput.png", "ttft_p99.png"]
    for plot in report["plots"]:
        path = bakeoff["dir"] / plot["file"]
        assert png_size(path) == (800, 500)
        assert [s["topology"] for s in plot["series"]] == TOPOLOGIES
        rgb = (image.imread(str(path))[:, :, :3].reshape(-1, 3) * 255).round().astype(int)
        seen = {"#%06x" % v for v in set((rgb[:, 0] * 65536 + rgb[:, 1] * 256 + rgb[:, 2]).tolist())}
        for series in plot["series"]:
            assert series["color"] == COLORS[series["topology"]]
            assert [p[0] for p in series["points"]] == LEVELS
            assert all(p[1] > 0 for p in series["points"]), series
            assert series["color"] in seen, (plot["file"], series["topology"])


def test_measurement_file_for_the_planner(bakeoff):
    data = json.loads(bakeoff["measured"].read_text())
    assert data["format"] == "gpufleet.serving/measured" and data["version"] == 1
    (entry,) = data["measurements"]
    assert (entry["host"], entry["model"], entry["max_model_len"]) == (SERVER, "tiny-model", 512)  # the model directory's name
    assert entry["cards"].startswith("2 x NVIDIA H200")
    for objective in ("throughput", "latency", "ttft"):
        ranking = entry["winners"][objective]["ranking"]
        assert sorted(r["topology"] for r in ranking) == TOPOLOGIES
        assert entry["winners"][objective]["winner"] == ranking[0]["topology"]


def test_a_following_plan_reads_the_measurement(bakeoff):
    entry = json.loads(bakeoff["measured"].read_text())["measurements"][0]
    winner = entry["winners"]["throughput"]["winner"]
    run, _recap = run_playbook("playbooks/plan.yml", extra_vars={"plan_measured": str(bakeoff["measured"])})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    words = " ".join(run.stdout.split())
    # Both servers have the same (snapshot) cards and model, so the measurement
    # on t-site-gpu1 applies to t-site-gpu2's kind of server too; t-site-gpu2 forces tp.
    assert "measured: %s won throughput, " % winner in words, words[-3000:]
    assert "bake-off of %s on %s" % (entry["measured_at"][:10], SERVER) in words
    assert "measured: topology tp is set, so the bake-off results in %s are not used." % bakeoff["measured"] in words


def test_server_is_back_as_it_was(bakeoff):
    after = state(SERVER)
    assert after == bakeoff["before"]
    assert after["units"] == ["vllm@0.service", "vllm@1.service"]
    out = podman(
        GW,
        "curl", "-sS", "--max-time", "120", "-o", "/dev/null", "-w", "%{http_code}",
        "-H", "Authorization: Bearer %s" % KEY, "-H", "content-type: application/json",
        "-d", json.dumps({"model": "tiny", "prompt": "back", "max_tokens": 2}),
        "http://127.0.0.1/v1/completions",
    )  # fmt: skip
    assert out.stdout == "200", out.stdout + out.stderr
