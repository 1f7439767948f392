# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The launch: what each planned instance runs, its checks, and systemd quoting."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import nvml_facts, vllm_launch, vllm_planner

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
MODEL_8B = str(FIXTURES / "models" / "Llama-3.1-8B")


@pytest.fixture
def h200x2():
    return nvml_facts.facts_from_raw(json.loads((FIXTURES / "nvml" / "h200x2-nvlink.nvml.json").read_text()), "snapshot")


def option(argv, name):
    return argv[argv.index(name) + 1]


# ---------------------------------------------------------------------------
# The launch carries the plan's figures
# ---------------------------------------------------------------------------


def test_dp_instances_carry_every_planned_value(h200x2):
    plan = vllm_planner.plan(gpus=h200x2, model=MODEL_8B, max_model_len=8192, concurrency=4, gpu_memory_utilization=0.85, launch={"served_model_name": "llama"})
    assert plan["topology"] == "dp"
    for index, instance in enumerate(plan["instances"]):
        argv, env = instance["argv"], instance["env"]
        assert option(argv, "--model") == "/var/lib/vllm/models/llama"
        assert option(argv, "--port") == str(8001 + index) == env["GPUFLEET_PORT"]
        assert option(argv, "--max-model-len") == "8192" == str(plan["max_model_len"])
        assert option(argv, "--dtype") == "bfloat16" == plan["dtype"]
        assert option(argv, "--gpu-memory-utilization") == "0.85"
        assert option(argv, "--max-num-seqs") == "256" == str(plan["max_num_seqs"])
        assert "--tensor-parallel-size" not in argv and "--data-parallel-size" not in argv
        assert option(argv, "--shutdown-timeout") == "60"
        assert env["CUDA_VISIBLE_DEVICES"] == str(index) and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert "VLLM_CPU_KVCACHE_SPACE" not in env and "--kv-cache-memory-bytes" not in argv
        assert instance["launch_sha1"] == vllm_launch.launch_digest(argv, env)
    assert vllm_launch.launch_mismatches(plan) == []


def test_tp_and_vllm_dp_pass_their_parallel_sizes(h200x2):
    tp = vllm_planner.plan(gpus=h200x2, model=MODEL_8B, topology="tp")
    assert [option(i["argv"], "--tensor-parallel-size") for i in tp["instances"]] == ["2"]
    assert tp["instances"][0]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    one = vllm_planner.plan(gpus=h200x2, model=MODEL_8B, single_endpoint=True)
    assert one["topology"] == "vllm_dp" and option(one["instances"][0]["argv"], "--data-parallel-size") == "2"
    assert "--tensor-parallel-size" not in one["instances"][0]["argv"]


def test_the_cpu_build_plans_its_kv_cache_from_the_space_it_is_given(h200x2):
    plan = vllm_planner.plan(
        gpus=h200x2, model=MODEL_8B, dtype="float32", max_model_len=512, concurrency=4, device="cpu", cpu_kvcache_space_gib=2, topology="tp"
    )
    instance = plan["instances"][0]
    # float32 KV: 2 x 32 layers x 8 KV heads x 128 x 4 bytes = 256 KiB per token, half of it on each of the two workers
    assert plan["memory"]["kv_bytes_per_token"] == 262144
    assert plan["memory"]["kv_tokens_per_instance"] == 2 * vllm_planner.GIB // (262144 // 2) == 16384
    assert plan["memory"]["max_concurrency"] == 32.0
    # vLLM is given the bytes; VLLM_CPU_KVCACHE_SPACE (whole GiB, and it would override them) is not set.
    assert option(instance["argv"], "--kv-cache-memory-bytes") == str(2 * vllm_planner.GIB)
    assert "VLLM_CPU_KVCACHE_SPACE" not in instance["env"]
    assert instance["env"]["VLLM_CPU_OMP_THREADS_BIND"] == "nobind" and instance["env"]["OMP_NUM_THREADS"] == "1"
    assert "--gpu-memory-utilization" not in instance["argv"]
    assert option(instance["argv"], "--dtype") == "float32"
    assert any("2 GiB of KV cache (--kv-cache-memory-bytes)" in reason for reason in plan["reasons"])
    bound = vllm_planner.plan(gpus=h200x2, model=MODEL_8B, dtype="float32", max_model_len=512, device="cpu", launch={"cpu_bind_cores": True})
    assert [i["env"]["VLLM_CPU_OMP_THREADS_BIND"] for i in bound["instances"]] == ["0", "1"]


