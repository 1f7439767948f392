"""vLLM's router of a cache-aware pool: its launch from the site model's entry, refused values, the
instances read from the servers' plans."""

from __future__ import annotations

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import cache_router as cr
from ansible_collections.gpufleet.serving.plugins.module_utils.vllm_launch import systemd_split

PROGRAM = "/opt/gpufleet-router/venv/bin/vllm-router"
ROUTER = {
    "unit": "gpufleet-router-2",
    "model": "small",
    "upstream": "gpufleet_fleet_2",
    "port": 8202,
    "metrics_port": 8203,
    "policy": "cache_aware",
    "workers": ["http://127.0.0.1:8199/_gpufleet/worker/gpufleet_worker_2_1", "http://127.0.0.1:8199/_gpufleet/worker/gpufleet_worker_2_2"],
    "health_interval": 5,
    "request_timeout": 300,
}


def test_the_launch_is_the_entry_word_for_word():
    words = systemd_split(cr.router_exec_start(PROGRAM, ROUTER))
    assert words == [PROGRAM, *cr.router_argv(ROUTER)]
    assert words[words.index("--worker-urls") + 1 : words.index("--worker-startup-timeout-secs")] == ROUTER["workers"]
    # Loopback only, for the service and for its metrics.
    assert words[words.index("--host") + 1] == "127.0.0.1" and words[words.index("--prometheus-host") + 1] == "127.0.0.1"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"workers": []}, "needs 1 to"),
        ({"workers": "http://127.0.0.1:8199/_gpufleet/worker/gpufleet_worker_2_1"}, "needs 1 to"),
        ({"workers": ["http://127.0.0.1:8199/_gpufleet/worker/gpufleet_worker_2_1 --policy random"]}, "not the fleet tier's loopback routes"),
        ({"workers": ["http://203.0.113.9:8199/_gpufleet/worker/gpufleet_worker_2_1"]}, "not the fleet tier's loopback routes"),
        ({"workers": ["http://127.0.0.1:8199/_gpufleet/worker/gpufleet_worker_2_1\nExecStartPre=/bin/sh"]}, "not the fleet tier's loopback routes"),
        ({"port": "8202"}, "not a port"),
        ({"port": 0}, "not a port"),
        ({"metrics_port": True}, "not a port"),
        ({"policy": "random"}, "the policy"),
        ({"unit": "sshd"}, "gpufleet-router-<n>"),
        ({"unit": "gpufleet-router-1.service; x"}, "gpufleet-router-<n>"),
        ({"health_interval": 0}, "health check interval"),
        ({"request_timeout": 10**9}, "request timeout"),
    ],
)
def test_an_entry_the_launch_may_not_carry_is_refused(change, words):
    with pytest.raises(cr.CacheRouterError, match=words):
        cr.router_exec_start(PROGRAM, dict(ROUTER, **change))


def test_the_program_is_an_absolute_plain_path():
    for program in ("vllm-router", "/opt/x y/vllm-router", "/opt/$HOME/vllm-router", ""):
        with pytest.raises(cr.CacheRouterError, match="absolute path"):
            cr.router_exec_start(program, ROUTER)
    with pytest.raises(cr.CacheRouterError, match="mapping"):
        cr.router_argv(["not", "an", "entry"])


def test_instances_come_from_the_plans_that_have_them():
    plans = {
        "gpu1": {"instances": [{"name": "0", "port": 8001}, {"name": "1", "port": 8002}]},
        "gpu2": {"instances": [{"name": "main", "port": 8001}]},
        "gpu3": {"refused": "does not fit"},
        "gpu4": None,
        "gpu5": {"instances": "x"},
        "gpu6": {"instances": [{"port": 8001}, "x"]},
    }
    assert cr.backend_instances(plans) == {"gpu1": ["0", "1"], "gpu2": ["main"]}
    assert cr.backend_instances(None) == {}


def test_the_filter_prefers_this_runs_plan_and_reads_the_kept_one_otherwise():
    import base64  # noqa: PLC0415
    import json  # noqa: PLC0415

    from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import import_controller_plugin  # noqa: PLC0415

    backend_instances = import_controller_plugin("ansible_collections.gpufleet.serving.plugins.filter.gateway_backend_instances").gateway_backend_instances
    kept = {"instances": [{"name": "old", "port": 8001}]}
    hostvars = {"gpu1": {"gpufleet_plan": {"instances": [{"name": "0", "port": 8001}]}}, "gpu2": {}, "gpu3": {}}
    remote = [
        {"item": "gpu1", "content": base64.b64encode(json.dumps(kept).encode()).decode()},
        {"item": "gpu2", "content": base64.b64encode(json.dumps(kept).encode()).decode()},
        {"item": "gpu3", "content": base64.b64encode(b"not json").decode()},
        {"item": "gpu3", "failed": True},
    ]
    assert backend_instances(["gpu1", "gpu2", "gpu3"], hostvars, remote) == {"gpu1": ["0"], "gpu2": ["old"]}
