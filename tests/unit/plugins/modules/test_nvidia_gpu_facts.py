# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import nvml_facts
from ansible_collections.gpufleet.serving.plugins.modules import nvidia_gpu_facts
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import patch_module_args, run_as_module

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "nvml"
_spec = importlib.util.spec_from_file_location("fake_nvml", FIXTURES / "fake_nvml.py")
fake_nvml = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_nvml)


def warning_texts(result):
    """Warning messages of a result (ansible-core 2.19 returns them as WarningSummary dicts)."""
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """AnsibleModule keeps warnings in a module-level dict: start each test with none.

    A module runs target-side: any controller code imported in this process (a filter plugin,
    ansible.template in the role tests) sets is_controller, which sends warn() to the
    controller's display instead of the result.
    """
    run_as_module(monkeypatch)


def run_module(capsys, args, check_mode=False):
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        nvidia_gpu_facts.main()
    result = json.loads(capsys.readouterr().out)
    result["rc"] = exited.value.code
    return result


@pytest.fixture
def live(monkeypatch):
    """Make the module's live path read a FakeNvml replaying the h200x2 capture."""

    def use(capture="h200x2-nvlink.nvml.json", **kwargs):
        raw = json.loads((FIXTURES / capture).read_text())
        monkeypatch.setattr(nvml_facts, "HAS_PYNVML", True)
        monkeypatch.setattr(nvml_facts, "pynvml", fake_nvml.FakeNvml(raw, **kwargs))

    return use


def test_snapshot_h200x2(capsys):
    result = run_module(capsys, {"snapshot": str(FIXTURES / "h200x2-nvlink.nvml.json")})
    facts = result["ansible_facts"]["nvidia_gpus"]
    assert result["rc"] == 0
    assert result["changed"] is False
    assert (facts["available"], facts["source"], facts["count"]) == (True, "snapshot", 2)
    assert [gpu["memory_total_bytes"] // 2**20 for gpu in facts["gpus"]] == [143771, 143771]
    assert [gpu["compute_capability"] for gpu in facts["gpus"]] == ["9.0", "9.0"]
    assert [pair["interconnect"] for pair in facts["pairs"]] == ["nvlink", "nvlink"]


def test_snapshot_h100x1(capsys):
    facts = run_module(capsys, {"snapshot": str(FIXTURES / "h100x1.nvml.json")})["ansible_facts"]["nvidia_gpus"]
    assert (facts["count"], len(facts["gpus"]), facts["pairs"]) == (1, 1, [])


def test_no_library_succeeds_with_a_reason(capsys, monkeypatch):
    monkeypatch.setattr(nvml_facts, "HAS_PYNVML", False)
    result = run_module(capsys, {})
    facts = result["ansible_facts"]["nvidia_gpus"]
    assert result["rc"] == 0
    assert result.get("failed") is not True
    assert facts["available"] is False
    assert facts["reason"] == nvml_facts.REASON_NO_LIBRARY


def test_no_library_required_fails_naming_the_package(capsys, monkeypatch):
    monkeypatch.setattr(nvml_facts, "HAS_PYNVML", False)
    result = run_module(capsys, {"required": True})
    assert result["failed"] is True
    assert "nvidia-ml-py" in result["msg"]
    assert result["ansible_facts"]["nvidia_gpus"]["available"] is False


@pytest.mark.parametrize("required", [False, True])
def test_no_driver(capsys, live, required):
    live(init_error="NVMLError_DriverNotLoaded")
    result = run_module(capsys, {"required": required})
    assert result["ansible_facts"]["nvidia_gpus"]["reason"].startswith("no NVIDIA driver:")
    assert result.get("failed", False) is required
    if required:
        assert result["msg"].startswith("required=true and no NVIDIA GPU can be used: no NVIDIA driver:")


def test_required_with_cards_succeeds(capsys, live):
    live()
    result = run_module(capsys, {"required": True})
    assert result["rc"] == 0
    assert result["ansible_facts"]["nvidia_gpus"]["source"] == "nvml"


def test_save_snapshot(capsys, live, tmp_path):
    live()
    path = tmp_path / "saved.json"
    first = run_module(capsys, {"save_snapshot": str(path)})
    assert first["changed"] is True
    facts = nvml_facts.nvidia_gpu_facts(snapshot=str(path)).facts
    assert dict(facts, source="nvml") == first["ansible_facts"]["nvidia_gpus"]
    second = run_module(capsys, {"save_snapshot": str(path)})
    assert second["changed"] is False


def test_save_snapshot_check_mode_writes_nothing(capsys, live, tmp_path):
    live()
    path = tmp_path / "saved.json"
    result = run_module(capsys, {"save_snapshot": str(path)}, check_mode=True)
    assert result["changed"] is True
    assert not path.exists()


def test_save_snapshot_without_nvml_warns(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(nvml_facts, "HAS_PYNVML", False)
    path = tmp_path / "saved.json"
    result = run_module(capsys, {"save_snapshot": str(path)})
    assert result["changed"] is False
    assert not path.exists()
    assert any("save_snapshot: nothing written" in w for w in warning_texts(result))


def test_save_snapshot_into_a_missing_directory_fails(capsys, live, tmp_path):
    live()
    result = run_module(capsys, {"save_snapshot": str(tmp_path / "nowhere" / "saved.json")})
    assert result["failed"] is True
    assert result["msg"].startswith("save_snapshot: cannot write into")


def test_refused_readings_become_warnings(capsys, live, tmp_path):
    raw = json.loads((FIXTURES / "h100x1.nvml.json").read_text())
    raw["devices"][0]["processes"] = {"error": "NVMLError_NoPermission", "msg": "Insufficient Permissions"}
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(raw))
    result = run_module(capsys, {"snapshot": str(path)})
    assert warning_texts(result) == ["NVML refused a reading: devices[0].processes: Insufficient Permissions (NVMLError_NoPermission)"]


def test_bad_snapshot_fails_naming_the_parameter(capsys, tmp_path):
    result = run_module(capsys, {"snapshot": str(tmp_path / "missing.json")})
    assert result["failed"] is True
    assert result["msg"].startswith("snapshot: cannot read")


def test_snapshot_and_save_snapshot_are_exclusive(capsys, tmp_path):
    result = run_module(capsys, {"snapshot": str(FIXTURES / "h100x1.nvml.json"), "save_snapshot": str(tmp_path / "x.json")})
    assert result["failed"] is True
    assert "mutually exclusive" in result["msg"]
