# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import copy
import importlib.util
import json
from collections import namedtuple
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import nvml_facts

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "nvml"
_spec = importlib.util.spec_from_file_location("fake_nvml", FIXTURES / "fake_nvml.py")
fake_nvml = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_nvml)
FakeNvml = fake_nvml.FakeNvml

MIB = 2**20
NOT_SUPPORTED = {"error": "NVMLError_NotSupported", "msg": "Not Supported"}
# capture keys that are provenance, not NVML readings
PROVENANCE = ("nvidia_smi_topo", "nvidia_smi_L", "nvidia_smi_err", "pynvml_module", "captured_by")
CAPTURES = ["h200x2-nvlink.nvml.json", "h100x1.nvml.json", "h200x2-device.nvml.json", "h200x2-device.snapshot.json", "h200x2-device-busy.snapshot.json"]


def load(name):
    return json.loads((FIXTURES / name).read_text())


def readings(raw):
    return {k: v for k, v in raw.items() if k not in PROVENANCE}


Live = namedtuple("Live", ["facts", "raw", "warnings", "nvml"])


def live_facts(capture, **kwargs):
    """Facts through the live path: a FakeNvml replaying the capture, so collect_raw runs too."""
    nvml = FakeNvml(capture, **kwargs)
    return Live(*nvml_facts.nvidia_gpu_facts(nvml=nvml), nvml=nvml)


# --- collecting ---------------------------------------------------------------


@pytest.mark.parametrize("name", CAPTURES)
def test_collect_raw_reproduces_the_capture(name):
    capture = load(name)
    facts, raw, warnings, nvml = live_facts(capture)
    assert readings(raw) == readings(capture)
    assert raw["captured_by"] == nvml_facts.CAPTURED_BY
    assert nvml.initialised == nvml.shutdowns == 1
    assert warnings == []
    # and the facts of the live path are the facts of the file
    assert facts == dict(nvml_facts.facts_from_raw(capture, "nvml"))


def test_p2p_read_is_asked_with_integer_0_not_the_binding_tuple():
    capture = load("h200x2-nvlink.nvml.json")
    nvml = FakeNvml(capture)
    nvml.nvmlInit()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2)]
    with pytest.raises(TypeError):  # what passing the constant as is would do
        nvml.nvmlDeviceGetP2PStatus(handles[0], handles[1], nvml.NVML_P2P_CAPS_INDEX_READ)
    nvml.p2p_indices.clear()
    raw = nvml_facts.collect_raw(nvml)
    assert raw["p2p"]["0-1"] == {"read": 0, "write": 0, "nvlink": 0, "atomics": 0, "prop": 5}
    assert raw["p2p_caps_constants"]["read"] == "(0,)"
    assert sorted(set(nvml.p2p_indices)) == [0, 1, 2, 3, 4]
    assert all(isinstance(i, int) and not isinstance(i, bool) for i in nvml.p2p_indices)


@pytest.mark.parametrize(
    ("constant", "expected"),
    [((0,), 0), (0, 0), (3, 3), ([2], 2), (None, 7), ((0, 1), 7), (True, 7), ("0", 7)],
)
def test_p2p_cap_index(constant, expected):
    class Binding:
        NVML_P2P_CAPS_INDEX_READ = constant

    assert nvml_facts.p2p_cap_index(Binding, "read", 7) == expected


def test_p2p_cap_index_missing_constant_uses_default():
    assert nvml_facts.p2p_cap_index(object(), "atomics", 3) == 3


def test_collect_raw_records_errors_instead_of_raising():
    capture = load("h200x2-nvlink.nvml.json")
    capture["devices"][1]["mig_mode"] = NOT_SUPPORTED
    capture["devices"][0]["processes"] = {"error": "NVMLError_NoPermission", "msg": "Insufficient Permissions"}
    capture["topology"]["1-0"] = {"error": "NVMLError_Unknown", "msg": "Unknown Error"}
    live = live_facts(capture)
    raw, warnings = live.raw, live.warnings
    assert raw["devices"][1]["mig_mode"] == NOT_SUPPORTED
    assert raw["devices"][0]["processes"] == {"error": "NVMLError_NoPermission", "msg": "Insufficient Permissions"}
    assert warnings == [
        "devices[0].processes: Insufficient Permissions (NVMLError_NoPermission)",
        "topology.1-0: Unknown Error (NVMLError_Unknown)",
    ]


