"""Stale-configuration detection and vLLM metrics parsing."""

from __future__ import annotations

from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_instances as vi

ENV = """# Ansible managed
# vllm@0: dp instance, port 8001
CUDA_VISIBLE_DEVICES=0
GPUFLEET_PORT=8001
GPUFLEET_UNIT_SHA1=abc
GPUFLEET_VLLM_ARGS=--model /m --port 8001
GPUFLEET_VLLM_PACKAGE=vllm==0.33.0
QUOTED="a b"
"""
RUNNING = {
    "CUDA_VISIBLE_DEVICES": "0",
    "GPUFLEET_PORT": "8001",
    "GPUFLEET_UNIT_SHA1": "abc",
    "GPUFLEET_VLLM_ARGS": "--model /m --port 8001",
    "GPUFLEET_VLLM_PACKAGE": "vllm==0.33.0",
    "QUOTED": "a b",
    "HOME": "/var/lib/vllm",
}
SHOW = "ActiveState=active\nSubState=running\nMainPID=4242\nNRestarts=1\nResult=success\nExecMainStartTimestamp=Fri 2026-11-27\n"


def environ(env):
    return b"\0".join(("%s=%s" % kv).encode() for kv in env.items()) + b"\0"


def test_env_file_and_environ_parse_alike():
    assert vi.parse_env_file(ENV) == {k: v for k, v in RUNNING.items() if k != "HOME"}
    assert vi.parse_environ(environ(RUNNING)) == RUNNING


def test_instance_running_its_files_is_not_stale():
    s = vi.instance_status("0", vi.parse_show(SHOW), ENV, vi.parse_environ(environ(RUNNING)))
    assert s["stale"] is False and s["stale_keys"] == []
    assert (s["unit"], s["main_pid"], s["restarts"], s["port"], s["active_state"]) == ("vllm@0.service", 4242, 1, 8001, "active")
    assert s["package"] == "vllm==0.33.0"


def test_changed_arguments_or_unit_make_it_stale():
    old = dict(RUNNING, GPUFLEET_VLLM_ARGS="--model /m --port 8001 --enforce-eager", GPUFLEET_UNIT_SHA1="old")
    s = vi.instance_status("0", vi.parse_show(SHOW), ENV, old)
    assert s["stale"] is True
    assert s["stale_keys"] == ["GPUFLEET_UNIT_SHA1", "GPUFLEET_VLLM_ARGS"]


def test_a_variable_added_to_the_file_makes_it_stale():
    s = vi.instance_status("0", vi.parse_show(SHOW), ENV + "NEW=1\n", RUNNING)
    assert s["stale_keys"] == ["NEW"]


def test_stopped_or_unconfigured_instances_are_never_stale():
    stopped = vi.parse_show("ActiveState=inactive\nSubState=dead\nMainPID=0\nNRestarts=0\nResult=success\n")
    assert vi.instance_status("0", stopped, ENV, None)["stale"] is False
    s = vi.instance_status("9", vi.parse_show(SHOW), None, RUNNING)
    assert s["configured"] is False and s["stale"] is False and s["port"] is None


def test_summary_lists_names_and_sums_requests():
    failed = vi.instance_status("x", vi.parse_show("ActiveState=failed\nResult=start-limit-hit\nMainPID=0\n"), ENV, None)
    stale = vi.instance_status("0", vi.parse_show(SHOW), ENV, {})
    fine = dict(vi.instance_status("1", vi.parse_show(SHOW), ENV, RUNNING), requests_running=2.0, requests_waiting=1.0)
    summary = vi.summarize([failed, stale, fine])
    assert summary == {"stale": ["0"], "inactive": ["x"], "failed": ["x"], "busy": 3}
    assert failed["result"] == "start-limit-hit"


def test_metrics_sum_over_label_sets():
    text = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
vllm:num_requests_running{engine="1",model_name="tiny"} 1.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0
vllm:num_requests_running_total 99
vllm:num_requests_waiting{engine="1",model_name="tiny"} garbage
"""
    assert vi.parse_metrics(text) == {"running": 3.0, "waiting": 0.0}
    assert vi.parse_metrics("") == {"running": None, "waiting": None}
