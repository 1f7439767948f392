"""Test fleet benchmark (not a test): what piping modules saves on the podman fleet.

Runs one playbook (default site.yml, which on a converged fleet changes
nothing) against a running molecule scenario's hosts, alternately with
containers.podman's connection and with the test fleet's pipelined one
(tests/fleet/connection_plugins/podman_pipelined.py), and prints each run's
wall time and the ratio of the medians, measured in one session:

    .venv/bin/python tests/bench/connection_bench.py --scenario site [--rounds 2] [--playbook site.yml]

The scenario must be converged and left up (molecule converge -s NAME); its
inventory, TLS files and paths are taken from molecule's ephemeral folder.
Every run must change nothing, else the two would not be doing the same work.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONNECTIONS = ("containers.podman.podman", "podman_pipelined")


def ephemeral(scenario):
    found = sorted(glob.glob(os.path.expanduser("~/.ansible/tmp/molecule.*.%s" % scenario)), key=os.path.getmtime)
    if not found:
        sys.exit("no molecule ephemeral folder for scenario %r: converge it first" % scenario)
    return Path(found[-1])


def inventory_with(eph, connection, folder):
    """A copy of molecule's inventory whose hosts use CONNECTION (its group_vars and host_vars linked)."""
    source = eph / "inventory"
    target = Path(folder) / connection
    target.mkdir()
    for name in ("group_vars", "host_vars"):
        if (source / name).exists():
            (target / name).symlink_to((source / name).resolve())
    text = (source / "ansible_inventory.yml").read_text()
    (target / "ansible_inventory.yml").write_text(re.sub(r"(ansible_connection:) \S+", r"\1 " + connection, text))
    return target


def run(playbook, scenario, eph, inventory):
    env = dict(
        os.environ,
        MOLECULE_EPHEMERAL_DIRECTORY=str(eph),
        MOLECULE_PROJECT_DIRECTORY=str(ROOT),
        GPUFLEET_REPO_DIR=str(ROOT),
        ANSIBLE_COLLECTIONS_PATH="%s/collections:%s/.cache/collections" % (ROOT, ROOT),
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_CONNECTION_PLUGINS=str(ROOT / "tests/fleet/connection_plugins"),
        ANSIBLE_CONFIG=str(eph / "ansible.cfg"),
        ANSIBLE_INJECT_FACT_VARS="false",
    )
    args = [str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(inventory), str(ROOT / playbook)]
    started = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=str(ROOT / "molecule" / scenario), check=False)
    seconds = time.monotonic() - started
    changed = [int(n) for n in re.findall(r"changed=(\d+)", out.stdout)]
    if out.returncode != 0 or not changed or any(changed):
        sys.exit("%s with %s: rc=%d, changed=%s\n%s" % (playbook, inventory.name, out.returncode, changed, out.stdout[-3000:]))
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="site")
    parser.add_argument("--playbook", default="site.yml")
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args()
    eph = ephemeral(opts.scenario)
    times = {name: [] for name in CONNECTIONS}
    folder = tempfile.mkdtemp(prefix="connection-bench-")
    inventories = {name: inventory_with(eph, name, folder) for name in CONNECTIONS}
    for round_no in range(opts.rounds):
        for name in CONNECTIONS if round_no % 2 == 0 else reversed(CONNECTIONS):
            seconds = run(opts.playbook, opts.scenario, eph, inventories[name])
            times[name].append(seconds)
            print("round %d  %-26s %7.1f s" % (round_no + 1, name, seconds), flush=True)
    shutil.rmtree(folder)
    plain, piped = (statistics.median(times[name]) for name in CONNECTIONS)
    print("%s, no change, median: %.1f s with %s, %.1f s piped: %.2fx" % (opts.playbook, plain, CONNECTIONS[0], piped, plain / piped))


if __name__ == "__main__":
    main()
