# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The seams of the planner: one assessment, choosers over it, helpers that return new values."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import nvml_facts, planner_cards, planner_choose, planner_fit, planner_plan
from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_planner as vp

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
LLAMA_8B = str(FIXTURES / "models" / "Llama-3.1-8B")
LLAMA_70B = str(FIXTURES / "models" / "Llama-3.1-70B")
NOW = vp.parse_measured_time("2026-11-27T12:00:00Z")


@pytest.fixture
def h200x2():
    return nvml_facts.facts_from_raw(json.loads((FIXTURES / "nvml" / "h200x2-nvlink.nvml.json").read_text()), "snapshot")


def measured(estimate, topology, objective="throughput"):
    """A bake-off result for the estimate's model, cards and settings in which ``topology`` won ``objective``."""
    better = "higher" if objective == "throughput" else "lower"
    values = (400.0, 200.0) if better == "higher" else (2.0, 4.0)
    loser = "dp" if topology != "dp" else "tp"
    entry = {key: estimate[key] for key in vp.MEASURED_MATCH_KEYS}
    entry.update(
        host="gpu1",
        measured_at="2026-11-27T05:40:00Z",
        winners={
            objective: {"unit": "tok/s", "better": better, "ranking": [{"topology": topology, "value": values[0]}, {"topology": loser, "value": values[1]}]}
        },
    )
    return {"format": vp.MEASURED_FORMAT, "version": vp.MEASURED_VERSION, "measurements": [entry]}


