"""The planner against what vLLM did on real H200s (tests/fixtures/h200/measured.json).

Each configuration measured on a lent H200 (docs/bakeoff-h200x1, tools/measure_box.py;
the TP 2 figures from the earlier hand-made run on two NVLinked H200s) is planned
again from the model's config.json and the lent machine's own NVML capture: the
KV-cache tokens must stay within 2% of what vLLM reported, the time per output
token at concurrency 1 within 10% of what was measured. A change to the planner's
memory or latency model that drifts past either fails here, with the figures.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_planner as vp

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
MEASURED = json.loads((FIXTURES / "h200" / "measured.json").read_text())
CONFIGS = MEASURED["configurations"]
KV_TOLERANCE = 0.02
TPOT_TOLERANCE = 0.10


def lent_cards(count):
    """The lent machine's NVML facts (two NVLinked H200s), cut to `count` cards."""
    facts = json.loads((FIXTURES / "nvml" / "h200x2-device.facts.json").read_text())
    facts = copy.deepcopy(facts)
    facts["gpus"] = facts["gpus"][:count]
    facts["count"] = count
    facts["pairs"] = [p for p in facts["pairs"] if max(p["from"], p["to"]) < count]
    return facts


def planned(entry):
    return vp.plan(
        gpus=lent_cards(entry["tp"]),
        model=str(FIXTURES / "models" / entry["model"]),
        max_model_len=8192,
        gpu_memory_utilization=0.9,
        topology="dp" if entry["tp"] == 1 else "tp",
    )


def ids(entry):
    return "%s-tp%d-%s" % (entry["model"], entry["tp"], "handmade" if "hand-made" in entry["source"] else "box")


@pytest.mark.parametrize("entry", CONFIGS, ids=ids)
def test_kv_tokens_within_two_percent_of_vllm(entry):
    result = planned(entry)
    assert result["tensor_parallel_size"] == entry["tp"]
    kv = result["memory"]["kv_tokens_per_instance"]
    ratio = kv / entry["kv_tokens_reported"]
    assert abs(ratio - 1) <= KV_TOLERANCE, "%s TP %d: planned %d KV tokens, vLLM reported %d (%.1f%%)" % (
        entry["model"],
        entry["tp"],
        kv,
        entry["kv_tokens_reported"],
        ratio * 100,
    )


@pytest.mark.parametrize("entry", CONFIGS, ids=ids)
def test_time_per_token_within_ten_percent_of_the_card(entry):
    spec = vp.describe_model(json.loads((FIXTURES / "models" / entry["model"] / "config.json").read_text()))
    link = "nvlink" if entry["tp"] > 1 else None
    estimate = vp.decode_ms(vp._decode_bytes(spec, "bfloat16"), MEASURED["card"]["bandwidth_gbs"], entry["tp"], link, spec["layers"])
    ratio = estimate / entry["tpot_c1_ms"]
    assert abs(ratio - 1) <= TPOT_TOLERANCE, "%s TP %d: estimated %.2f ms per token, measured %.2f (%.1f%%)" % (
        entry["model"],
        entry["tp"],
        estimate,
        entry["tpot_c1_ms"],
        ratio * 100,
    )


def test_the_latency_rule_still_prefers_tp_on_nvlink_as_measured():
    # Measured on two NVLinked H200s: TP 2 beat one TP 1 server by 4.91 / 3.50 = 1.40x at concurrency 1.
    by = {(e["model"], e["tp"], "hand-made" in e["source"]): e for e in CONFIGS}
    measured_gain = by[("Llama-3.1-8B", 1, True)]["tpot_c1_ms"] / by[("Llama-3.1-8B", 2, True)]["tpot_c1_ms"]
    assert measured_gain >= vp.LATENCY_TP_MIN_GAIN
    result = vp.plan(gpus=lent_cards(2), model=str(FIXTURES / "models" / "Llama-3.1-8B"), max_model_len=8192, objective="latency")
    assert (result["topology"], result["tensor_parallel_size"]) == ("tp", 2)
