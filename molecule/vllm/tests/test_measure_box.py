"""tools/measure_box.py on t-vllm1 with vLLM's CPU build: a box measured without provisioning it.

The tool and the collection's module_utils (nothing else: no Ansible on the
path) are copied to /tmp/measure-box, then run with the vllm role's venv for
topology `dp` on a one-card box (the one-H100 capture): one more instance of
the tiny model on port 8101, beside the units on 8001-8002, which must be left
as they were. Checked: the report and the measurement file, vLLM's KV-cache
figures beside the plan's, the processes all gone afterwards.

One card, not the two-H200 capture's two: with both test fleets up, two more
vLLM instances here took the 2-core machine to 23.5 of its 24 GB (0.6 GB
free, tests/README.md). Several instances, their ports and the load spread
over them are tested against a fake vLLM with real processes
(tests/unit/plugins/module_utils/test_box_measure.py).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

import testinfra

ROOT = Path(__file__).resolve().parents[3]
HOST = "t-vllm1"
DEST = "/tmp/measure-box"
PYTHON = "/opt/vllm/venv/bin/python"
MODULE_UTILS = "collections/ansible_collections/gpufleet/serving/plugins/module_utils"


def copy_tool(name):
    """tools/measure_box.py, plugins/module_utils/*.py and the one-card NVML snapshot, as a tar stream into the container."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(ROOT / "tools" / "measure_box.py"), arcname="tools/measure_box.py")
        for path in sorted((ROOT / "plugins" / "module_utils").glob("*.py")):
            tar.add(str(path), arcname="%s/%s" % (MODULE_UTILS, path.name))
        tar.add(str(ROOT / "tests" / "fixtures" / "nvml" / "h100x1.nvml.json"), arcname="h100x1.nvml.json")
        settings = {
            "plan_device": "cpu",
            "plan_dtype": "float32",
            "plan_max_model_len": 512,
            "plan_served_model_name": "tiny",
            "plan_enforce_eager": True,
            "plan_cpu_kvcache_space_gib": 0.25,
        }
        data = json.dumps(settings).encode()
        info = tarfile.TarInfo("settings.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run(["podman", "exec", name, "rm", "-rf", DEST], check=True, timeout=60)
    subprocess.run(["podman", "exec", name, "mkdir", "-p", DEST], check=True, timeout=60)
    subprocess.run(["podman", "exec", "-i", name, "tar", "-x", "-C", DEST], input=buffer.getvalue(), check=True, timeout=120)


def test_measure_box_runs_dp_as_plain_processes_and_leaves_the_units_alone():
    host = testinfra.get_host("podman://" + HOST)
    plan = json.loads(host.file("/etc/vllm/plan.json").content_string)
    units = {i["name"]: host.run("systemctl show -P MainPID vllm@%s.service", i["name"]).stdout.strip() for i in plan["instances"]}
    copy_tool(HOST)
    began = time.time()
    cmd = (
        "cd %s && timeout 900 %s tools/measure_box.py --model %s --facts h100x1.nvml.json --settings settings.json"
        " --topologies dp --concurrency 1,2 --requests 4 --warmup 2 --prompt-words 16 --output-tokens 8"
        " --base-port 8101 --start-timeout 600 --stop-grace 30 --host t-vllm1 --out %s/out"
    ) % (DEST, PYTHON, plan["launch"]["model_path"], DEST)
    out = host.run(cmd)
    elapsed = round(time.time() - began)
    # The time this adds to the scenario (tests/README.md quotes it).
    (ROOT / ".cache" / "reports").mkdir(parents=True, exist_ok=True)
    (ROOT / ".cache" / "reports" / "vllm-measure-box.json").write_text(json.dumps({"seconds": elapsed, "rc": out.rc}) + "\n")
    assert out.rc == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["failed"] == [] and summary["winners"]["throughput"] == "dp"

    report = host.file(DEST + "/out/report.md").content_string
    assert "| dp | 1 | 4 / 0 |" in report and "| dp | 2 | 4 / 0 |" in report, report
    assert "Start-up and KV cache" in report
    measured = json.loads(host.file(DEST + "/out/measured.json").content_string)
    entry = measured["measurements"][0]
    assert measured["format"] == "gpufleet.serving/measured"
    assert entry["host"] == "t-vllm1" and entry["model"] == "tiny" and entry["max_model_len"] == 512
    assert [(r["topology"], r["concurrency"], r["failed"]) for r in entry["results"]] == [("dp", 1, 0), ("dp", 2, 0)]
    assert all(r["output_tokens_per_s"] > 0 and r["tpot_p50"] > 0 for r in entry["results"])

    box = json.loads(host.file(DEST + "/out/box.json").content_string)
    dp = box["measured"][0]
    assert [i["port"] for i in dp["instances"]] == [8101]
    assert dp["ready_s"] > 0
    # vLLM's own KV-cache report, read from each instance's log, within 5% of the plan (as for the units).
    for entry in dp["kv"]["instances"]:
        assert entry["source"] == "log" and abs(entry["ratio"] - 1) <= 0.05, entry
    # Stopped as a group (SIGTERM, SIGKILL after the grace period), nothing of it left.
    assert all("remain" not in i["stopped"] for i in dp["instances"]), dp["instances"]
    assert "KV cache size" in host.file("%s/out/dp/0.log" % DEST).content_string

    # Nothing of the measured instances is left; the units run as before.
    left = host.run("ps -eo pid=,args= | grep -e '--port 810[12]' | grep -v grep").stdout.strip()
    assert left == "", left
    assert not host.socket("tcp://127.0.0.1:8101").is_listening
    for name, pid in units.items():
        assert host.run("systemctl show -P MainPID vllm@%s.service", name).stdout.strip() == pid
        assert host.service("vllm@%s" % name).is_running
    host.run("rm -rf %s", DEST)
