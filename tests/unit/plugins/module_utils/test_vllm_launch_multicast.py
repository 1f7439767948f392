# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The launch setting allreduce_multicast: NVLink multicast off, knowingly, unless it is asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import nvml_facts, vllm_launch, vllm_planner

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
MODEL_8B = str(FIXTURES / "models" / "Llama-3.1-8B")
# What ran on the two lent H200s with tensor parallel 2 (../shared/gpu/README.md).
OFF_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
    "VLLM_ALLREDUCE_USE_FLASHINFER": "0",
    "VLLM_FLASHINFER_ALLREDUCE_BACKEND": "trtllm",
}


VALID = {"served_model_name": "llama", "model_path": "/var/lib/vllm/models/llama"}


@pytest.fixture
def h200x2():
    return nvml_facts.facts_from_raw(json.loads((FIXTURES / "nvml" / "h200x2-nvlink.nvml.json").read_text()), "snapshot")


def compilation_configs(argv):
    return [json.loads(argv[i + 1]) for i, word in enumerate(argv) if word == "--compilation-config"]


def test_tensor_parallel_turns_multicast_off_by_default(h200x2):
    plan = vllm_planner.plan(gpus=h200x2, model=MODEL_8B, topology="tp", launch={"served_model_name": "llama"})
    (instance,) = plan["instances"]
    assert plan["launch"]["allreduce_multicast"] is False
    assert {key: instance["env"][key] for key in OFF_ENV} == OFF_ENV
    assert compilation_configs(instance["argv"]) == [{"pass_config": {"fuse_allreduce_rms": False}}]
    assert vllm_launch.launch_mismatches(plan) == []
    # The JSON word survives systemd's quoting as one argument.
    line = vllm_launch.exec_start("/opt/vllm/venv/bin/python", instance["argv"])
    assert vllm_launch.systemd_split(line)[3:] == instance["argv"]


@pytest.mark.parametrize(
    ("topology", "device", "launch"),
    [
        ("dp", "cuda", {}),  # no all-reduce between cards
        ("vllm_dp", "cuda", {}),
        ("tp", "cpu", {}),  # the CPU build has no NVLink
        ("tp", "cuda", {"allreduce_multicast": True}),  # asked for: vLLM's own defaults
    ],
)
def test_nothing_changes_where_multicast_cannot_or_may_be_used(h200x2, topology, device, launch):
    cpu = {"dtype": "float32", "max_model_len": 512} if device == "cpu" else {}
    plan = vllm_planner.plan(gpus=h200x2, model=MODEL_8B, topology=topology, device=device, launch=launch, **cpu)
    for instance in plan["instances"]:
        assert not set(OFF_ENV) & set(instance["env"])
        assert compilation_configs(instance["argv"]) == []


def test_on_and_off_are_different_launches(h200x2):
    off = vllm_planner.plan(gpus=h200x2, model=MODEL_8B, topology="tp")
    on = vllm_planner.plan(gpus=h200x2, model=MODEL_8B, topology="tp", launch={"allreduce_multicast": True})
    # A changed setting makes the running instance stale (its fingerprint changes).
    assert off["instances"][0]["launch_sha1"] != on["instances"][0]["launch_sha1"]


@pytest.mark.parametrize("key", sorted(OFF_ENV))
def test_extra_env_cannot_undo_one_of_the_variables(key):
    with pytest.raises(vllm_launch.LaunchError) as err:
        vllm_launch.check_settings(dict(VALID, extra_env={key: "1"}), "plan_")
    assert err.value.param == "extra_env"
    assert "plan_allreduce_multicast" in str(err.value)


@pytest.mark.parametrize("value", ["no", 0, "false"])
def test_the_setting_is_a_boolean(value):
    with pytest.raises(vllm_launch.LaunchError) as err:
        vllm_launch.check_settings(dict(VALID, allreduce_multicast=value), "plan_")
    assert err.value.param == "allreduce_multicast"
    assert "plan_allreduce_multicast must be true or false" in str(err.value)