def test_collect_raw_marks_a_missing_binding_function():
    capture = load("h100x1.nvml.json")
    nvml = FakeNvml(capture)
    nvml.nvmlDeviceGetMigMode = None  # an old binding without it
    nvml.nvmlInit()
    raw = nvml_facts.collect_raw(nvml)
    assert raw["devices"][0]["mig_mode"]["error"] == "NVMLError_FunctionNotFound"
    assert nvml_facts.facts_from_raw(raw)["gpus"][0]["mig_mode"] is None


# --- facts of the real captures -------------------------------------------------


def h200_gpu(index, uuid, bus):
    return {
        "index": index,
        "uuid": uuid,
        "pci_bus_id": bus,
        "name": "NVIDIA H200",
        "memory_total_bytes": 150754820096,
        "memory_free_bytes": 150109880320,
        "compute_capability": "9.0",
        "architecture": "hopper",
        "pcie": {"gen_current": 5, "gen_max": 5, "width_current": 16, "width_max": 16},
        "nvlink": {"active_links": 18, "version": 4},
        "mig_mode": {"current": False, "pending": False},
        "persistence_mode": True,
        "ecc_enabled": True,
        "power_limit_watts": 700.0,
        "processes": [],
    }


def nvlink_pair(i, j):
    return {
        "from": i,
        "to": j,
        "p2p": {"read": "ok", "write": "ok", "nvlink": "ok", "atomics": "ok"},
        "common_ancestor": "hostbridge",
        "interconnect": "nvlink",
    }


