# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_planner
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import import_controller_plugin

# A filter plugin is controller code: importing it (ansible.errors) sets ansible's
# process-wide "is_controller" flag, after which AnsibleModule.warn() in other test
# files goes to the controller's display instead of the module result; import_controller_plugin puts it back.
plan_table_plugin = import_controller_plugin("ansible_collections.gpufleet.serving.plugins.filter.plan_table")
plan_table = plan_table_plugin.plan_table
AnsibleFilterError = plan_table_plugin.AnsibleFilterError

MODELS = Path(__file__).resolve().parents[3] / "fixtures" / "models"


def registered(**kwargs):
    """What a task registers from gpufleet.serving.vllm_plan (success or refusal)."""
    try:
        return {"changed": False, "plan": vllm_planner.plan(**kwargs)}
    except vllm_planner.PlanError as exc:
        return {"failed": False, "msg": str(exc), "param": exc.param, "details": exc.details}


def published(**kwargs):
    """What the plan role publishes as gpufleet_plan: the plan, or the refusal."""
    try:
        return vllm_planner.plan(**kwargs)
    except vllm_planner.PlanError as exc:
        return {"refused": str(exc), "param": exc.param, "details": exc.details}


def test_registered_as_plan_table():
    assert plan_table_plugin.FilterModule().filters()["plan_table"] is plan_table


def test_table_from_host_names_and_hostvars():
    hostvars = {
        "gpu1": {"gpufleet_plan": published(gpu_profile="h200", gpu_count=2, model=str(MODELS / "Llama-3.1-8B"))},
        "gpu2": {"gpufleet_plan": published(gpu_profile="rtx-5080", gpu_count=2, model=str(MODELS / "Llama-3.1-70B"))},
        "gpu3": {},
    }
    text = plan_table(["gpu1", "gpu2", "gpu3"], hostvars)
    lines = text.splitlines()
    assert lines[0].startswith("HOST")
    assert any(line.startswith("gpu1 ") and "dp x2" in line and "Llama-3.1-8B" in line for line in lines)
    assert any(line.startswith("gpu2 ") and "REFUSED" in line and "Llama-3.1-70B" in line for line in lines)
    assert any(line.startswith("gpu3 ") and "REFUSED" in line for line in lines)
    assert "  error: model: Llama-3.1-70B in bfloat16 does not fit" in text


def test_custom_result_name_and_width():
    hostvars = {"a": {"plan_of_a": registered(gpu_profile="l40s", gpu_count=4, model=str(MODELS / "Mixtral-8x7B-v0.1"))}}
    text = plan_table(["a"], hostvars, result="plan_of_a", width=60)
    assert "tp 4" in text
    notes = text.split("\na:\n", 1)[1]
    assert all(len(line) <= 60 for line in notes.splitlines())


def test_rows_pass_through():
    text = plan_table([{"host": "x", "error": "gpus: the facts list zero cards"}])
    assert "x:" in text and "error: gpus: the facts list zero cards" in text


@pytest.mark.parametrize(("data", "hostvars"), [("gpu1", None), (["gpu1"], None), ([1, 2], None)])
def test_bad_input(data, hostvars):
    with pytest.raises(AnsibleFilterError):
        plan_table(data, hostvars)


def test_the_model_column_names_the_served_name_and_the_directory_when_they_differ():
    hostvars = {
        "gpu1": {"gpufleet_plan": published(gpu_profile="h200", gpu_count=2, model=str(MODELS / "Llama-3.1-8B"), launch={"served_model_name": "small"})},
        "gpu2": {"gpufleet_plan": published(gpu_profile="h200", gpu_count=2, model=str(MODELS / "Llama-3.1-8B"))},
    }
    lines = plan_table(["gpu1", "gpu2"], hostvars).splitlines()
    assert any(line.startswith("gpu1 ") and "small (Llama-3.1-8B)" in line for line in lines)
    assert any(line.startswith("gpu2 ") and " Llama-3.1-8B " in line and "(Llama" not in line for line in lines)
