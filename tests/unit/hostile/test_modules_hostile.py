"""Hostile input against the modules, run as Ansible runs them (a subprocess each, bounded in time).

Every case must end in a clear failure that names the input to change, within
its time limit, without a traceback, and without changing anything under its
own directory (``snapshot`` before and after). The table is built against one
temporary directory per case; ``run_cases`` runs them in parallel because a
module's start-up dominates. See harness.py for the outcome kinds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from harness import ROOT, run_cases, run_module, tally

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
LLAMA = os.path.join(FIXTURES, "models", "Llama-3.1-8B", "config.json")
QWEN_MOE = os.path.join(FIXTURES, "models", "Qwen3-30B-A3B", "config.json")
DEEPSEEK = os.path.join(FIXTURES, "models", "DeepSeek-V2-Lite", "config.json")
FACTS = os.path.join(FIXTURES, "nvml", "h200x2-device.facts.json")
SNAPSHOT = os.path.join(FIXTURES, "nvml", "h200x2-device.snapshot.json")
NAN = float("nan")
INF = float("inf")
DEEP = "[" * 100000 + "]" * 100000


def _load(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(content, bytes) else "w", encoding=None if isinstance(content, bytes) else "utf-8") as handle:
        handle.write(content)
    return path


def model_dir(d, base=LLAMA, name="m", raw=None, **changes):
    """A model directory under ``d`` with ``base``'s config.json changed (``None`` removes a key)."""
    path = os.path.join(d, name)
    os.makedirs(path, exist_ok=True)
    if raw is not None:
        _write(os.path.join(path, "config.json"), raw)
        return path
    config = _load(base)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    _write(os.path.join(path, "config.json"), json.dumps(config))
    return path


