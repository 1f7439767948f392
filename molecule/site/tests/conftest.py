"""Helpers the site scenario's tests share: run a playbook of this repository against the scenario's fleet."""

import json
import os
import re
import subprocess
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
    args = ["ansible-playbook", "-i", inventory, *options, str(ROOT / name)]
    if extra_vars:
        args += ["-e", json.dumps(extra_vars)]
    out = subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=timeout, cwd=str(ROOT / "molecule" / "site"))
    recap = {host: int(changed) for host, changed in re.findall(r"^(\S+)\s*: ok=\d+\s+changed=(\d+)", out.stdout, re.M)}
    return out, recap