def test_h200x2_facts_every_field():
    facts = live_facts(load("h200x2-nvlink.nvml.json")).facts
    assert facts == {
        "available": True,
        "reason": None,
        "source": "nvml",
        "driver_version": "580.159.04",
        "cuda_driver_version": "13.0",
        "nvml_version": "13.580.159.04",
        "count": 2,
        "gpus": [
            h200_gpu(0, "GPU-39b080e3-7bed-6984-1add-82e907c1890b", "00000000:00:06.0"),
            h200_gpu(1, "GPU-d04b4470-b0ea-742b-ed2d-9adb65694c47", "00000000:00:07.0"),
        ],
        "pairs": [nvlink_pair(0, 1), nvlink_pair(1, 0)],
    }
    assert [gpu["memory_total_bytes"] // MIB for gpu in facts["gpus"]] == [143771, 143771]


def test_h100x1_facts_every_field():
    facts = live_facts(load("h100x1.nvml.json")).facts
    assert facts == {
        "available": True,
        "reason": None,
        "source": "nvml",
        "driver_version": "580.159.04",
        "cuda_driver_version": "13.0",
        "nvml_version": "13.580.159.04",
        "count": 1,
        "gpus": [
            {
                "index": 0,
                "uuid": "GPU-c56be3ba-3231-c5e2-d044-acf795849d8f",
                "pci_bus_id": "00000000:00:06.0",
                "name": "NVIDIA H100 80GB HBM3",
                "memory_total_bytes": 85520809984,
                "memory_free_bytes": 85017493504,
                "compute_capability": "9.0",
                "architecture": "hopper",
                "pcie": {"gen_current": 5, "gen_max": 5, "width_current": 16, "width_max": 16},
                "nvlink": {"active_links": 0, "version": None},
                "mig_mode": {"current": False, "pending": False},
                "persistence_mode": True,
                "ecc_enabled": True,
                "power_limit_watts": 700.0,
                "processes": [],
            }
        ],
        "pairs": [],
    }
    assert facts["gpus"][0]["memory_total_bytes"] // MIB == 81559


@pytest.mark.parametrize("name", ["h200x2-device", "h200x2-device-busy"])
def test_device_snapshot_gives_the_facts_saved_on_the_device(name):
    """The module_utils ran on a lent 2x H200 machine; what it saved must give what it reported."""
    saved = load(name + ".facts.json")
    facts, raw, warnings = nvml_facts.nvidia_gpu_facts(snapshot=str(FIXTURES / (name + ".snapshot.json")))
    assert facts["source"] == "snapshot"
    assert dict(facts, source="nvml") == saved
    assert warnings == []
    assert raw["nvidia_smi_topo"].count("NV18") == 2


def test_device_busy_snapshot_lists_the_process():
    facts = load("h200x2-device-busy.facts.json")
    gpu0, gpu1 = facts["gpus"]
    assert gpu0["processes"] == [{"pid": 572, "used_bytes": 1616904192}]
    assert gpu1["processes"] == []
    # the process's 1 GiB tensor plus its CUDA context shows in the free memory of card 0 only
    assert gpu0["memory_free_bytes"] < gpu1["memory_free_bytes"] - 1024 * MIB


def test_device_capture_made_by_both_scripts_gives_the_same_facts():
    ours = nvml_facts.facts_from_raw(load("h200x2-device.snapshot.json"))
    reference = nvml_facts.facts_from_raw(load("h200x2-device.nvml.json"))
    assert ours == reference


# --- hosts without GPUs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "start"),
    [
        ("NVMLError_LibraryNotFound", "no NVIDIA driver: the NVML library (libnvidia-ml.so.1) was not found"),
        ("NVMLError_DriverNotLoaded", "no NVIDIA driver: the NVIDIA kernel module is not loaded"),
        ("NVMLError_LibRmVersionMismatch", "NVIDIA driver mismatch"),
        ("NVMLError_NoPermission", "NVML could not start: NoPermission (NVMLError_NoPermission)"),
    ],
)
def test_no_driver(error, start):
    facts, raw, warnings, nvml = live_facts(load("h100x1.nvml.json"), init_error=error)
    assert raw is None
    assert warnings == []
    assert facts["reason"].startswith(start)
    assert facts == nvml_facts.unavailable_facts(facts["reason"])
    assert facts["available"] is False
    assert facts["count"] == 0
    assert facts["gpus"] == facts["pairs"] == []
    assert nvml.shutdowns == 0


def test_no_library(monkeypatch):
    monkeypatch.setattr(nvml_facts, "HAS_PYNVML", False)
    monkeypatch.setattr(nvml_facts, "pynvml", None)
    facts, raw = nvml_facts.nvidia_gpu_facts()[:2]
    assert raw is None
    assert facts["available"] is False
    assert facts["reason"].startswith("nvidia-ml-py (pynvml) is not installed")
    assert facts["source"] == "nvml"


def test_installed_pynvml_is_used_when_no_nvml_is_given(monkeypatch):
    capture = load("h100x1.nvml.json")
    monkeypatch.setattr(nvml_facts, "HAS_PYNVML", True)
    monkeypatch.setattr(nvml_facts, "pynvml", FakeNvml(capture))
    facts = nvml_facts.nvidia_gpu_facts().facts
    assert facts["count"] == 1


def test_no_cards_live():
    capture = dict(load("h100x1.nvml.json"), devices=[], device_count=0, p2p={}, topology={})
    live = live_facts(capture)
    facts, raw, nvml = live.facts, live.raw, live.nvml
    assert raw["device_count"] == 0
    assert facts["available"] is False
    assert facts["reason"] == "NVML found no NVIDIA cards"
    assert facts["driver_version"] == "580.159.04"
    assert nvml.shutdowns == 1


