# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpufleet.serving.plugins.module_utils import gpu_catalog, nvml_facts, vllm_launch, vllm_planner
from ansible_collections.gpufleet.serving.plugins.modules import vllm_plan
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import patch_module_args, run_as_module

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
MODEL_8B = str(FIXTURES / "models" / "Llama-3.1-8B")
MODEL_70B = str(FIXTURES / "models" / "Llama-3.1-70B" / "config.json")


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    run_as_module(monkeypatch)


@pytest.fixture
def h200x2():
    return nvml_facts.facts_from_raw(json.loads((FIXTURES / "nvml" / "h200x2-nvlink.nvml.json").read_text()), "snapshot")


def run_module(capsys, args, check_mode=False):
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        vllm_plan.main()
    result = json.loads(capsys.readouterr().out)
    result["rc"] = exited.value.code
    return result


@pytest.mark.parametrize("check_mode", [False, True])
def test_plan_from_facts(capsys, h200x2, check_mode):
    result = run_module(capsys, {"gpus": h200x2, "model": MODEL_8B}, check_mode=check_mode)
    plan = result["plan"]
    assert result["rc"] == 0 and result["changed"] is False
    assert (plan["topology"], plan["data_parallel_size"], plan["model"]) == ("dp", 2, "Llama-3.1-8B")
    assert [instance["port"] for instance in plan["instances"]] == [8001, 8002]


def test_plan_from_a_profile_and_options(capsys):
    args = {"gpu_profile": "h100-sxm", "gpu_count": 4, "model": MODEL_70B, "max_model_len": 8192, "concurrency": 2, "base_port": 9100}
    plan = run_module(capsys, args)["plan"]
    # TP=2 per card: 65.7 GiB weights + 2.5 GiB KV + 2 GiB overhead = 70.2 of 71.7 GiB usable: two TP=2 copies
    assert (plan["topology"], plan["tensor_parallel_size"], plan["data_parallel_size"]) == ("tp_dp", 2, 2)
    assert [instance["port"] for instance in plan["instances"]] == [9100, 9101]
    # 4 GiB of overhead no longer fits TP=2 (72.2 GiB): one TP=4 copy
    plan = run_module(capsys, dict(args, overhead_gib=4))["plan"]
    assert (plan["topology"], plan["tensor_parallel_size"]) == ("tp", 4)
    assert any("4.0 GiB overhead" in reason for reason in plan["reasons"])


def test_refusal_names_the_parameter_and_keeps_details(capsys):
    result = run_module(capsys, {"gpu_profile": "rtx-5080", "gpu_count": 2, "model": MODEL_70B})
    assert result["rc"] == 1 and result["failed"] is True
    assert result["msg"].startswith("model: Llama-3.1-70B in bfloat16 does not fit")
    assert result["param"] == "model"
    assert result["details"]["model"] == "Llama-3.1-70B"
    assert "ansible_facts" not in result


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"gpu_profile": "h200", "model": MODEL_8B}, "gpu_count"),
        ({"model": MODEL_8B}, "gpus"),
        ({"gpu_profile": "h200", "gpu_count": 2, "model": MODEL_8B, "dtype": "int8"}, "dtype"),
        ({"gpu_profile": "h200", "gpu_count": 2, "model": MODEL_8B, "topology": "pp"}, "topology"),
        ({"gpu_profile": "h200", "gpu_count": 0, "model": MODEL_8B}, "gpu_count"),
        ({"gpu_profile": "h200", "gpu_count": 2, "model": MODEL_8B, "tensor_parallel_size": 4}, "tensor_parallel_size"),
        ({"gpu_profile": "h200", "gpu_count": 2, "model": MODEL_8B, "max_model_len": -5}, "max_model_len"),
    ],
)
def test_bad_arguments_fail_naming_them(capsys, args, words):
    result = run_module(capsys, args)
    assert result["rc"] == 1 and result["failed"] is True
    assert words in result["msg"]


def test_gpus_and_gpu_profile_are_mutually_exclusive(capsys, h200x2):
    result = run_module(capsys, {"gpus": h200x2, "gpu_profile": "h200", "gpu_count": 2, "model": MODEL_8B})
    assert result["failed"] is True and "mutually exclusive" in result["msg"]


