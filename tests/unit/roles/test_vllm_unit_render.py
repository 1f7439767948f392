"""The vllm role's unit template on the cards: device allow-list and the device unit it requires.

The template and the nvidia role's device unit are rendered with Ansible's
Templar from the roles' own defaults and vars, for a plan of the two-H200
capture, and then checked by ``systemd-analyze verify`` side by side, as the
vllm role's unit checker does on a host (none of the GPU machines lent to
this project runs systemd, so this is where the unit ordering is checked).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.gpufleet.serving.plugins.module_utils import nvml_facts, vllm_planner
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import load_trusted, trust_as_template

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
LOADER = DataLoader()
DEVICES_UNIT = "gpufleet-nvidia-devices.service"


def load(rel):
    return load_trusted(LOADER, str(ROOT / rel))


def h200x2_plan(device="cuda", **launch):
    gpus = nvml_facts.facts_from_raw(json.loads((FIXTURES / "nvml" / "h200x2-nvlink.nvml.json").read_text()), "snapshot")
    cpu = {"dtype": "float32", "max_model_len": 512} if device == "cpu" else {}
    return vllm_planner.plan(gpus=gpus, model=str(FIXTURES / "models" / "Llama-3.1-8B"), topology="tp", device=device, launch=launch, **cpu)


def render_vllm_unit(plan, cards=2):
    variables = dict(load("roles/vllm/defaults/main.yml"))
    variables.update(vllm_plan=plan, ansible_managed="Ansible managed")
    variables.update(load("roles/vllm/vars/main.yml"))
    # As the role's template task computes it from NVML's card count.
    variables["_vllm_card_devices"] = ["/dev/nvidia%d" % card for card in range(cards)]
    text = (ROOT / "roles" / "vllm" / "templates" / "vllm@.service.j2").read_text()
    return Templar(loader=LOADER, variables=variables).template(trust_as_template(text), overrides={"trim_blocks": True, "lstrip_blocks": True})


def render_devices_unit(cards=2, modprobe="/usr/bin/nvidia-modprobe"):
    variables = dict(load("roles/nvidia/defaults/main.yml"))
    variables.update(load("roles/nvidia/vars/main.yml"))
    variables.update(ansible_managed="Ansible managed", _nvidia_device_cards=cards, _nvidia_modprobe_path=modprobe)
    text = (ROOT / "roles" / "nvidia" / "templates" / "gpufleet-nvidia-devices.service.j2").read_text()
    return Templar(loader=LOADER, variables=variables).template(trust_as_template(text))


def section(text, name):
    """The key=value lines of one [section] of a unit file, comments left out."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("["):
            inside = line == "[%s]" % name
        elif inside and line and not line.startswith("#"):
            lines.append(tuple(line.split("=", 1)))
    return lines


def values(text, name, key):
    return [value for k, value in section(text, name) if k == key]


def test_gpu_instances_require_the_device_unit():
    unit = render_vllm_unit(h200x2_plan())
    assert values(unit, "Unit", "Requires") == [DEVICES_UNIT]
    assert DEVICES_UNIT in values(unit, "Unit", "After")
    # The vllm role names the unit the nvidia role installs.
    nvidia_vars = load("roles/nvidia/vars/main.yml")
    assert nvidia_vars["_nvidia_devices_unit"] == DEVICES_UNIT
    assert nvidia_vars["_nvidia_devices_unit_path"] == "/etc/systemd/system/" + DEVICES_UNIT


def test_device_allow_list_is_what_cuda_opens():
    unit = render_vllm_unit(h200x2_plan(), cards=2)
    assert values(unit, "Service", "DevicePolicy") == ["closed"]
    assert values(unit, "Service", "DeviceAllow") == [
        "/dev/nvidiactl rw",
        "/dev/nvidia-uvm rw",
        "/dev/nvidia-uvm-tools rw",
        "/dev/nvidia0 rw",
        "/dev/nvidia1 rw",
    ]
    assert values(unit, "Service", "PrivateDevices") == []


def test_multicast_allows_the_imex_channels_by_class():
    unit = render_vllm_unit(h200x2_plan(allreduce_multicast=True), cards=2)
    allowed = values(unit, "Service", "DeviceAllow")
    # A device class from /proc/devices: it needs no node when the unit starts.
    assert allowed == [
        "/dev/nvidiactl rw",
        "/dev/nvidia-uvm rw",
        "/dev/nvidia-uvm-tools rw",
        "char-nvidia-caps-imex-channels rw",
        "/dev/nvidia0 rw",
        "/dev/nvidia1 rw",
    ]


def test_the_cpu_build_needs_no_nvidia_unit():
    unit = render_vllm_unit(h200x2_plan(device="cpu"))
    assert values(unit, "Unit", "Requires") == []
    assert DEVICES_UNIT not in " ".join(values(unit, "Unit", "After"))
    assert values(unit, "Service", "PrivateDevices") == ["yes"]
    assert values(unit, "Service", "DeviceAllow") == []


@pytest.mark.parametrize(("cards", "nodes"), [(0, "-c=255"), (2, "-c=255 -c=0 -c=1"), (8, "-c=255 " + " ".join("-c=%d" % c for c in range(8)))])
def test_device_unit_makes_the_nodes(cards, nodes):
    unit = render_devices_unit(cards)
    assert values(unit, "Unit", "ConditionPathExists") == ["/etc/modules-load.d/gpufleet-nvidia.conf"]
    assert values(unit, "Unit", "After") == ["systemd-modules-load.service"]
    assert values(unit, "Service", "Type") == ["oneshot"]
    assert values(unit, "Service", "RemainAfterExit") == ["yes"]
    assert values(unit, "Service", "ExecStart") == ["/usr/bin/nvidia-modprobe " + nodes, "/usr/bin/nvidia-modprobe -u -c=0"]
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]
    assert not re.search(r"\{\{|\{%", unit)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("multicast", [False, True])
def test_systemd_analyze_verifies_both_units_together(tmp_path, multicast):
    """The vLLM instance with its required device unit beside it, as systemd would load them."""
    # nvidia-modprobe is not installed here: verify checks that ExecStart= names an executable.
    (tmp_path / DEVICES_UNIT).write_text(render_devices_unit(2, modprobe=shutil.which("true")))
    (tmp_path / "vllm@.service").write_text(render_vllm_unit(h200x2_plan(allreduce_multicast=multicast)))
    dropin = tmp_path / "vllm@tp0.service.d"
    dropin.mkdir()
    (dropin / "gpufleet-launch.conf").write_text("[Service]\nExecStart=\nExecStart=%s\n" % shutil.which("true"))
    for unit in (DEVICES_UNIT, "vllm@tp0.service"):
        env = {"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"}
        out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True, check=False, cwd=tmp_path, env=env)
        assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    # Without the nvidia role's unit the vLLM unit does not pass the check the vllm role runs before installing it.
    (tmp_path / DEVICES_UNIT).unlink()
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "vllm@tp0.service")], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert out.returncode != 0
    assert "Unit %s not found" % DEVICES_UNIT in out.stderr