def test_no_cards_snapshot(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(nvml_facts.dump_snapshot({"device_count": 0, "devices": [], "p2p": {}, "topology": {}}))
    facts = nvml_facts.nvidia_gpu_facts(snapshot=str(path)).facts
    assert (facts["available"], facts["reason"], facts["source"]) == (False, "NVML found no NVIDIA cards", "snapshot")


def test_count_failure_is_a_reason_and_nvml_is_shut_down():
    live = live_facts(load("h100x1.nvml.json"), count_error="NVMLError_GpuIsLost")
    facts, raw, nvml = live.facts, live.raw, live.nvml
    assert raw is None
    assert facts["reason"] == "NVML could not list the cards: NVMLError_GpuIsLost (NVMLError_GpuIsLost)"
    assert nvml.shutdowns == 1


# --- NotSupported and friends -------------------------------------------------------


def test_not_supported_fields_are_null_without_warnings():
    capture = load("h100x1.nvml.json")
    device = capture["devices"][0]
    for key in ("memory", "pci", "pcie_gen_cur", "pcie_gen_max", "pcie_width_cur", "pcie_width_max", "compute_capability", "architecture"):
        device[key] = NOT_SUPPORTED
    for key in ("mig_mode", "persistence_mode", "ecc_mode", "power_limit_mw", "processes", "uuid", "name"):
        device[key] = NOT_SUPPORTED
    live = live_facts(capture)
    facts, warnings = live.facts, live.warnings
    gpu = facts["gpus"][0]
    assert warnings == []
    assert gpu == {
        "index": 0,
        "uuid": None,
        "pci_bus_id": None,
        "name": None,
        "memory_total_bytes": None,
        "memory_free_bytes": None,
        "compute_capability": None,
        "architecture": None,
        "pcie": {"gen_current": None, "gen_max": None, "width_current": None, "width_max": None},
        "nvlink": {"active_links": 0, "version": None},
        "mig_mode": None,
        "persistence_mode": None,
        "ecc_enabled": None,
        "power_limit_watts": None,
        "processes": [],
    }


def test_geforce_like_card_without_ecc_mig_or_p2p():
    capture = load("h200x2-nvlink.nvml.json")
    for device in capture["devices"]:
        device["mig_mode"] = NOT_SUPPORTED
        device["ecc_mode"] = NOT_SUPPORTED
        device["nvlink"] = [{"link": n, "state": NOT_SUPPORTED} for n in range(4)]
        device["architecture"] = 10
        device["compute_capability"] = [12, 0]
    for key in capture["p2p"]:
        capture["p2p"][key] = {"read": 1, "write": 1, "nvlink": NOT_SUPPORTED, "atomics": 1, "prop": 1}
        capture["topology"][key] = 50
    facts = live_facts(capture).facts
    gpu = facts["gpus"][0]
    assert (gpu["mig_mode"], gpu["ecc_enabled"], gpu["nvlink"], gpu["architecture"]) == (None, None, {"active_links": 0, "version": None}, "blackwell")
    assert facts["pairs"][0] == {
        "from": 0,
        "to": 1,
        "p2p": {"read": "chipset_not_supported", "write": "chipset_not_supported", "nvlink": "not_supported", "atomics": "chipset_not_supported"},
        "common_ancestor": "system",
        "interconnect": "pcie_no_p2p",
    }


# --- conversions, table-driven ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "ok"),
        (1, "chipset_not_supported"),
        (2, "gpu_not_supported"),
        (3, "topology_not_supported"),
        (4, "disabled_by_regkey"),
        (5, "not_supported"),
        (6, "unknown"),
        (99, "unknown"),
        (None, "unknown"),
        (NOT_SUPPORTED, "not_supported"),
        ({"error": "TypeError", "msg": "wrong type"}, "unknown"),
    ],
)
def test_p2p_status_name(value, expected):
    assert nvml_facts.p2p_status_name(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "internal"), (10, "single"), (20, "multiple"), (30, "hostbridge"), (40, "node"), (50, "system"), (60, None), (NOT_SUPPORTED, None)],
)
def test_common_ancestor(value, expected):
    raw = load("h200x2-nvlink.nvml.json")
    raw["topology"]["0-1"] = value
    assert nvml_facts.facts_from_raw(raw)["pairs"][0]["common_ancestor"] == expected


