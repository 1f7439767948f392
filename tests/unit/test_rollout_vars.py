"""playbooks/check_rollout_vars.yml, the first play of site.yml and rolling_update.yml: batch sizes
(play keywords) set in the inventory are refused with the command that works, before any host is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAY = ROOT / "playbooks" / "check_rollout_vars.yml"


def run(tmp_path, group_vars=None, host_vars=None, *extra, hosts="        gpu1:\n        gpu2:\n"):
    inventory = tmp_path / "inventory"
    (inventory / "group_vars").mkdir(parents=True, exist_ok=True)
    (inventory / "host_vars").mkdir(exist_ok=True)
    (inventory / "hosts.yml").write_text("all:\n  children:\n    gpu_servers:\n      hosts:\n" + hosts)
    if group_vars:
        (inventory / "group_vars" / "all.yml").write_text(group_vars)
    if host_vars:
        (inventory / "host_vars" / "gpu2.yml").write_text(host_vars)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    env.update(ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_HOME=str(tmp_path / "home"), ANSIBLE_CACHE_PLUGIN="memory")
    # No host is reached: the play's one task is an assert, which runs on the control node.
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(PLAY), "-e", "ansible_connection=local", *extra]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def test_nothing_set_passes(tmp_path):
    rc, out = run(tmp_path)
    assert rc == 0, out


@pytest.mark.parametrize("name, value", [("gpufleet_serial", "20"), ("gpufleet_max_fail_percentage", "10"), ("gpufleet_rolling_serial", "2")])
def test_a_batch_setting_in_group_vars_is_refused_with_the_command_that_works(tmp_path, name, value):
    rc, out = run(tmp_path, "%s: %s\n" % (name, value))
    assert rc != 0, out
    assert "%s is set in the inventory of gpu1, gpu2 (%s)" % (name, value) in out, out
    assert "-e %s=%s" % (name, value) in out, out


def test_a_batch_setting_in_one_hosts_vars_names_that_host(tmp_path):
    rc, out = run(tmp_path, None, 'gpufleet_serial: "25%"\n')
    assert rc != 0, out
    assert "gpufleet_serial is set in the inventory of gpu2 (25%)" in out and "inventory of gpu1" not in out, out


def test_the_command_line_passes_and_wins_over_the_inventory(tmp_path):
    rc, out = run(tmp_path, None, None, "-e", "gpufleet_serial=20", "-e", "gpufleet_max_fail_percentage=10")
    assert rc == 0, out
    # Given on both, the command line's value is the one the plays use (extra vars win): nothing to refuse.
    rc, out = run(tmp_path, "gpufleet_serial: 5\n", None, "-e", "gpufleet_serial=20")
    assert rc == 0, out


def test_a_long_list_of_hosts_is_cut(tmp_path):
    inventory = "".join("        gpu%d:\n" % i for i in range(1, 9))
    rc, out = run(tmp_path, "gpufleet_serial: 20\n", None, hosts=inventory)
    assert rc != 0, out
    assert "the inventory of gpu1, gpu2, gpu3, gpu4, gpu5 and 3 more (20)" in out, out