def test_a_measured_plan_assesses_once(h200x2, monkeypatch):
    """The measured winner differs from the estimate: the plan is chosen over the same assessment, not planned again."""
    estimate = vp.plan(gpus=h200x2, model=LLAMA_8B)
    assert estimate["topology"] == "dp"
    calls = []
    real = planner_plan.assessment

    def counted(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(planner_plan, "assessment", counted)
    result = vp.plan(gpus=h200x2, model=LLAMA_8B, measured=measured(estimate, "tp"), now=NOW)
    assert (result["topology"], result["tensor_parallel_size"], result["source"]) == ("tp", 2, "measured")
    assert len(calls) == 1


def test_the_measured_chooser_gives_what_the_operator_s_topology_gives(h200x2):
    """Choosing tp because the bake-off measured it best is the same plan as topology tp, but for its first reasons."""
    a = planner_plan.assessment(gpus=h200x2, model=LLAMA_8B)
    estimate = planner_choose.plan_of(a, planner_choose.choose(a, "auto"))
    chosen = planner_choose.choose_measured(a, estimate, "tp", "measured: tp won")
    forced = planner_choose.plan_of(a, planner_choose.choose(a, "tp"))
    assert chosen["reasons"][0] == "measured: tp won; the estimate said dp."
    assert [r.replace("as measured best", "as requested") for r in chosen["reasons"][1:]] == forced["reasons"]
    assert {k: v for k, v in chosen.items() if k not in ("reasons", "source")} == {k: v for k, v in forced.items() if k != "reasons"}
    assert chosen["source"] == "measured"


def test_choosers_change_neither_the_assessment_nor_the_estimate(h200x2):
    a = planner_plan.assessment(gpus=h200x2, model=LLAMA_70B)
    before = copy.deepcopy(a)
    estimate = planner_choose.plan_of(a, planner_choose.choose(a, "auto"))
    kept = copy.deepcopy(estimate)
    for topology in ("tp", "dp", "vllm_dp", "tp_dp"):
        result = planner_choose.choose_measured(a, estimate, topology, "measured: %s won" % topology)
        assert result is not estimate and result["reasons"][0].startswith("measured: %s won" % topology)
    # dp cannot hold the 70B on one card: the estimate stands, with the reason first.
    kept_dp = planner_choose.choose_measured(a, estimate, "dp", "measured: dp won")
    assert kept_dp["topology"] == "tp" and "so the estimate stands" in kept_dp["reasons"][0] and "source" not in kept_dp
    for objective in ("throughput", "latency"):
        planner_choose.choose(dict(a, objective=objective), "auto")
    assert a == before
    assert estimate == kept


def test_each_chooser_reads_the_same_fits(h200x2):
    """The assessment sizes every split once; tp and dp take their degree from it."""
    a = planner_plan.assessment(gpus=h200x2, model=LLAMA_8B, max_model_len=8192)
    assert a["sizes"] == [1, 2] and a["tp_min"] == 1 and all(a["fits"][t]["fits"] for t in a["sizes"])
    assert planner_choose.choose(a, "dp")["tp"] == 1
    assert planner_choose.choose(a, "tp")["topology"] == "tp" and planner_choose.choose(a, "tp")["tp"] == 2
    assert planner_choose.choose(a, "vllm_dp")["topology"] == "vllm_dp"
    big = planner_plan.assessment(gpus=h200x2, model=LLAMA_70B)
    with pytest.raises(vp.PlanError) as refused:
        planner_choose.choose(big, "dp")
    assert refused.value.param == "topology"


def test_latency_estimates_name_their_case(h200x2):
    a = planner_plan.assessment(gpus=h200x2, model=LLAMA_8B, objective="latency")
    assert planner_fit.latency_estimates(a)["case"] == "faster" and planner_fit.latency_estimates(a)["choice"] == 2
    assert planner_fit.latency_estimates(dict(a, bandwidth=None)) == {"case": "no_bandwidth", "choice": 1}
    slow = dict(a, links={pair: "pcie_no_p2p" for pair in a["links"]})
    assert planner_fit.latency_estimates(slow)["case"] in ("slower", "small_gain")
    assert planner_fit.latency_estimates(slow)["choice"] == 1


def test_card_helpers_leave_the_facts_alone(h200x2):
    facts = copy.deepcopy(h200x2)
    facts["gpus"].reverse()
    facts["gpus"][0]["memory_free_bytes"] = 0
    kept = copy.deepcopy(facts)
    cards = planner_cards.check_cards(facts)
    assert [card["index"] for card in cards] == [0, 1]
    warnings = planner_cards.card_warnings(cards, 0.9, "bfloat16")
    assert len(warnings) == 1 and "has only 0.0 GiB free" in warnings[0]
    assert facts == kept


def test_a_refusal_after_the_assessment_still_names_model_and_cards(h200x2):
    with pytest.raises(vp.PlanError) as refused:
        vp.plan(gpus=h200x2, model=LLAMA_8B, dtype="float32", max_model_len=8192, concurrency=4, device="cpu", cpu_kvcache_space_gib=1)
    assert refused.value.param == "cpu_kvcache_space_gib"
    assert refused.value.details == {"model": "Llama-3.1-8B", "cards": "2 x NVIDIA H200 (140.4 GiB each, NVLink)"}


def test_an_unknown_planning_input_is_a_type_error(h200x2):
    with pytest.raises(TypeError, match="tensor_parallel"):
        vp.plan(gpus=h200x2, model=LLAMA_8B, tensor_parallel=2)


def test_one_chooser_per_objective_over_one_assessment(h200x2):
    """Two NVLinked H200s and an 8B model: throughput keeps a copy per card, latency takes tensor parallel 2, from the same figures."""
    a = planner_plan.assessment(gpus=h200x2, model=LLAMA_8B)
    throughput = planner_choose.choose_throughput(a)
    latency = planner_choose.choose_latency(a)
    assert (throughput["topology"], throughput["tp"]) == ("dp", 1)
    assert (latency["topology"], latency["tp"]) == ("tp", 2)
    assert latency["reasons"][0].startswith("Objective latency: cards 0,1 are joined by NVLink")
    assert planner_choose.choose_latency(dict(a, tensor_parallel_size=1)) == planner_choose.choose_throughput(dict(a, tensor_parallel_size=1))