def _gpu(links):
    return {"nvlink": {"active_links": links, "version": 4 if links else None}}


@pytest.mark.parametrize(
    ("links", "read", "write", "nvlink", "expected"),
    [
        ((18, 18), "ok", "ok", "ok", "nvlink"),
        ((18, 18), "not_supported", "not_supported", "ok", "nvlink"),
        ((18, 0), "ok", "ok", "ok", "pcie_p2p"),  # links up on one side only
        ((4, 4), "ok", "ok", "not_supported", "pcie_p2p"),  # links up, but not between these two
        ((0, 0), "ok", "ok", "not_supported", "pcie_p2p"),
        ((0, 0), "ok", "chipset_not_supported", "not_supported", "pcie_no_p2p"),
        ((0, 0), "disabled_by_regkey", "disabled_by_regkey", "not_supported", "pcie_no_p2p"),
        ((0, 0), "unknown", "unknown", "unknown", "pcie_no_p2p"),
    ],
)
def test_interconnect(links, read, write, nvlink, expected):
    p2p = {"read": read, "write": write, "nvlink": nvlink, "atomics": "ok"}
    assert nvml_facts.interconnect(_gpu(links[0]), _gpu(links[1]), p2p) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(13000, "13.0"), (12040, "12.4"), (12080, "12.8"), (11080, "11.8"), (12090, "12.9"), (0, None), (None, None), (NOT_SUPPORTED, None), ("13000", None)],
)
def test_cuda_version_string(value, expected):
    assert nvml_facts.cuda_version_string(value) == expected


@pytest.mark.parametrize(
    ("value", "capability", "expected"),
    [
        (9, "9.0", "hopper"),
        (7, "8.6", "ampere"),
        (8, "8.9", "ada"),
        (10, "12.0", "blackwell"),
        (6, "7.5", "turing"),
        (5, "7.0", "volta"),
        (4, "6.1", "pascal"),
        (0xFFFFFFFF, "8.9", "ada"),  # NVML_DEVICE_ARCH_UNKNOWN: from the capability
        (NOT_SUPPORTED, "8.0", "ampere"),
        (NOT_SUPPORTED, "7.5", "turing"),
        (NOT_SUPPORTED, "10.0", "blackwell"),
        (11, "99.0", None),
        (NOT_SUPPORTED, None, None),
    ],
)
def test_architecture_name(value, capability, expected):
    assert nvml_facts.architecture_name(value, capability) == expected


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        ([{"link": 0, "state": 1, "version": 6}, {"link": 1, "state": 0, "version": 6}], {"active_links": 1, "version": 4}),
        ([{"link": 0, "state": 1, "version": 4}, {"link": 1, "state": 1, "version": 4}], {"active_links": 2, "version": 3}),
        ([{"link": 0, "state": 1, "version": 7}], {"active_links": 1, "version": 5}),
        ([{"link": 0, "state": 1, "version": 42}], {"active_links": 1, "version": None}),
        ([{"link": 0, "state": 1, "version": NOT_SUPPORTED}], {"active_links": 1, "version": None}),
        ([{"link": 0, "state": NOT_SUPPORTED}], {"active_links": 0, "version": None}),
        ([{"link": 0, "state": {"error": "NVMLError_InvalidArgument", "msg": "Invalid Argument"}}], {"active_links": 0, "version": None}),
        ([], {"active_links": 0, "version": None}),
        (None, {"active_links": 0, "version": None}),
    ],
)
def test_nvlink(links, expected):
    raw = load("h100x1.nvml.json")
    raw["devices"][0]["nvlink"] = links
    assert nvml_facts.facts_from_raw(raw)["gpus"][0]["nvlink"] == expected