def safetensors(d, header, length=None, data=b"", name="model.safetensors"):
    """A model directory whose safetensors file holds ``header`` (bytes or an object)."""
    path = model_dir(d)
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(os.path.join(path, name), "wb") as handle:
        handle.write(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


def fifo(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkfifo(path)
    return path


def link(path, target):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)
    return path


def sparse(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def plan_args(d, model=None, **extra):
    args = {"gpu_profile": "h200", "gpu_count": 1, "model": model or model_dir(d)}
    args.update(extra)
    return {key: value for key, value in args.items() if value is not None}


def facts(**card_changes):
    data = _load(FACTS)
    for key, value in card_changes.items():
        data["gpus"][0][key] = value
    return data


def measured(d, entry_changes=None, raw=None, value=100.0):
    if raw is not None:
        return _write(os.path.join(d, "measured.json"), raw)
    entry = {
        "host": "gpu1",
        "measured_at": "2026-11-27T05:40:00Z",
        "model": "m",
        "cards": "1 x NVIDIA H200 (140.4 GiB each)",
        "dtype": "bfloat16",
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.9,
        "winners": {"throughput": {"better": "higher", "ranking": [{"topology": "dp", "value": value}]}},
    }
    entry.update(entry_changes or {})
    data = {"format": "gpufleet.serving/measured", "version": 1, "measurements": [entry]}
    return _write(os.path.join(d, "measured.json"), json.dumps(data))


def summary(**changes):
    keys = ("requests_per_s", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "latency_p50", "latency_p99")
    out = dict(dict.fromkeys(keys, 0.5), requests=4, ok=4, failed=0, output_tokens_per_s=100.0)
    out.update(changes)
    return out


def report_args(d, **changes):
    args = {
        "host": "gpu1",
        "plan": {"model": "m", "cards": "1 x NVIDIA H200 (140.4 GiB each)", "dtype": "bfloat16", "max_model_len": 512, "gpu_memory_utilization": 0.9},
        "topologies": {"dp": {"words": "dp"}, "tp": {"words": "tp"}},
        "results": [
            {"topology": "dp", "concurrency": 1, "summary": summary()},
            {"topology": "tp", "concurrency": 1, "summary": summary(output_tokens_per_s=80.0)},
        ],
        "settings": {"mix": "16:8", "concurrency": [1]},
        "measured_at": "2026-11-27T05:40:00Z",
        "report_dir": os.path.join(d, "report"),
        "measured_file": os.path.join(d, "measured.json"),
    }
    args.update(changes)
    return args


def result_with(**changes):
    return [{"topology": "dp", "concurrency": 1, "summary": summary(**changes)}]


def vllm_plan_of(**changes):
    plan = {
        "topology": "dp",
        "instances": [{"name": "0", "port": 8001, "gpus": [0]}],
        "memory": {"kv_tokens_per_instance": 1000, "max_concurrency": 2.0},
    }
    plan.update(changes)
    return plan


def snapshot_with(**device_changes):
    data = _load(SNAPSHOT)
    for key, value in device_changes.items():
        data["devices"][0][key] = value
    return json.dumps(data)


class Trickle:
    """A server that answers 200 and then sends one byte every second, forever."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while not self.stop.is_set():
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.trickle, args=(conn,), daemon=True).start()

    def trickle(self, conn):
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
            while not self.stop.is_set():
                conn.sendall(b"d")
                time.sleep(1)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()


def _lg(**changes):
    args = {"url": "http://127.0.0.1:9", "model": "m", "count": 1}
    args.update(changes)
    return args


# (id, module, build(d) -> args, expected name in the message)
CASES = [
    # --- vllm_plan: config.json of the wrong shape ----------------------------------------------------------
    ("plan-architectures-number", "vllm_plan", lambda d: plan_args(d, model_dir(d, architectures=5)), "architectures"),
    ("plan-architectures-mapping", "vllm_plan", lambda d: plan_args(d, model_dir(d, architectures={"a": 1})), "architectures"),
    ("plan-architectures-list-of-numbers", "vllm_plan", lambda d: plan_args(d, model_dir(d, architectures=[1])), "architectures"),
    ("plan-mlp-only-layers-number", "vllm_plan", lambda d: plan_args(d, model_dir(d, QWEN_MOE, mlp_only_layers=5)), "mlp_only_layers"),
    ("plan-mlp-only-layers-strings", "vllm_plan", lambda d: plan_args(d, model_dir(d, QWEN_MOE, mlp_only_layers=["x"])), "mlp_only_layers"),
    (
        "plan-config-groups-list",
        "vllm_plan",
        lambda d: plan_args(d, model_dir(d, quantization_config={"quant_method": "compressed-tensors", "config_groups": [1]})),
        "config_groups",
    ),
    (
        "plan-config-groups-weights-list",
        "vllm_plan",
        lambda d: plan_args(d, model_dir(d, quantization_config={"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": [4]}}})),
        "config_groups",
    ),
    ("plan-quantization-config-list", "vllm_plan", lambda d: plan_args(d, model_dir(d, quantization_config=[1])), "quantization_config"),
    ("plan-n-shared-experts-string", "vllm_plan", lambda d: plan_args(d, model_dir(d, DEEPSEEK, n_shared_experts="2")), "n_shared_experts"),
    ("plan-shared-expert-size-negative", "vllm_plan", lambda d: plan_args(d, model_dir(d, QWEN_MOE, shared_expert_intermediate_size=-5)), "shared_expert"),
    ("plan-moe-layer-freq-zero", "vllm_plan", lambda d: plan_args(d, model_dir(d, QWEN_MOE, moe_layer_freq=0)), "moe_layer_freq"),
    ("plan-decoder-sparse-step-zero", "vllm_plan", lambda d: plan_args(d, model_dir(d, QWEN_MOE, decoder_sparse_step=0)), "decoder_sparse_step"),
    ("plan-first-k-dense-string", "vllm_plan", lambda d: plan_args(d, model_dir(d, DEEPSEEK, first_k_dense_replace="one")), "first_k_dense_replace"),
    ("plan-layers-10e12", "vllm_plan", lambda d: plan_args(d, model_dir(d, num_hidden_layers=10**12)), "num_hidden_layers"),
    ("plan-layers-10e12-moe", "vllm_plan", lambda d: plan_args(d, model_dir(d, QWEN_MOE, num_hidden_layers=10**12)), "num_hidden_layers"),
    (
        "plan-layers-nan",
        "vllm_plan",
        lambda d: plan_args(d, model_dir(d, raw=open(LLAMA).read().replace('"num_hidden_layers": 32', '"num_hidden_layers": NaN'))),
        "num_hidden_layers",
    ),
    ("plan-hidden-size-string", "vllm_plan", lambda d: plan_args(d, model_dir(d, hidden_size="4096")), "hidden_size"),
    ("plan-hidden-size-huge", "vllm_plan", lambda d: plan_args(d, model_dir(d, hidden_size=2**60, num_attention_heads=32)), "hidden_size"),
    ("plan-vocab-negative", "vllm_plan", lambda d: plan_args(d, model_dir(d, vocab_size=-1)), "vocab_size"),
    ("plan-experts-huge", "vllm_plan", lambda d: plan_args(d, model_dir(d, QWEN_MOE, num_experts=10**15)), "num_experts"),
    ("plan-text-config-list", "vllm_plan", lambda d: plan_args(d, model_dir(d, text_config=[1], num_hidden_layers=None)), "text_config"),
    ("plan-model-type-mapping", "vllm_plan", lambda d: plan_args(d, model_dir(d, model_type={"x": 1})), "model_type"),
    ("plan-torch-dtype-list", "vllm_plan", lambda d: plan_args(d, model_dir(d, torch_dtype=["bfloat16"])), "torch_dtype"),
    (
        "plan-max-position-10e330",
        "vllm_plan",
        lambda d: plan_args(d, model_dir(d, raw=open(LLAMA).read().replace('"max_position_embeddings": 131072', '"max_position_embeddings": 1' + "0" * 330))),
        "max_model_len",
    ),
    ("plan-config-deep-nesting", "vllm_plan", lambda d: plan_args(d, model_dir(d, raw='{"a": %s}' % DEEP)), "config.json"),
    (
        "plan-config-depth-200",
        "vllm_plan",
        lambda d: plan_args(d, model_dir(d, raw=open(LLAMA).read()[:-2] + ', "x": ' + "[" * 200 + "]" * 200 + "}")),
        "config.json",
    ),
    ("plan-config-list", "vllm_plan", lambda d: plan_args(d, model_dir(d, raw="[]")), "config.json"),
    ("plan-config-not-utf8", "vllm_plan", lambda d: plan_args(d, model_dir(d, raw=b"{\xff\xfe}")), "config.json"),
    ("plan-config-fifo", "vllm_plan", lambda d: plan_args(d, os.path.dirname(fifo(os.path.join(d, "m", "config.json")))), "config.json"),
    ("plan-config-dev-zero", "vllm_plan", lambda d: plan_args(d, os.path.dirname(link(os.path.join(d, "m", "config.json"), "/dev/zero"))), "config.json"),
    (
        "plan-config-directory",
        "vllm_plan",
        lambda d: plan_args(d, os.path.dirname(os.makedirs(os.path.join(d, "m", "config.json")) or os.path.join(d, "m", "config.json"))),
        "config.json",
    ),
    ("plan-config-huge", "vllm_plan", lambda d: plan_args(d, os.path.dirname(sparse(os.path.join(d, "m", "config.json"), 300 * 1024 * 1024))), "config.json"),
    # --- vllm_plan: safetensors and index ----------------------------------------------------------------------
    (
        "plan-safetensors-directory",
        "vllm_plan",
        lambda d: plan_args(d, os.path.dirname(os.makedirs(os.path.join(model_dir(d), "model.safetensors")) or os.path.join(d, "m", "x"))),
        "model.safetensors",
    ),
    ("plan-safetensors-fifo", "vllm_plan", lambda d: plan_args(d, os.path.dirname(fifo(os.path.join(model_dir(d), "model.safetensors")))), "model.safetensors"),
    (
        "plan-safetensors-dev-zero",
        "vllm_plan",
        lambda d: plan_args(d, os.path.dirname(link(os.path.join(model_dir(d), "model.safetensors"), "/dev/zero"))),
        "model.safetensors",
    ),
    (
        "plan-safetensors-negative-offsets",
        "vllm_plan",
        lambda d: plan_args(d, safetensors(d, {"w": {"dtype": "BF16", "shape": [2], "data_offsets": [1000000000000, 0]}}, data=b"x" * 4)),
        "data_offsets",
    ),
    (
        "plan-safetensors-negative-begin",
        "vllm_plan",
        lambda d: plan_args(d, safetensors(d, {"w": {"dtype": "BF16", "shape": [2], "data_offsets": [-999999999999, 4]}}, data=b"x" * 4)),
        "data_offsets",
    ),
    (
        "plan-safetensors-string-offsets",
        "vllm_plan",
        lambda d: plan_args(d, safetensors(d, {"w": {"dtype": "BF16", "shape": [2], "data_offsets": ["0", "4"]}}, data=b"x" * 4)),
        "data_offsets",
    ),
    (
        "plan-safetensors-float-offsets",
        "vllm_plan",
        lambda d: plan_args(d, safetensors(d, {"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0.5, 4]}}, data=b"x" * 4)),
        "data_offsets",
    ),
    (
        "plan-safetensors-offsets-past-end",
        "vllm_plan",
        lambda d: plan_args(d, safetensors(d, {"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 10**15]}}, data=b"x" * 4)),
        "data_offsets",
    ),
    (
        "plan-safetensors-three-offsets",
        "vllm_plan",
        lambda d: plan_args(d, safetensors(d, {"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 2, 4]}}, data=b"x" * 4)),
        "data_offsets",
    ),
    (
        "plan-safetensors-list-dtype",
        "vllm_plan",
        lambda d: plan_args(d, safetensors(d, {"w": {"dtype": ["BF16"], "shape": [2], "data_offsets": [0, 4]}}, data=b"x" * 4)),
        "dtype",
    ),
    (
        "plan-safetensors-negative-shape",
        "vllm_plan",
        lambda d: plan_args(d, safetensors(d, {"w": {"dtype": "BF16", "shape": [-2, 3], "data_offsets": [0, 4]}}, data=b"x" * 4)),
        "shape",
    ),
    (
        "plan-safetensors-string-shape",
        "vllm_plan",
        lambda d: plan_args(d, safetensors(d, {"w": {"dtype": "BF16", "shape": "22", "data_offsets": [0, 4]}}, data=b"x" * 4)),
        "shape",
    ),
    ("plan-safetensors-tensor-not-object", "vllm_plan", lambda d: plan_args(d, safetensors(d, {"w": [1, 2]})), "model.safetensors"),
    ("plan-safetensors-header-huge", "vllm_plan", lambda d: plan_args(d, safetensors(d, b"{}", length=2**40)), "model.safetensors"),
    ("plan-safetensors-header-deep", "vllm_plan", lambda d: plan_args(d, safetensors(d, ('{"w": %s}' % DEEP).encode())), "model.safetensors"),
    (
        "plan-safetensors-header-nan",
        "vllm_plan",
        lambda d: plan_args(d, safetensors(d, b'{"w": {"dtype": "BF16", "shape": [NaN], "data_offsets": [0, 4]}}', data=b"x" * 4)),
        "model.safetensors",
    ),
    (
        "plan-safetensors-short",
        "vllm_plan",
        lambda d: plan_args(d, os.path.dirname(_write(os.path.join(model_dir(d), "model.safetensors"), "abc"))),
        "model.safetensors",
    ),
    (
        "plan-index-fifo",
        "vllm_plan",
        lambda d: plan_args(d, os.path.dirname(fifo(os.path.join(model_dir(d), "model.safetensors.index.json")))),
        "model.safetensors.index.json",
    ),
    (
        "plan-index-total-negative",
        "vllm_plan",
        lambda d: plan_args(d, os.path.dirname(_write(os.path.join(model_dir(d), "model.safetensors.index.json"), '{"metadata": {"total_size": -5}}'))),
        "total_size",
    ),
    (
        "plan-index-total-string",
        "vllm_plan",
        lambda d: plan_args(d, os.path.dirname(_write(os.path.join(model_dir(d), "model.safetensors.index.json"), '{"metadata": {"total_size": "big"}}'))),
        "total_size",
    ),
    (
        "plan-index-deep",
        "vllm_plan",
        lambda d: plan_args(d, os.path.dirname(_write(os.path.join(model_dir(d), "model.safetensors.index.json"), DEEP))),
        "model.safetensors.index.json",
    ),
    # --- vllm_plan: options ------------------------------------------------------------------------------------------
    ("plan-overhead-nan", "vllm_plan", lambda d: plan_args(d, overhead_gib=NAN), "overhead_gib"),
    ("plan-overhead-inf", "vllm_plan", lambda d: plan_args(d, overhead_gib=INF), "overhead_gib"),
    ("plan-overhead-huge", "vllm_plan", lambda d: plan_args(d, overhead_gib=1e300), "overhead_gib"),
    ("plan-overhead-string-nan", "vllm_plan", lambda d: plan_args(d, overhead_gib="nan"), "overhead_gib"),
    ("plan-max-model-len-10e330", "vllm_plan", lambda d: plan_args(d, max_model_len=10**330), "max_model_len"),
    ("plan-max-model-len-negative", "vllm_plan", lambda d: plan_args(d, max_model_len=-5), "max_model_len"),
    ("plan-max-model-len-zero", "vllm_plan", lambda d: plan_args(d, max_model_len=0), "max_model_len"),
    ("plan-concurrency-huge", "vllm_plan", lambda d: plan_args(d, concurrency=10**12), "concurrency"),
    ("plan-concurrency-negative", "vllm_plan", lambda d: plan_args(d, concurrency=-1), "concurrency"),
    ("plan-gpu-count-1000", "vllm_plan", lambda d: plan_args(d, gpu_count=1000), "gpu_count"),
    ("plan-gpu-count-10e30", "vllm_plan", lambda d: plan_args(d, gpu_count=10**30), "gpu_count"),
    ("plan-gpu-count-zero", "vllm_plan", lambda d: plan_args(d, gpu_count=0), "gpu_count"),
    ("plan-base-port-65535-8-cards", "vllm_plan", lambda d: plan_args(d, gpu_count=8, base_port=65535), "base_port"),
    ("plan-base-port-80", "vllm_plan", lambda d: plan_args(d, base_port=80), "base_port"),
    ("plan-base-port-70000", "vllm_plan", lambda d: plan_args(d, base_port=70000), "base_port"),
    ("plan-base-port-negative", "vllm_plan", lambda d: plan_args(d, base_port=-1), "base_port"),
    ("plan-utilization-nan", "vllm_plan", lambda d: plan_args(d, gpu_memory_utilization=NAN), "gpu_memory_utilization"),
    ("plan-utilization-2", "vllm_plan", lambda d: plan_args(d, gpu_memory_utilization=2.0), "gpu_memory_utilization"),
    ("plan-tensor-parallel-huge", "vllm_plan", lambda d: plan_args(d, tensor_parallel_size=10**9), "tensor_parallel_size"),
    ("plan-cpu-kvcache-huge", "vllm_plan", lambda d: plan_args(d, device="cpu", cpu_kvcache_space_gib=10**15), "cpu_kvcache_space_gib"),
    ("plan-max-num-seqs-huge", "vllm_plan", lambda d: plan_args(d, max_num_seqs=10**12), "max_num_seqs"),
    ("plan-measured-max-age-huge", "vllm_plan", lambda d: plan_args(d, measured=measured(d), measured_max_age_days=10**12), "measured_max_age_days"),
    ("plan-measured-max-age-negative", "vllm_plan", lambda d: plan_args(d, measured=measured(d), measured_max_age_days=-1), "measured_max_age_days"),
    # --- vllm_plan: the facts ------------------------------------------------------------------------------------------
    (
        "plan-facts-duplicate-index",
        "vllm_plan",
        lambda d: plan_args(d, gpu_profile=None, gpu_count=None, gpus=dict(facts(), gpus=[facts()["gpus"][0], facts()["gpus"][0]])),
        "index",
    ),
    ("plan-facts-mig-string", "vllm_plan", lambda d: plan_args(d, gpu_profile=None, gpu_count=None, gpus=facts(mig_mode="yes")), "mig_mode"),
    ("plan-facts-mig-list", "vllm_plan", lambda d: plan_args(d, gpu_profile=None, gpu_count=None, gpus=facts(mig_mode=[1, 1])), "mig_mode"),
    (
        "plan-facts-pair-from-list",
        "vllm_plan",
        lambda d: plan_args(d, gpu_profile=None, gpu_count=None, gpus=dict(facts(), pairs=[{"from": [0], "to": 1, "interconnect": "nvlink"}])),
        "pairs",
    ),
    ("plan-facts-pairs-string", "vllm_plan", lambda d: plan_args(d, gpu_profile=None, gpu_count=None, gpus=dict(facts(), pairs="nvlink")), "pairs"),
    (
        "plan-facts-1000-cards",
        "vllm_plan",
        lambda d: plan_args(d, gpu_profile=None, gpu_count=None, gpus=dict(facts(), gpus=[dict(facts()["gpus"][0], index=i) for i in range(1000)], pairs=[])),
        "gpus",
    ),
    ("plan-facts-index-huge", "vllm_plan", lambda d: plan_args(d, gpu_profile=None, gpu_count=None, gpus=facts(index=10**30)), "index"),
    (
        "plan-facts-memory-huge",
        "vllm_plan",
        lambda d: plan_args(d, gpu_profile=None, gpu_count=None, gpus=facts(memory_total_bytes=10**40)),
        "memory_total_bytes",
    ),
    ("plan-facts-name-list", "vllm_plan", lambda d: plan_args(d, gpu_profile=None, gpu_count=None, gpus=facts(name=["H200"])), "name"),
    (
        "plan-facts-compute-capability-mapping",
        "vllm_plan",
        lambda d: plan_args(d, gpu_profile=None, gpu_count=None, gpus=facts(compute_capability={"a": 1})),
        "compute_capability",
    ),
    (
        "plan-facts-free-string",
        "vllm_plan",
        lambda d: plan_args(d, gpu_profile=None, gpu_count=None, gpus=facts(memory_free_bytes="lots")),
        "memory_free_bytes",
    ),
    # --- vllm_plan: names, paths and the host -------------------------------------------------------------------------
    ("plan-served-name-space", "vllm_plan", lambda d: plan_args(d, launch={"served_model_name": "my model"}), "served_model_name"),
    ("plan-served-name-dotdot", "vllm_plan", lambda d: plan_args(d, launch={"served_model_name": "a/../../etc"}), "served_model_name"),
    ("plan-served-name-newline", "vllm_plan", lambda d: plan_args(d, launch={"served_model_name": "a\nb"}), "served_model_name"),
    ("plan-served-name-long", "vllm_plan", lambda d: plan_args(d, launch={"served_model_name": "a" * 5000}), "served_model_name"),
    ("plan-served-name-unicode", "vllm_plan", lambda d: plan_args(d, launch={"served_model_name": "mod\u00e8le\u202e"}), "served_model_name"),
    ("plan-model-dir-space", "vllm_plan", lambda d: plan_args(d, model_dir(d, name="my model")), "model"),
    ("plan-model-dir-newline", "vllm_plan", lambda d: plan_args(d, model_dir(d, name="m\nExecStart=x")), "model"),
    ("plan-model-path-dotdot", "vllm_plan", lambda d: plan_args(d, launch={"model_path": "/var/lib/vllm/../../etc"}), "model_path"),
    ("plan-model-path-relative", "vllm_plan", lambda d: plan_args(d, launch={"model_path": "models/m"}), "model_path"),
    ("plan-host-any", "vllm_plan", lambda d: plan_args(d, launch={"host": "0.0.0.0"}), "host"),
    ("plan-host-any-v6", "vllm_plan", lambda d: plan_args(d, launch={"host": "::"}), "host"),
    ("plan-host-remote", "vllm_plan", lambda d: plan_args(d, launch={"host": "10.0.0.5"}), "host"),
    ("plan-host-newline", "vllm_plan", lambda d: plan_args(d, launch={"host": "127.0.0.1\n--x"}), "host"),
    ("plan-extra-args-many", "vllm_plan", lambda d: plan_args(d, launch={"extra_args": ["--x"] * 100000}), "extra_args"),
    ("plan-extra-args-long", "vllm_plan", lambda d: plan_args(d, launch={"extra_args": ["--x=" + "a" * 100000]}), "extra_args"),
    ("plan-extra-env-many", "vllm_plan", lambda d: plan_args(d, launch={"extra_env": {"V%d" % i: "1" for i in range(10000)}}), "extra_env"),
    ("plan-shutdown-timeout-huge", "vllm_plan", lambda d: plan_args(d, launch={"shutdown_timeout_sec": 10**12}), "shutdown_timeout_sec"),
    ("plan-keepalive-huge", "vllm_plan", lambda d: plan_args(d, launch={"http_keepalive_sec": 10**12}), "http_keepalive_sec"),
    ("plan-variable-prefix-newline", "vllm_plan", lambda d: plan_args(d, variable_prefix="plan_\nx", launch={"host": "0.0.0.0"}), "variable_prefix"),
    # --- vllm_plan: the measurement file -----------------------------------------------------------------------------------
    ("plan-measured-fifo", "vllm_plan", lambda d: plan_args(d, measured=fifo(os.path.join(d, "measured.json"))), "measured"),
    ("plan-measured-dev-zero", "vllm_plan", lambda d: plan_args(d, measured=link(os.path.join(d, "measured.json"), "/dev/zero")), "measured"),
    ("plan-measured-directory", "vllm_plan", lambda d: plan_args(d, measured=d), "measured"),
    ("plan-measured-negative-throughput", "vllm_plan", lambda d: plan_args(d, measured=measured(d, value=-5.0)), "measured"),
    (
        "plan-measured-nan-throughput",
        "vllm_plan",
        lambda d: plan_args(d, measured=measured(d, raw=open(measured(d)).read().replace("100.0", "NaN"))),
        "measured",
    ),
    (
        "plan-measured-inf-throughput",
        "vllm_plan",
        lambda d: plan_args(d, measured=measured(d, raw=open(measured(d)).read().replace("100.0", "Infinity"))),
        "measured",
    ),
    ("plan-measured-deep", "vllm_plan", lambda d: plan_args(d, measured=measured(d, raw=DEEP)), "measured"),
    ("plan-measured-huge", "vllm_plan", lambda d: plan_args(d, measured=sparse(os.path.join(d, "measured.json"), 300 * 1024 * 1024)), "measured"),
    ("plan-measured-host-list", "vllm_plan", lambda d: plan_args(d, measured=measured(d, {"host": ["gpu1"]})), "measured"),
    # --- bakeoff_report ----------------------------------------------------------------------------------------------------------
    ("report-throughput-string", "bakeoff_report", lambda d: report_args(d, results=result_with(output_tokens_per_s="fast")), "output_tokens_per_s"),
    ("report-throughput-negative", "bakeoff_report", lambda d: report_args(d, results=result_with(output_tokens_per_s=-5.0)), "output_tokens_per_s"),
    ("report-throughput-nan", "bakeoff_report", lambda d: report_args(d, results=result_with(output_tokens_per_s=NAN)), "output_tokens_per_s"),
    ("report-ttft-inf", "bakeoff_report", lambda d: report_args(d, results=result_with(ttft_p99=INF)), "ttft_p99"),
    ("report-ok-string", "bakeoff_report", lambda d: report_args(d, results=result_with(ok="yes")), "ok"),
    ("report-failed-negative", "bakeoff_report", lambda d: report_args(d, results=result_with(failed=-1)), "failed"),
    (
        "report-concurrency-huge",
        "bakeoff_report",
        lambda d: report_args(d, results=[{"topology": "dp", "concurrency": 10**12, "summary": summary()}]),
        "concurrency",
    ),
    (
        "report-results-many",
        "bakeoff_report",
        lambda d: report_args(d, results=[{"topology": "dp", "concurrency": i + 1, "summary": summary()} for i in range(1500)]),
        "results",
    ),
    ("report-settings-concurrency-number", "bakeoff_report", lambda d: report_args(d, settings={"concurrency": 5}), "settings"),
    ("report-settings-deep", "bakeoff_report", lambda d: report_args(d, settings={"x": json.loads("[" * 200 + "]" * 200)}), "settings"),
    ("report-host-newline", "bakeoff_report", lambda d: report_args(d, host="gpu1\n# injected"), "host"),
    ("report-host-long", "bakeoff_report", lambda d: report_args(d, host="g" * 5000), "host"),
    ("report-plan-model-list", "bakeoff_report", lambda d: report_args(d, plan=dict(report_args(d)["plan"], model=["m"])), "model"),
    ("report-plan-max-model-len-string", "bakeoff_report", lambda d: report_args(d, plan=dict(report_args(d)["plan"], max_model_len="512")), "max_model_len"),
    (
        "report-plan-utilization-nan",
        "bakeoff_report",
        lambda d: report_args(d, plan=dict(report_args(d)["plan"], gpu_memory_utilization=NAN)),
        "gpu_memory_utilization",
    ),
    ("report-topologies-string", "bakeoff_report", lambda d: report_args(d, topologies={"dp": "dp"}), "topologies"),
    (
        "report-balance-strings",
        "bakeoff_report",
        lambda d: report_args(
            d, balance={"topology": "dp", "mix": "1:1", "concurrency": 4, "runs": {"least_conn": summary(latency_p99="x"), "round_robin": summary()}}
        ),
        "balance",
    ),
    (
        "report-balance-concurrency-string",
        "bakeoff_report",
        lambda d: report_args(d, balance={"topology": "dp", "mix": "1:1", "concurrency": "four", "runs": {"least_conn": summary(), "round_robin": summary()}}),
        "balance",
    ),
    ("report-dir-is-file", "bakeoff_report", lambda d: report_args(d, report_dir=_write(os.path.join(d, "report"), "x")), "report_dir"),
    ("report-dir-is-fifo", "bakeoff_report", lambda d: report_args(d, report_dir=fifo(os.path.join(d, "report"))), "report_dir"),
    (
        "report-measured-directory",
        "bakeoff_report",
        lambda d: report_args(d, measured_file=os.path.dirname(_write(os.path.join(d, "measured.json", "x"), "x"))),
        "measured_file",
    ),
    ("report-measured-fifo", "bakeoff_report", lambda d: report_args(d, measured_file=fifo(os.path.join(d, "measured.json"))), "measured_file"),
    (
        "report-measured-dev-zero",
        "bakeoff_report",
        lambda d: report_args(d, measured_file=link(os.path.join(d, "measured.json"), "/dev/zero")),
        "measured_file",
    ),
    ("report-measured-negative", "bakeoff_report", lambda d: report_args(d, measured_file=measured(d, value=-1.0)), "measured_file"),
    (
        "report-measured-huge",
        "bakeoff_report",
        lambda d: report_args(d, measured_file=sparse(os.path.join(d, "measured.json"), 300 * 1024 * 1024)),
        "measured_file",
    ),
    ("report-measured-deep", "bakeoff_report", lambda d: report_args(d, measured_file=measured(d, raw=DEEP)), "measured_file"),
    # --- load_generate --------------------------------------------------------------------------------------------------------------
    ("load-url-open-bracket", "load_generate", lambda d: _lg(url="http://[::1"), "url"),
    ("load-url-port-99999", "load_generate", lambda d: _lg(url="http://127.0.0.1:99999"), "url"),
    ("load-url-port-zero", "load_generate", lambda d: _lg(url="http://127.0.0.1:0"), "url"),
    ("load-url-port-letters", "load_generate", lambda d: _lg(url="http://127.0.0.1:http"), "url"),
    ("load-url-newline", "load_generate", lambda d: _lg(url="http://127.0.0.1\r\nX: y"), "url"),
    ("load-url-userinfo", "load_generate", lambda d: _lg(url="http://user:secret@127.0.0.1:8000"), "url"),
    ("load-url-query", "load_generate", lambda d: _lg(url="http://127.0.0.1:8000/?a=1"), "url"),
    ("load-count-10e9", "load_generate", lambda d: _lg(count=10**9), "count"),
    ("load-count-negative", "load_generate", lambda d: _lg(count=-1), "count"),
    ("load-concurrency-huge", "load_generate", lambda d: _lg(concurrency=10**6), "concurrency"),
    ("load-concurrency-zero", "load_generate", lambda d: _lg(concurrency=0), "concurrency"),
    ("load-prompt-50m-words", "load_generate", lambda d: _lg(mix="50000000:1"), "mix"),
    ("load-output-huge", "load_generate", lambda d: _lg(mix="1:1000000000"), "mix"),
    ("load-mix-many-kinds", "load_generate", lambda d: _lg(mix=",".join(["1:1"] * 10000)), "mix"),
    ("load-mix-negative", "load_generate", lambda d: _lg(mix="-1:4"), "mix"),
    ("load-timeout-nan", "load_generate", lambda d: _lg(timeout=NAN), "timeout"),
    ("load-timeout-inf", "load_generate", lambda d: _lg(timeout=INF), "timeout"),
    ("load-timeout-negative", "load_generate", lambda d: _lg(timeout=-1.0), "timeout"),
    ("load-timeout-huge", "load_generate", lambda d: _lg(timeout=1e12), "timeout"),
    ("load-deadline-zero", "load_generate", lambda d: _lg(deadline=0), "deadline"),
    ("load-deadline-huge", "load_generate", lambda d: _lg(deadline=10**9), "deadline"),
    ("load-deadline-nan", "load_generate", lambda d: _lg(deadline=NAN), "deadline"),
    ("load-model-space", "load_generate", lambda d: _lg(model="my model"), "model"),
    ("load-model-long", "load_generate", lambda d: _lg(model="m" * 5000), "model"),
    ("load-api-key-crlf", "load_generate", lambda d: _lg(api_key="abc\r\nX-Admin: 1"), "api_key"),
    ("load-seed-huge", "load_generate", lambda d: _lg(seed=10**400), "seed"),
    # --- vllm_instances -------------------------------------------------------------------------------------------------------------------
    ("instances-name-dotdot", "vllm_instances", lambda d: {"names": ["../../etc/passwd"], "config_dir": d}, "names"),
    ("instances-name-newline", "vllm_instances", lambda d: {"names": ["0\nx"], "config_dir": d}, "names"),
    ("instances-name-option", "vllm_instances", lambda d: {"names": ["--all"], "config_dir": d}, "names"),
    ("instances-name-long", "vllm_instances", lambda d: {"names": ["a" * 1000], "config_dir": d}, "names"),
    ("instances-names-many", "vllm_instances", lambda d: {"names": [str(i) for i in range(10000)], "config_dir": d}, "names"),
    ("instances-config-dir-file", "vllm_instances", lambda d: {"config_dir": _write(os.path.join(d, "etc"), "x")}, "config_dir"),
    ("instances-config-dir-fifo", "vllm_instances", lambda d: {"config_dir": fifo(os.path.join(d, "etc"))}, "config_dir"),
    ("instances-env-fifo", "vllm_instances", lambda d: {"config_dir": os.path.dirname(fifo(os.path.join(d, "etc", "0.env")))}, "0.env"),
    ("instances-env-dev-zero", "vllm_instances", lambda d: {"config_dir": os.path.dirname(link(os.path.join(d, "etc", "0.env"), "/dev/zero"))}, "0.env"),
    ("instances-env-huge", "vllm_instances", lambda d: {"config_dir": os.path.dirname(sparse(os.path.join(d, "etc", "0.env"), 300 * 1024 * 1024))}, "0.env"),
    (
        "instances-env-directory",
        "vllm_instances",
        lambda d: {"names": ["0"], "config_dir": os.path.dirname(os.makedirs(os.path.join(d, "etc", "0.env")) or os.path.join(d, "etc", "x"))},
        "0.env",
    ),
    ("instances-metrics-timeout-nan", "vllm_instances", lambda d: {"config_dir": d, "metrics": True, "metrics_timeout": NAN}, "metrics_timeout"),
    ("instances-metrics-timeout-negative", "vllm_instances", lambda d: {"config_dir": d, "metrics": True, "metrics_timeout": -1}, "metrics_timeout"),
    ("instances-metrics-timeout-huge", "vllm_instances", lambda d: {"config_dir": d, "metrics": True, "metrics_timeout": 1e12}, "metrics_timeout"),
    # --- vllm_report ---------------------------------------------------------------------------------------------------------------------
    ("report-instance-name-dotdot", "vllm_report", lambda d: {"plan": vllm_plan_of(instances=[{"name": "../x", "port": 8001}])}, "name"),
    ("report-instance-name-option", "vllm_report", lambda d: {"plan": vllm_plan_of(instances=[{"name": "-b", "port": 8001}])}, "name"),
    ("report-instance-name-newline", "vllm_report", lambda d: {"plan": vllm_plan_of(instances=[{"name": "0\nx", "port": 8001}])}, "name"),
    ("report-instance-name-number", "vllm_report", lambda d: {"plan": vllm_plan_of(instances=[{"name": 0, "port": 8001}])}, "name"),
    ("report-instance-port-string", "vllm_report", lambda d: {"plan": vllm_plan_of(instances=[{"name": "0", "port": "abc"}])}, "port"),
    ("report-instance-port-99999", "vllm_report", lambda d: {"plan": vllm_plan_of(instances=[{"name": "0", "port": 99999}])}, "port"),
    (
        "report-instances-many",
        "vllm_report",
        lambda d: {"plan": vllm_plan_of(instances=[{"name": str(i), "port": 1024 + i} for i in range(5000)])},
        "instances",
    ),
    (
        "report-instances-duplicate",
        "vllm_report",
        lambda d: {"plan": vllm_plan_of(instances=[{"name": "0", "port": 8001}, {"name": "0", "port": 8002}])},
        "name",
    ),
    ("report-tolerance-nan", "vllm_report", lambda d: {"plan": vllm_plan_of(), "tolerance_pct": NAN}, "tolerance_pct"),
    ("report-tolerance-inf", "vllm_report", lambda d: {"plan": vllm_plan_of(), "tolerance_pct": INF}, "tolerance_pct"),
    ("report-metrics-timeout-nan", "vllm_report", lambda d: {"plan": vllm_plan_of(), "metrics_timeout": NAN}, "metrics_timeout"),
    ("report-metrics-timeout-huge", "vllm_report", lambda d: {"plan": vllm_plan_of(), "metrics_timeout": 1e12}, "metrics_timeout"),
    (
        "report-kv-tokens-string",
        "vllm_report",
        lambda d: {"plan": vllm_plan_of(memory={"kv_tokens_per_instance": "many", "max_concurrency": 1.0})},
        "kv_tokens_per_instance",
    ),
    (
        "report-max-concurrency-nan",
        "vllm_report",
        lambda d: {"plan": vllm_plan_of(memory={"kv_tokens_per_instance": 1, "max_concurrency": NAN})},
        "max_concurrency",
    ),
    ("report-record-directory", "vllm_report", lambda d: {"plan": vllm_plan_of(), "record": d}, "record"),
    ("report-record-fifo", "vllm_report", lambda d: {"plan": vllm_plan_of(), "record": fifo(os.path.join(d, "plan.json"))}, "record"),
    ("report-record-dev-zero", "vllm_report", lambda d: {"plan": vllm_plan_of(), "record": link(os.path.join(d, "plan.json"), "/dev/zero")}, "record"),
    ("report-record-no-parent", "vllm_report", lambda d: {"plan": vllm_plan_of(), "record": os.path.join(d, "none", "plan.json")}, "record"),
    ("report-record-huge", "vllm_report", lambda d: {"plan": vllm_plan_of(), "record": sparse(os.path.join(d, "plan.json"), 300 * 1024 * 1024)}, "record"),
    # --- nvidia_gpu_facts -----------------------------------------------------------------------------------------------------------------
    ("facts-snapshot-fifo", "nvidia_gpu_facts", lambda d: {"snapshot": fifo(os.path.join(d, "s.json"))}, "snapshot"),
    ("facts-snapshot-dev-zero", "nvidia_gpu_facts", lambda d: {"snapshot": "/dev/zero"}, "snapshot"),
    ("facts-snapshot-link-dev-zero", "nvidia_gpu_facts", lambda d: {"snapshot": link(os.path.join(d, "s.json"), "/dev/zero")}, "snapshot"),
    ("facts-snapshot-directory", "nvidia_gpu_facts", lambda d: {"snapshot": d}, "snapshot"),
    ("facts-snapshot-huge", "nvidia_gpu_facts", lambda d: {"snapshot": sparse(os.path.join(d, "s.json"), 300 * 1024 * 1024)}, "snapshot"),
    ("facts-snapshot-deep", "nvidia_gpu_facts", lambda d: {"snapshot": _write(os.path.join(d, "s.json"), DEEP)}, "snapshot"),
    ("facts-snapshot-duplicate-index", "nvidia_gpu_facts", lambda d: {"snapshot": _write(os.path.join(d, "s.json"), snapshot_with(index=1))}, "index"),
    ("facts-snapshot-negative-index", "nvidia_gpu_facts", lambda d: {"snapshot": _write(os.path.join(d, "s.json"), snapshot_with(index=-1))}, "index"),
    ("facts-snapshot-huge-index", "nvidia_gpu_facts", lambda d: {"snapshot": _write(os.path.join(d, "s.json"), snapshot_with(index=10**30))}, "index"),
    (
        "facts-snapshot-many-devices",
        "nvidia_gpu_facts",
        lambda d: {"snapshot": _write(os.path.join(d, "s.json"), json.dumps({"devices": [{"index": i} for i in range(5000)]}))},
        "devices",
    ),
    (
        "facts-snapshot-process-200k",
        "nvidia_gpu_facts",
        lambda d: {"snapshot": _write(os.path.join(d, "s.json"), snapshot_with(processes=["[" * 100000 + "]" * 100000]))},
        "processes",
    ),
    (
        "facts-snapshot-processes-many",
        "nvidia_gpu_facts",
        lambda d: {"snapshot": _write(os.path.join(d, "s.json"), snapshot_with(processes=[{"pid": i} for i in range(100000)]))},
        "processes",
    ),
    ("facts-snapshot-nvlink-number", "nvidia_gpu_facts", lambda d: {"snapshot": _write(os.path.join(d, "s.json"), snapshot_with(nvlink=5))}, "nvlink"),
    ("facts-snapshot-nan", "nvidia_gpu_facts", lambda d: {"snapshot": _write(os.path.join(d, "s.json"), snapshot_with(power_limit_mw=NAN))}, "snapshot"),
    ("facts-snapshot-list", "nvidia_gpu_facts", lambda d: {"snapshot": _write(os.path.join(d, "s.json"), "[]")}, "snapshot"),
    ("facts-save-directory", "nvidia_gpu_facts", lambda d: {"save_snapshot": d}, "save_snapshot"),
    ("facts-save-fifo", "nvidia_gpu_facts", lambda d: {"save_snapshot": fifo(os.path.join(d, "s.json"))}, "save_snapshot"),
    ("facts-save-no-parent", "nvidia_gpu_facts", lambda d: {"save_snapshot": os.path.join(d, "none", "s.json")}, "save_snapshot"),
    ("facts-save-dev-zero", "nvidia_gpu_facts", lambda d: {"save_snapshot": link(os.path.join(d, "s.json"), "/dev/zero")}, "save_snapshot"),
    # --- resolve_names ------------------------------------------------------------------------------------------------------------------
    ("resolve-name-space", "resolve_names", lambda d: {"names": ["gpu 1"]}, "names"),
    ("resolve-name-newline", "resolve_names", lambda d: {"names": ["gpu1\nevil"]}, "names"),
    ("resolve-name-option", "resolve_names", lambda d: {"names": ["-gpu1"]}, "names"),
    ("resolve-name-url", "resolve_names", lambda d: {"names": ["http://gpu1/"]}, "names"),
    ("resolve-name-long", "resolve_names", lambda d: {"names": ["a" * 5000]}, "names"),
    ("resolve-names-many", "resolve_names", lambda d: {"names": ["n%d" % i for i in range(10000)]}, "names"),
    ("resolve-timeout-nan", "resolve_names", lambda d: {"names": ["localhost"], "timeout": NAN}, "timeout"),
    ("resolve-timeout-negative", "resolve_names", lambda d: {"names": ["localhost"], "timeout": -1}, "timeout"),
    ("resolve-timeout-huge", "resolve_names", lambda d: {"names": ["localhost"], "timeout": 1e12}, "timeout"),
    # --- python_package_info --------------------------------------------------------------------------------------------------------------
    ("pkginfo-name-specifier", "python_package_info", lambda d: {"name": "vllm==0.32.0"}, "name"),
    ("pkginfo-name-newline", "python_package_info", lambda d: {"name": "vllm\nx"}, "name"),
    ("pkginfo-module-dotted", "python_package_info", lambda d: {"name": "vllm", "module": "os.path", "try_import": True}, "module"),
    ("pkginfo-module-code", "python_package_info", lambda d: {"name": "vllm", "module": "__import__('os')", "try_import": True}, "module"),
    ("pkginfo-import-without-module", "python_package_info", lambda d: {"name": "vllm", "try_import": True}, "module"),
    ("pkginfo-flags-without-source", "python_package_info", lambda d: {"name": "vllm", "module": "vllm", "flags": ["--a"]}, "flags_source"),
    ("pkginfo-flag-shell", "python_package_info", lambda d: {"name": "vllm", "module": "vllm", "flags": ["--a;rm -rf /"], "flags_source": "a.py"}, "flags"),
    ("pkginfo-flags-many", "python_package_info", lambda d: {"name": "vllm", "module": "vllm", "flags": ["--a"] * 1000, "flags_source": "a.py"}, "flags"),
    (
        "pkginfo-source-dotdot",
        "python_package_info",
        lambda d: {"name": "vllm", "module": "json", "flags": ["--a"], "flags_source": "../../../etc/passwd.py"},
        "flags_source",
    ),
    (
        "pkginfo-source-absolute",
        "python_package_info",
        lambda d: {"name": "vllm", "module": "json", "flags": ["--a"], "flags_source": "/etc/x.py"},
        "flags_source",
    ),
    (
        "pkginfo-import-timeout-nan",
        "python_package_info",
        lambda d: {"name": "vllm", "module": "json", "try_import": True, "import_timeout": NAN},
        "import_timeout",
    ),
    (
        "pkginfo-import-timeout-huge",
        "python_package_info",
        lambda d: {"name": "vllm", "module": "json", "try_import": True, "import_timeout": 1e12},
        "import_timeout",
    ),
    # --- hf_snapshot ---------------------------------------------------------------------------------------------------------------------
    ("hf-repo-dotdot", "hf_snapshot", lambda d: {"repo_id": "../../etc", "dest": os.path.join(d, "m")}, "repo_id"),
    ("hf-repo-three-parts", "hf_snapshot", lambda d: {"repo_id": "a/b/c", "dest": os.path.join(d, "m")}, "repo_id"),
    ("hf-revision-option", "hf_snapshot", lambda d: {"repo_id": "org/m", "revision": "--upload-pack=x", "dest": os.path.join(d, "m")}, "revision"),
    ("hf-revision-dotdot", "hf_snapshot", lambda d: {"repo_id": "org/m", "revision": "main/../../x", "dest": os.path.join(d, "m")}, "revision"),
    ("hf-dest-relative", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": "models/m"}, "dest"),
    ("hf-dest-dotdot", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": os.path.join(d, "m", "..", "..", "etc")}, "dest"),
    ("hf-dest-root", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": "/"}, "dest"),
    ("hf-dest-newline", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": os.path.join(d, "m\nx")}, "dest"),
    ("hf-dest-file", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": _write(os.path.join(d, "m"), "x")}, "dest"),
    ("hf-dest-link", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": link(os.path.join(d, "m"), d)}, "dest"),
    ("hf-dest-no-parent", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": os.path.join(d, "none", "m")}, "dest"),
    ("hf-stamp-path", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": os.path.join(d, "m"), "stamp": "../x"}, "stamp"),
    (
        "hf-stamp-link",
        "hf_snapshot",
        lambda d: {"repo_id": "org/m", "dest": os.path.dirname(link(os.path.join(d, "m", ".s"), "/etc/passwd")), "stamp": ".s"},
        "stamp",
    ),
    ("hf-stamp-fifo", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": os.path.dirname(fifo(os.path.join(d, "m", ".s"))), "stamp": ".s"}, "stamp"),
    ("hf-patterns-many", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": os.path.join(d, "m"), "patterns": ["*.json"] * 5000}, "patterns"),
    ("hf-patterns-newline", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": os.path.join(d, "m"), "patterns": ["*.json\n"]}, "patterns"),
    ("hf-timeout-nan", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": os.path.join(d, "m"), "timeout": NAN}, "timeout"),
    ("hf-timeout-huge", "hf_snapshot", lambda d: {"repo_id": "org/m", "dest": os.path.join(d, "m"), "timeout": 1e12}, "timeout"),
]
# Cases that need a live peer get their own time limit.
TRICKLE_ID = "load-trickling-server"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    trickle = Trickle()
    cases = []
    for case_id, module, build, expect in CASES:
        d = str(base / case_id)
        os.makedirs(d)
        args = build(d)
        cases.append({"id": case_id, "module": module, "args": args, "expect": expect, "watch": d})
    d = str(base / TRICKLE_ID)
    os.makedirs(d)
    cases.append(
        {
            "id": TRICKLE_ID,
            "module": "load_generate",
            "args": _lg(url="http://127.0.0.1:%d" % trickle.port, deadline=3, timeout=60, count=2, concurrency=2),
            "expect": "deadline",
            "watch": d,
            "timeout": 20,
        }
    )
    began = time.monotonic()
    try:
        results = run_cases(cases, workers=4)
    finally:
        trickle.close()
    counts = tally(results)
    print("\nhostile modules: %d cases in %.1f s: %s" % (len(cases), time.monotonic() - began, counts))
    report = os.environ.get("GPUFLEET_HOSTILE_REPORT")
    if report:
        with open(report, "w", encoding="utf-8") as out:
            json.dump({"counts": counts, "cases": {k: [o.kind, o.msg[:300], round(o.seconds, 2), c] for k, (o, c) in results.items()}}, out, indent=1)
    yield results
    shutil.rmtree(str(base), ignore_errors=True)


def test_the_table_is_large_enough():
    assert len(CASES) + 1 >= 110
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id", [case[0] for case in CASES] + [TRICKLE_ID])
def test_hostile_input_gets_a_clear_error(outcomes, case_id):
    outcome, changed = outcomes[case_id]
    assert outcome.kind == "clear", "%s: %s after %.1f s: %s" % (case_id, outcome.kind, outcome.seconds, outcome.msg or outcome.output[-1500:])
    assert changed == [], "%s changed %s" % (case_id, changed)


FAKE_SYSTEMCTL = """#!/bin/sh
printf 'ActiveState=active\\nSubState=running\\nMainPID=0\\nNRestarts=0\\nResult=success\\nExecMainStartTimestamp=\\n'
"""


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-Inf", "-3"])
def test_vllm_instances_reads_nonfinite_metrics_as_no_count(tmp_path, value):
    """NaN or infinite request counts on /metrics are handled: no count for that instance, no traceback."""

    class Metrics(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = ('vllm:num_requests_running{engine="0"} %s\nvllm:num_requests_waiting{engine="0"} 2.0\n' % value).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
        (bin_dir / "systemctl").chmod(0o755)
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "0.env").write_text("GPUFLEET_PORT=%d\n" % httpd.server_address[1])
        outcome = run_module(
            "vllm_instances",
            {"config_dir": str(tmp_path / "etc"), "metrics": True},
            env={"PATH": "%s:%s" % (bin_dir, os.environ.get("PATH", ""))},
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert outcome.kind == "accepted", outcome.output
    instance = outcome.result["instances"][0]
    assert instance["requests_running"] is None and instance["requests_waiting"] == 2.0
    assert outcome.result["busy"] == 2
