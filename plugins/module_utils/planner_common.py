# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The planner's shared vocabulary: its constants, the figures behind its estimates, and PlanError.

The rules and figures are explained in docs/planner.md."""

from __future__ import annotations

from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import MIB

GIB = 1024**3

DTYPES = ("auto", "bfloat16", "float16", "float32", "fp8", "int4")
DEVICES = ("cuda", "cpu")
OBJECTIVES = ("throughput", "latency")
# pp: pipeline parallel over the servers of a server group (planner_group); it needs group.
TOPOLOGIES = ("auto", "dp", "tp", "vllm_dp", "pp")

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
DEFAULT_BASE_PORT = 8001
# Where the vllm role stages a model by default (its vllm_home is /var/lib/vllm).
DEFAULT_MODEL_ROOT = "/var/lib/vllm/models"
# CPU build: GiB of KV cache each worker allocates (--kv-cache-memory-bytes).
DEFAULT_CPU_KVCACHE_SPACE_GIB = 1
# Per card, outside weights and KV cache: the activation peak of a prefill chunk,
# CUDA graphs, and the memory torch does not allocate (NCCL and cuBLAS workspaces).
# About 1 GiB of activations for an 8B model at vLLM's default 8192 batched tokens,
# 0.5-1 GiB of CUDA graphs, ~0.5 GiB of workspaces: 2 GiB is the default.
DEFAULT_OVERHEAD_GIB = 2.0

# Bytes per parameter of the linear layers. int4 (AWQ/GPTQ) adds one fp16 scale and
# one 4-bit zero point per group of 128 weights: (16 + 4) / 128 bits per weight.
LINEAR_BYTES = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0, "fp8": 1.0, "int4": 0.5 + 20.0 / 8 / 128}
# Embeddings, LM head, norms, biases and MoE routers stay 16-bit under vLLM's fp8
# (it quantizes Linear layers) and in AWQ/GPTQ checkpoints.
OTHER_BYTES = 2.0
# vLLM's default kv_cache_dtype "auto" stores the cache in the activation dtype,
# which is 16-bit for every weight dtype above but float32 (the CPU build's).
KV_BYTES = 2


def other_bytes(dtype):
    """Bytes per parameter outside the linear layers (4 when the whole model is float32)."""
    return 4.0 if dtype == "float32" else OTHER_BYTES


def kv_bytes_for(dtype):
    """Bytes per KV-cache element under kv_cache_dtype auto (the activation dtype)."""
    return 4 if dtype == "float32" else KV_BYTES


# Measured on two NVLinked H200s (MISSION.md): the linear layers of an 8B Llama in
# bf16 (13.96 GB) take 3.70 ms per decode step on one card and 2.14 ms per card
# with TP=2 (1.73x).
MEASURED_ONE_CARD_MS = 3.70
MEASURED_TP2_MS = 2.14
MEASURED_LINEAR_GB = 13.96
# 13.96 GB / 3.70 ms = 3.77 TB/s of the H200's 4.8 TB/s peak.
DECODE_BANDWIDTH_EFFICIENCY = MEASURED_LINEAR_GB / MEASURED_ONE_CARD_MS / 4800.0 * 1000.0
# 1.73x on 2 cards: 86% of a perfect split.
TP_SCALING_EFFICIENCY = MEASURED_ONE_CARD_MS / MEASURED_TP2_MS / 2.0
# A decode step at batch 1 costs more than reading the weights: measured on one
# H200 (docs/bakeoff-h200x1: vLLM 0.26.0, CUDA graphs, 2026-12-01), about 0.5 ms
# per step (scheduling, sampling, the step's launches) and 18 us per layer
# (attention, norms and the small kernels between the linear layers), fitted on
# Llama-3.1-8B, Qwen2.5-7B, Mistral-7B and Qwen3-32B (4.8 to 18.6 ms per token,
# each within 1.1% of the fit; tests/fixtures/h200/measured.json). Without them
# the estimate was 10-27% optimistic. The per-layer part is split by tensor
# parallelism like the weights; the per-step part is not.
STEP_OVERHEAD_MS = 0.50
LAYER_OVERHEAD_MS = 0.018
# Two all-reduces per layer (after attention, after the MLP): 64 for a 32-layer 8B.
ALLREDUCES_PER_LAYER = 2
# Microseconds per all-reduce of one token's activations. nvlink: vLLM's in-graph
# custom all-reduce, reported at about 9 us on H100. pcie_no_p2p: an eager NCCL
# all-reduce measured 43-50 us on H100 (NVLink!); without P2P NCCL stages through
# host memory, which is no faster. pcie_p2p: vLLM's custom all-reduce also runs over
# PCIe P2P between two cards; 25 us is an estimate, not a measurement.
ALLREDUCE_US = {"nvlink": 9.0, "pcie_p2p": 25.0, "pcie_no_p2p": 45.0}
# Below this estimated per-token gain, a latency objective keeps data parallel:
# one TP instance gives up a whole independent copy for it.
LATENCY_TP_MIN_GAIN = 1.2

INTERCONNECT_RANK = {"nvlink": 2, "pcie_p2p": 1, "pcie_no_p2p": 0}
INTERCONNECT_WORDS = {"nvlink": "NVLink", "pcie_p2p": "PCIe with P2P", "pcie_no_p2p": "PCIe without P2P"}
ALLREDUCE_WORDS = {
    "nvlink": "vLLM's custom all-reduce, reported at about 9 us on H100",
    "pcie_p2p": "vLLM's custom all-reduce over PCIe P2P, estimated at 25 us (not measured)",
    "pcie_no_p2p": "NCCL through host memory; an eager NCCL all-reduce measured 43-50 us even on NVLinked H100s",
}
# Largest tensor-parallel degree the "more cards" hint looks at: one server.
MAX_CARDS_ONE_HOST = 8
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
# Bounds of what the planner reads: no real model or server comes near them, and
# they keep every loop and every figure small (a per-layer loop, a pair loop).
MAX_CONFIG_BYTES = 16 * MIB
MAX_INDEX_BYTES = 64 * MIB
MAX_MEASURED_BYTES = 64 * MIB
MAX_SAFETENSORS_FILES = 4096
MAX_GPUS = 64
MAX_GPU_INDEX = 1023
MAX_CARD_BYTES = 2**50
MAX_MODEL_LEN = 2**27
MAX_CONCURRENCY = 2**20
MAX_OVERHEAD_GIB = 1024.0
# A CPU worker's KV cache (cpu_kvcache_space_gib), GiB: from 64 MiB.
MIN_CPU_KVCACHE_GIB = 0.0625
MAX_CPU_KVCACHE_GIB = 65536
MAX_NUM_SEQS = 2**20
MAX_MEASURED_AGE_DAYS = 36500
# config.json fields: (upper bound, what it is)
CONFIG_BOUNDS = {
    "num_hidden_layers": 10000,
    "hidden_size": 2**20,
    "num_attention_heads": 2**16,
    "num_key_value_heads": 2**16,
    "head_dim": 2**16,
    "vocab_size": 2**24,
    "intermediate_size": 2**22,
    "moe_intermediate_size": 2**22,
    "num_experts_per_tok": 2**16,
    "kv_lora_rank": 2**20,
    "qk_rope_head_dim": 2**16,
    "qk_nope_head_dim": 2**16,
    "v_head_dim": 2**16,
    "q_lora_rank": 2**20,
}
MAX_EXPERTS = 2**16

SAFETENSORS_DTYPES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F8_E4M3": "fp8",
    "F8_E5M2": "fp8",
}


class PlanError(ValueError):
    """A plan that cannot be made; ``param`` names the input to change.

    ``details`` holds what was already known when the plan was refused (the model's
    name, the cards), so a report can still say which host and model were refused.
    """

    def __init__(self, param, message):
        super().__init__("%s: %s" % (param, message))
        self.param = param
        self.details = {}


def gib(value):
    return "%.1f GiB" % (value / GIB)


def fmt_ms(value):
    return "%.2f ms" % value


# ---------------------------------------------------------------------------
# The model: config.json -> a description with parameter counts

MEASURED_FORMAT = "gpufleet.serving/measured"
MEASURED_VERSION = 1
# What a measurement must share with the plan to apply to it: the same model on
# the same kind of cards (the plan's card words: count, name, memory,
# interconnect), served in the same precision, context and memory fraction.
MEASURED_MATCH_KEYS = ("model", "cards", "dtype", "max_model_len", "gpu_memory_utilization")
MEASURED_TOPOLOGIES = ("dp", "tp", "vllm_dp", "tp_dp")
# Topologies that give one endpoint per server.
SINGLE_ENDPOINT_TOPOLOGIES = ("tp", "vllm_dp")
# The bake-off objective the plan's objective reads.
MEASURED_OBJECTIVES = {"throughput": "throughput", "latency": "latency"}
DEFAULT_MEASURED_MAX_AGE_DAYS = 90