@pytest.mark.parametrize(
    ("processes", "expected"),
    [
        ([{"pid": 10, "usedGpuMemory": 2048, "gpuInstanceId": 4294967295, "computeInstanceId": 4294967295}], [{"pid": 10, "used_bytes": 2048}]),
        ([{"pid": 11, "usedGpuMemory": None}], [{"pid": 11, "used_bytes": None}]),
        # what capture_nvml.py writes for pynvml's friendly objects
        (["{'pid': 12, 'usedGpuMemory': 4096, 'gpuInstanceId': 0, 'computeInstanceId': 0}"], [{"pid": 12, "used_bytes": 4096}]),
        (["<not a process>", {"usedGpuMemory": 1}], []),
        ({"error": "NVMLError_NoPermission", "msg": "Insufficient Permissions"}, []),
    ],
)
def test_processes(processes, expected):
    raw = load("h100x1.nvml.json")
    raw["devices"][0]["processes"] = processes
    assert nvml_facts.facts_from_raw(raw)["gpus"][0]["processes"] == expected


def test_processes_from_friendly_objects_are_collected_as_dicts():
    capture = load("h100x1.nvml.json")
    capture["devices"][0]["processes"] = [{"pid": 7, "usedGpuMemory": 123, "gpuInstanceId": 0, "computeInstanceId": 0}]
    facts, raw = live_facts(capture)[:2]
    assert raw["devices"][0]["processes"] == capture["devices"][0]["processes"]
    assert facts["gpus"][0]["processes"] == [{"pid": 7, "used_bytes": 123}]


@pytest.mark.parametrize(
    ("modes", "expected"),
    [
        (([1, 1], [0, 1], 0), ({"current": True, "pending": True}, False, False)),
        (([0, 1], [1, 0], 1), ({"current": False, "pending": True}, True, True)),
        (([0], [1], 2), (None, None, False)),
    ],
)
def test_modes(modes, expected):
    raw = load("h100x1.nvml.json")
    mig, ecc, persistence = modes
    raw["devices"][0].update(mig_mode=mig, ecc_mode=ecc, persistence_mode=persistence, power_limit_mw=450500)
    gpu = nvml_facts.facts_from_raw(raw)["gpus"][0]
    assert (gpu["mig_mode"], gpu["ecc_enabled"], gpu["persistence_mode"]) == expected
    assert gpu["power_limit_watts"] == 450.5


def test_gpus_and_pairs_follow_the_nvml_index():
    raw = load("h200x2-nvlink.nvml.json")
    raw["devices"].reverse()
    facts = nvml_facts.facts_from_raw(raw)
    assert [gpu["index"] for gpu in facts["gpus"]] == [0, 1]
    assert [(p["from"], p["to"]) for p in facts["pairs"]] == [(0, 1), (1, 0)]


def test_facts_from_raw_does_not_change_its_input():
    raw = load("h200x2-nvlink.nvml.json")
    before = copy.deepcopy(raw)
    nvml_facts.facts_from_raw(raw)
    assert raw == before


# --- snapshot files ------------------------------------------------------------------


def test_snapshot_round_trip(tmp_path):
    capture = load("h200x2-nvlink.nvml.json")
    raw = live_facts(capture).raw
    path = tmp_path / "saved.json"
    path.write_text(nvml_facts.dump_snapshot(raw))
    assert nvml_facts.load_snapshot(str(path)) == raw


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "snapshot: cannot read"),
        ("{not json", "snapshot: cannot read"),
        ("[]", "expected a JSON object at the top level, found list"),
        ('{"device_count": 1}', "the 'devices' list is missing"),
        ('{"devices": [{"name": "x"}]}', "devices[0] has no integer 'index'"),
        ('{"devices": [], "p2p": []}', "'p2p' must be an object keyed 'i-j'"),
    ],
)
def test_bad_snapshots(tmp_path, content, message):
    path = tmp_path / "snap.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(nvml_facts.SnapshotError) as caught:
        nvml_facts.load_snapshot(str(path))
    assert message in str(caught.value)
    assert str(caught.value).startswith("snapshot")