def test_documentation_matches_the_argument_spec():
    """Every option in DOCUMENTATION is in the argument spec with the same type, default and choices."""
    documented = yaml.safe_load(vllm_plan.DOCUMENTATION)["options"]
    source = Path(vllm_plan.__file__).read_text()
    spec_names = re.findall(r"^            (\w+)=dict\(", source, flags=re.M)
    assert sorted(documented) == sorted(spec_names) == sorted(vllm_plan.PLAN_ARGUMENTS + vllm_plan.OTHER_ARGUMENTS)
    launch = documented["launch"]["suboptions"]
    assert sorted(launch) == sorted(vllm_plan.LAUNCH_SPEC) == sorted(vllm_launch.DEFAULT_SETTINGS)
    for name, spec in vllm_plan.LAUNCH_SPEC.items():
        assert launch[name]["type"] == spec["type"] and launch[name]["default"] == spec["default"], name
    assert documented["device"]["choices"] == list(vllm_launch.DEVICES)
    assert documented["dtype"]["choices"] == list(vllm_planner.DTYPES)
    assert documented["topology"]["choices"] == list(vllm_planner.TOPOLOGIES)
    assert documented["objective"]["choices"] == list(vllm_planner.OBJECTIVES)
    assert documented["base_port"]["default"] == vllm_planner.DEFAULT_BASE_PORT
    assert documented["gpu_memory_utilization"]["default"] == vllm_planner.DEFAULT_GPU_MEMORY_UTILIZATION
    assert documented["overhead_gib"]["default"] == vllm_planner.DEFAULT_OVERHEAD_GIB
    for key in gpu_catalog.profile_names():
        assert "V(%s)" % key in documented["gpu_profile"]["description"][1]