def test_a_cpu_kv_cache_may_be_a_fraction_of_a_gib(h200x2):
    """A quarter of a GiB per worker (the test fleets' setting): the bytes vLLM is given and the tokens planned agree."""
    plan = vllm_planner.plan(gpus=h200x2, model=MODEL_8B, dtype="float32", max_model_len=512, concurrency=2, device="cpu", cpu_kvcache_space_gib=0.25)
    for instance in plan["instances"]:
        assert option(instance["argv"], "--kv-cache-memory-bytes") == str(vllm_planner.GIB // 4)
    assert plan["memory"]["kv_tokens_per_instance"] == (vllm_planner.GIB // 4) // 262144 == 1024
    assert vllm_launch.launch_mismatches(plan) == []
    for bad in (0, 0.01, -1, True, "0.25", float("nan"), 10**6):
        with pytest.raises(vllm_planner.PlanError, match=r"number of GiB from 0\.0625") as refused:
            vllm_planner.plan(gpus=h200x2, model=MODEL_8B, dtype="float32", max_model_len=512, device="cpu", cpu_kvcache_space_gib=bad)
        assert refused.value.param == "cpu_kvcache_space_gib"
    # A launch that sets VLLM_CPU_KVCACHE_SPACE after all (edited by hand) disagrees with the plan.
    edited = dict(plan, instances=[dict(plan["instances"][0], env=dict(plan["instances"][0]["env"], VLLM_CPU_KVCACHE_SPACE="1"))])
    assert any("VLLM_CPU_KVCACHE_SPACE is set" in problem for problem in vllm_launch.launch_mismatches(edited))


def test_a_cpu_kv_cache_too_small_for_the_plan_is_refused(h200x2):
    with pytest.raises(vllm_planner.PlanError) as refused:
        vllm_planner.plan(gpus=h200x2, model=MODEL_8B, dtype="float32", max_model_len=8192, concurrency=4, device="cpu", cpu_kvcache_space_gib=1)
    assert refused.value.param == "cpu_kvcache_space_gib"
    assert "8192 x concurrency 4" in str(refused.value)


def test_fp8_on_a_16_bit_checkpoint_is_quantized_on_load(h200x2):
    plan = vllm_planner.plan(gpus=h200x2, model=MODEL_8B, dtype="fp8", max_model_len=8192)
    argv = plan["instances"][0]["argv"]
    assert option(argv, "--dtype") == "auto" and option(argv, "--quantization") == "fp8"


def test_max_num_seqs_follows_the_concurrency_and_refuses_less(h200x2):
    plan = vllm_planner.plan(gpus=h200x2, model=MODEL_8B, max_model_len=1024, concurrency=300)
    assert plan["max_num_seqs"] == 300
    assert vllm_planner.plan(gpus=h200x2, model=MODEL_8B, max_model_len=1024, concurrency=8, max_num_seqs=64)["max_num_seqs"] == 64
    with pytest.raises(vllm_planner.PlanError) as refused:
        vllm_planner.plan(gpus=h200x2, model=MODEL_8B, max_model_len=1024, concurrency=8, max_num_seqs=4)
    assert refused.value.param == "max_num_seqs"


def test_extra_settings_come_last_and_keep_values_whole(h200x2):
    plan = vllm_planner.plan(
        gpus=h200x2,
        model=MODEL_8B,
        max_model_len=8192,
        launch={"extra_args": ["--chat-template", "/etc/vllm/my template.jinja", "--api-key=a b"], "extra_env": {"NCCL_DEBUG": "INFO"}, "enforce_eager": True},
    )
    argv = plan["instances"][0]["argv"]
    assert argv[-3:] == ["--chat-template", "/etc/vllm/my template.jinja", "--api-key=a b"]
    assert "--enforce-eager" in argv
    assert plan["instances"][0]["env"]["NCCL_DEBUG"] == "INFO"


def test_shutdown_timeout_zero_leaves_the_argument_out(h200x2):
    plan = vllm_planner.plan(gpus=h200x2, model=MODEL_8B, max_model_len=8192, launch={"shutdown_timeout_sec": 0})
    assert "--shutdown-timeout" not in plan["instances"][0]["argv"]


# ---------------------------------------------------------------------------
# Refusals: each names the variable to change
# ---------------------------------------------------------------------------

OVERRIDES = [
    (["--max-model-len", "4096"], "plan_max_model_len"),
    (["--max-model-len=4096"], "plan_max_model_len"),
    (["--max_model_len=4096"], "plan_max_model_len"),
    (["--gpu-memory-utilization", "0.5"], "plan_gpu_memory_utilization"),
    (["--tensor-parallel-size", "2"], "plan_tensor_parallel_size"),
    (["-tp", "2"], "plan_tensor_parallel_size"),
    (["--data-parallel-size=2"], "plan_topology"),
    (["--pipeline-parallel-size", "2"], "plan_topology"),
    (["--kv-cache-memory", "8G"], "plan_cpu_kvcache_space_gib"),
    (["--max-num-seqs", "8"], "plan_max_num_seqs"),
    (["--dtype", "half"], "plan_dtype"),
    (["--quantization=fp8"], "plan_dtype"),
    (["--port", "9000"], "plan_base_port"),
    (["--model", "/x"], "plan_model_path"),
    (["--served-model-name", "x"], "plan_served_model_name"),
    (["--enforce-eager"], "plan_enforce_eager"),
]


@pytest.mark.parametrize(("args", "instead"), OVERRIDES)
def test_an_extra_argument_that_overrides_the_plan_is_refused(args, instead):
    with pytest.raises(vllm_launch.LaunchError) as refused:
        vllm_launch.check_extra_args(args, prefix="plan_")
    assert refused.value.param == "extra_args"
    assert str(refused.value).startswith("plan_extra_args holds %s" % args[0])
    assert instead in str(refused.value)


def test_extra_arguments_that_change_nothing_planned_pass():
    args = ["--api-key", "k", "--enable-prefix-caching", "--max-num-batched-tokens=4096", "-O3", "--swap-space", "4"]
    assert vllm_launch.check_extra_args(args) == args
    assert vllm_launch.check_extra_args([8, 1.5]) == ["8", "1.5"]


@pytest.mark.parametrize("bad", [["--x\n--max-model-len=9"], [["nested"]], "--api-key k", [True]])
def test_extra_arguments_must_be_single_plain_strings(bad):
    with pytest.raises(vllm_launch.LaunchError) as refused:
        vllm_launch.check_extra_args(bad, prefix="plan_")
    assert refused.value.param == "extra_args" and "plan_extra_args" in str(refused.value)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"CUDA_VISIBLE_DEVICES": "1"}, "CUDA_VISIBLE_DEVICES"),
        ({"VLLM_CPU_KVCACHE_SPACE": "8"}, "plan_cpu_kvcache_space_gib"),
        ({"GPUFLEET_PORT": "1"}, "GPUFLEET_PORT"),
        ({"1BAD": "x"}, "not a variable name"),
        ({"OK": "two words"}, "cannot carry safely"),
        ({"OK": "$HOME"}, "cannot carry safely"),
        ({"OK": "a\nB=c"}, "cannot carry safely"),
    ],
)
def test_extra_env_refusals_name_the_variable(env, words):
    with pytest.raises(vllm_launch.LaunchError) as refused:
        vllm_launch.check_extra_env(env, prefix="plan_")
    assert refused.value.param == "extra_env" and str(refused.value).startswith("plan_extra_env") and words in str(refused.value)


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        ({"model_path": "/srv/models/my model", "served_model_name": "m"}, "model_path"),
        ({"model_path": "relative/path", "served_model_name": "m"}, "model_path"),
        ({"model_path": "/srv/../etc", "served_model_name": "m"}, "model_path"),
        ({"model_path": "/srv/m\t", "served_model_name": "m"}, "model_path"),
        ({"model_path": "/srv/m", "served_model_name": "my model"}, "served_model_name"),
        ({"model_path": "/srv/m", "served_model_name": "m\x07"}, "served_model_name"),
        ({"model_path": "/srv/m", "served_model_name": "m", "host": "0.0.0.0 --x"}, "host"),
        ({"model_path": "/srv/m", "served_model_name": "m", "http_keepalive_sec": 5}, "http_keepalive_sec"),
        ({"model_path": "/srv/m", "served_model_name": "m", "shutdown_timeout_sec": -1}, "shutdown_timeout_sec"),
        ({"model_path": "/srv/m", "served_model_name": "m", "enforce_eager": "yes"}, "enforce_eager"),
        ({"model_path": "/srv/m", "served_model_name": "m", "nonsense": 1}, "nonsense"),
    ],
)
def test_settings_that_cannot_travel_safely_are_refused(settings, param):
    with pytest.raises(vllm_launch.LaunchError) as refused:
        vllm_launch.check_settings(settings, prefix="plan_")
    assert refused.value.param == param and ("plan_" + param) in str(refused.value)


@pytest.mark.parametrize(("base_port", "words"), [(65535, "65536"), (80, "1024-65535")])
def test_ports_outside_the_range_are_refused_naming_base_port(h200x2, base_port, words):
    with pytest.raises(vllm_planner.PlanError) as refused:
        vllm_planner.plan(gpus=h200x2, model=MODEL_8B, max_model_len=8192, base_port=base_port, launch_prefix="plan_")
    assert refused.value.param == "base_port" and "plan_base_port" in str(refused.value) and words in str(refused.value)


def test_the_planner_refuses_ports_outside_1_to_65535(h200x2):
    with pytest.raises(vllm_planner.PlanError) as refused:
        vllm_planner.plan(gpus=h200x2, model=MODEL_8B, base_port=70000)
    assert refused.value.param == "base_port"


@pytest.fixture
def dp_plan(h200x2):
    return vllm_planner.plan(gpus=h200x2, model=MODEL_8B, max_model_len=8192, launch={"served_model_name": "llama"})


def test_two_instances_on_one_card_are_refused(dp_plan):
    plan = copy.deepcopy(dp_plan)
    plan["instances"][1]["gpus"] = [0]
    with pytest.raises(vllm_launch.LaunchError) as refused:
        vllm_launch.check_plan(plan, prefix="vllm_")
    assert "card 0 is given to instance 0 and to instance 1" in str(refused.value) and "vllm_plan" in str(refused.value)