def test_measured_file_decides_through_the_module(capsys, tmp_path, h200x2):
    estimate = run_module(capsys, {"gpus": h200x2, "model": MODEL_8B})["plan"]
    assert estimate["source"] == "estimated"
    measured = tmp_path / "measured.json"
    entry = {key: estimate[key] for key in vllm_planner.MEASURED_MATCH_KEYS}
    entry.update(
        host="gpu1",
        measured_at=vllm_planner.datetime.datetime.now(vllm_planner.datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        winners={"throughput": {"unit": "tok/s", "better": "higher", "ranking": [{"topology": "tp", "value": 412}, {"topology": "dp", "value": 260}]}},
    )
    measured.write_text(json.dumps({"format": vllm_planner.MEASURED_FORMAT, "version": 1, "measurements": [entry]}))
    plan = run_module(capsys, {"gpus": h200x2, "model": MODEL_8B, "measured": str(measured)})["plan"]
    assert (plan["topology"], plan["source"]) == ("tp", "measured")
    assert plan["reasons"][0].startswith("measured: tp won throughput, 412 vs 260 tok/s (dp), bake-off of ")
    result = run_module(capsys, {"gpus": h200x2, "model": MODEL_8B, "measured": str(measured), "measured_max_age_days": 0})
    assert result["failed"] and result["param"] == "measured_max_age_days"


def test_the_result_carries_each_instance_launch_and_sets_no_fact(capsys, h200x2):
    args = {
        "gpus": h200x2,
        "model": MODEL_8B,
        "max_model_len": 8192,
        "concurrency": 4,
        "launch": {"served_model_name": "llama", "extra_args": ["--api-key", "a key with spaces"], "extra_env": {"NCCL_DEBUG": "WARN"}},
    }
    result = run_module(capsys, args)
    assert "ansible_facts" not in result
    plan = result["plan"]
    first = plan["instances"][0]
    assert first["argv"][:8] == ["--model", "/var/lib/vllm/models/llama", "--served-model-name", "llama", "--host", "127.0.0.1", "--port", "8001"]
    assert first["argv"][-2:] == ["--api-key", "a key with spaces"]
    assert first["env"]["NCCL_DEBUG"] == "WARN" and first["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert vllm_launch.launch_mismatches(plan) == []


@pytest.mark.parametrize(
    ("launch", "variable", "instead"),
    [
        ({"extra_args": ["--max-model-len=4096"]}, "plan_extra_args", "plan_max_model_len"),
        ({"extra_args": ["--gpu_memory_utilization", "0.5"]}, "plan_extra_args", "plan_gpu_memory_utilization"),
        ({"model_path": "/srv/my model"}, "plan_model_path", "whitespace"),
        ({"served_model_name": "llama\n3"}, "plan_served_model_name", "control"),
    ],
)
def test_refused_launch_settings_name_the_role_variable(capsys, h200x2, launch, variable, instead):
    result = run_module(capsys, {"gpus": h200x2, "model": MODEL_8B, "launch": launch, "variable_prefix": "plan_"})
    assert result["failed"] is True
    assert result["msg"].startswith(variable) and instead in result["msg"]


def test_a_port_range_past_65535_is_refused(capsys, h200x2):
    result = run_module(capsys, {"gpus": h200x2, "model": MODEL_8B, "base_port": 65535, "variable_prefix": "plan_"})
    assert result["failed"] is True and result["param"] == "base_port"
    assert "plan_base_port" in result["msg"] and "65536" in result["msg"]


def server_group(host, count, profile="l40s", **member_changes):
    members = [
        dict({"host": "gpu%d" % n, "address": "10.0.0.%d" % n, "gpu_profile": profile, "gpu_count": 2, "vllm_version": "0.26.0"}, **member_changes)
        for n in range(1, count + 1)
    ]
    return {"name": "big", "host": host, "members": members, "interface": "eth0"}


def test_a_server_group_through_the_module(capsys):
    """Llama-3.1-70B on 48 GB cards: two servers, tensor parallel 2 x pipeline parallel 2; master_port takes its default."""
    args = {"gpu_profile": "l40s", "gpu_count": 2, "model": MODEL_70B, "max_model_len": 8192, "group": server_group("gpu2", 2)}
    result = run_module(capsys, args)
    assert result["rc"] == 0, result.get("msg")
    plan = result["plan"]
    assert (plan["topology"], plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == ("pp", 2, 2)
    assert plan["group"]["name"] == "big-0" and plan["group"]["node_rank"] == 1 and plan["group"]["master_port"] == 29500
    assert plan["group"]["master_addr"] == "10.0.0.1" and plan["instances"][0]["role"] == "follower"
    # A model that fits one server ignores the group.
    plan = run_module(capsys, dict(args, gpu_profile="h200", group=server_group("gpu2", 2, "h200")))["plan"]
    assert plan["topology"] == "tp" and plan["group"] is None


@pytest.mark.parametrize(
    ("group", "key"),
    [
        (server_group("gpu1", 2, address="10.0.0.1 --x"), "group.members[0].address"),
        (server_group("gpu1", 65), "group.members"),
        (dict(server_group("gpu1", 2), interface="-lo"), "group.interface"),
        (dict(server_group("gpu1", 2), name="Big Group"), "group.name"),
        (dict(server_group("gpu1", 2), master_port=22), "group.master_port"),
        (server_group("gpu1", 2, vllm_version="0.26.0\n"), "group.members[0].vllm_version"),
    ],
)
def test_hostile_server_groups_fail_naming_the_key(capsys, group, key):
    result = run_module(capsys, {"gpu_profile": "l40s", "gpu_count": 2, "model": MODEL_70B, "group": group})
    assert result["rc"] == 1 and result["failed"] is True and result["param"] == "group"
    assert result["msg"].startswith(key + ": "), result["msg"]


def test_members_that_differ_fail_naming_them(capsys):
    group = server_group("gpu1", 3)
    group["members"][2]["vllm_version"] = "0.25.0"
    result = run_module(capsys, {"gpu_profile": "l40s", "gpu_count": 2, "model": MODEL_70B, "max_model_len": 8192, "group": group})
    assert result["failed"] is True and result["param"] == "group"
    assert "vllm_version: gpu1 has 0.26.0, but gpu3 has 0.25.0" in result["msg"]


def test_the_group_option_is_documented_as_specified():
    documented = yaml.safe_load(vllm_plan.DOCUMENTATION)["options"]["group"]
    assert documented["type"] == "dict"
    assert sorted(documented["suboptions"]) == sorted(vllm_plan.GROUP_SPEC)
    assert sorted(documented["suboptions"]["members"]["suboptions"]) == sorted(vllm_plan.GROUP_MEMBER_SPEC)
    assert documented["suboptions"]["master_port"]["default"] == vllm_planner.DEFAULT_MASTER_PORT
    for name, spec in vllm_plan.GROUP_SPEC.items():
        assert documented["suboptions"][name]["type"] == spec["type"], name
    for name, spec in vllm_plan.GROUP_MEMBER_SPEC.items():
        assert documented["suboptions"]["members"]["suboptions"][name]["type"] == spec["type"], name