def test_two_instances_on_one_port_are_refused(dp_plan):
    plan = copy.deepcopy(dp_plan)
    plan["instances"][1]["port"] = 8001
    with pytest.raises(vllm_launch.LaunchError) as refused:
        vllm_launch.check_plan(plan)
    assert refused.value.param == "base_port" and "share port 8001" in str(refused.value)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda p: p["instances"][0]["argv"].extend(["--max-model-len", "4096"]), "--max-model-len"),
        (lambda p: p.update(max_model_len=4096), "--max-model-len"),
        (lambda p: p.update(gpu_memory_utilization=0.5), "--gpu-memory-utilization"),
        (lambda p: p["instances"][0]["env"].update(CUDA_VISIBLE_DEVICES="1"), "CUDA_VISIBLE_DEVICES"),
        (lambda p: p["instances"][0]["argv"].append("--kv-cache-memory=1G"), "--kv-cache-memory"),
    ],
)
def test_a_launch_that_disagrees_with_the_plan_is_refused(dp_plan, edit, words):
    plan = copy.deepcopy(dp_plan)
    edit(plan)
    assert any(words in problem for problem in vllm_launch.launch_mismatches(plan))
    with pytest.raises(vllm_launch.LaunchError):
        vllm_launch.check_plan(plan)


def test_an_old_plan_without_launch_fields_is_refused():
    with pytest.raises(vllm_launch.LaunchError) as refused:
        vllm_launch.check_plan({"topology": "dp", "instances": [{"name": "0", "gpus": [0], "port": 8001}]}, prefix="vllm_")
    assert "vllm_plan has no device" in str(refused.value)


# ---------------------------------------------------------------------------
# systemd quoting
# ---------------------------------------------------------------------------

WORDS = [
    "--model",
    "/var/lib/vllm/models/llama",
    "a value with spaces",
    'say "hi"',
    "back\\slash",
    "100%",
    "$HOME",
    "${HOME}",
    "it's",
    ";",
    "",
    "--x=a b",
    "%i%n",
]


def test_quoting_keeps_every_word_whole():
    line = vllm_launch.exec_start("/opt/vllm/venv/bin/python", WORDS)
    words = vllm_launch.systemd_split(line)
    assert words == ["/opt/vllm/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", *WORDS]


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("--port", "--port"),
        ("8001", "8001"),
        ("a b", '"a b"'),
        ("100%", '"100%%"'),
        ("$HOME", '"$$HOME"'),
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        ("", '""'),
    ],
)
def test_systemd_quote(word, quoted):
    assert vllm_launch.systemd_quote(word) == quoted


@pytest.mark.parametrize("word", ["a\nb", "tab\there", "\x00"])
def test_control_characters_cannot_be_quoted(word):
    with pytest.raises(ValueError):
        vllm_launch.systemd_quote(word)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_accepts_the_quoted_line(tmp_path):
    """systemd itself parses the drop-in: an unbalanced quote or a bad escape would fail verify."""
    (tmp_path / "vllm@.service").write_text("[Unit]\nDescription=vLLM %i\n[Service]\nType=simple\nExecStart=/bin/false\n")
    dropin = tmp_path / "vllm@0.service.d"
    dropin.mkdir()
    line = vllm_launch.exec_start("/bin/true", WORDS)
    (dropin / "launch.conf").write_text("[Service]\nExecStart=\nExecStart=%s\n" % line)
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "vllm@0.service")], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    (dropin / "launch.conf").write_text('[Service]\nExecStart=\nExecStart=/bin/true "unbalanced\n')
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "vllm@0.service")], capture_output=True, text=True, check=False)
    assert out.returncode != 0 or out.stderr.strip() != ""
