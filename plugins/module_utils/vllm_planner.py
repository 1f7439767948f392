# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Decide how vLLM uses a server's GPUs, and say why, with the numbers.

Pure functions over plain data: the ``nvidia_gpus`` facts (or a catalogue profile),
a model's ``config.json`` (plus safetensors sizes when they are there) and the
operator's goals. ``plan()`` returns the ``vllm_plan`` dict the module publishes;
every refusal is a ``PlanError`` whose ``param`` names the input to change.

The rules, and the figures behind them, are explained in docs/planner.md.
"""

from __future__ import annotations

import datetime
import glob
import math
import os
import struct
import textwrap

from ansible_collections.gpufleet.serving.plugins.module_utils import gpu_catalog, vllm_launch
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import MIB, InputError, is_int, is_number, load_json, loads_json, regular_file
from ansible_collections.gpufleet.serving.plugins.module_utils.vllm_launch import default_max_num_seqs

GIB = 1024**3

DTYPES = ("auto", "bfloat16", "float16", "float32", "fp8", "int4")
DEVICES = ("cuda", "cpu")
OBJECTIVES = ("throughput", "latency")
TOPOLOGIES = ("auto", "dp", "tp", "vllm_dp")

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
DEFAULT_BASE_PORT = 8001
# Where the vllm role stages a model by default (its vllm_home is /var/lib/vllm).
DEFAULT_MODEL_ROOT = "/var/lib/vllm/models"
# CPU build: GiB of KV cache each worker allocates (VLLM_CPU_KVCACHE_SPACE).
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


def _fmt_ms(value):
    return "%.2f ms" % value


# ---------------------------------------------------------------------------
# The model: config.json -> a description with parameter counts
# ---------------------------------------------------------------------------


def _positive_int(config, key, where, default=None, required=True):
    value = config.get(key, default)
    if value is None and not required:
        return None
    if not is_int(value, 1, CONFIG_BOUNDS.get(key)):
        if key not in config and default is None:
            raise PlanError(
                "model",
                "%s has no %r; the planner needs it as a positive integer: point model at the complete Hugging Face config.json" % (where, key),
            )
        if is_int(value, 1):
            raise PlanError("model", "%s: %r is %d, above the %d the planner accepts; fix the config.json" % (where, key, value, CONFIG_BOUNDS[key]))
        raise PlanError("model", "%s: %r must be a positive integer, not %r; fix the config.json" % (where, key, value))
    return value


def _count_field(config, key, where, low=0, high=10000):
    """An optional whole-number field of config.json (None or absent gives ``low``)."""
    value = config.get(key)
    if value is None:
        return low
    if not is_int(value, low, high):
        raise PlanError("model", "%s: %r must be a whole number from %d to %d, not %r; fix the config.json" % (where, key, low, high, value))
    return value


def _check_config_types(config, text, where):
    """Refuse config.json fields of the wrong type before any arithmetic uses them."""
    for scope in (config, text):
        architectures = scope.get("architectures")
        if architectures is not None and (
            not isinstance(architectures, list) or not all(isinstance(a, str) and 0 < len(a) <= 256 for a in architectures) or len(architectures) > 64
        ):
            raise PlanError("model", "%s: 'architectures' must be a list of class names (strings), not %r; fix the config.json" % (where, architectures))
        model_type = scope.get("model_type")
        if model_type is not None and (not isinstance(model_type, str) or len(model_type) > 256):
            raise PlanError("model", "%s: 'model_type' must be a string, not %r; fix the config.json" % (where, model_type))
        for key in ("torch_dtype", "dtype"):
            value = scope.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > 64):
                raise PlanError("model", "%s: %r must be a string such as bfloat16, not %r; fix the config.json" % (where, key, value))
    layers = text.get("mlp_only_layers")
    if layers is not None and (not isinstance(layers, list) or len(layers) > 10000 or not all(is_int(i, 0) for i in layers)):
        raise PlanError("model", "%s: 'mlp_only_layers' must be a list of layer numbers, not %r; fix the config.json" % (where, layers))


def _kind_of_layer(index, spec):
    """True when layer ``index`` is a mixture-of-experts layer (DeepSeek, Qwen-MoE, Mixtral rules)."""
    moe = spec["moe"]
    if not moe:
        return False
    return (
        index >= moe["first_dense_layers"]
        and index % moe["layer_freq"] == 0
        and (index + 1) % moe["sparse_step"] == 0
        and index not in moe["dense_only_layers"]
    )


def describe_model(config, where="config.json"):
    """Shape and parameter counts of a decoder-only model from its Hugging Face config.

    Handles dense models (Llama, Mistral, Qwen2, Gemma 2, Phi-3), mixture-of-experts
    (Mixtral ``num_local_experts``, Qwen-MoE ``num_experts``, DeepSeek
    ``n_routed_experts``: every expert counts for memory) and multi-head latent
    attention (DeepSeek ``kv_lora_rank``). MLPs are gated (SwiGLU/GeGLU: gate, up and
    down projections), as in every family above.
    """
    if not isinstance(config, dict):
        raise PlanError("model", "%s must hold a JSON object" % where)
    text = config
    if config.get("text_config") is not None and not isinstance(config.get("text_config"), dict):
        raise PlanError("model", "%s: 'text_config' must be an object, not %r; fix the config.json" % (where, config["text_config"]))
    if isinstance(config.get("text_config"), dict) and "num_hidden_layers" not in config:
        text = config["text_config"]
    _check_config_types(config, text, where)
    model_type = str(text.get("model_type") or config.get("model_type") or "")
    architectures = config.get("architectures") or [model_type or "unknown"]
    layers = _positive_int(text, "num_hidden_layers", where)
    hidden = _positive_int(text, "hidden_size", where)
    heads = _positive_int(text, "num_attention_heads", where)
    vocab = _positive_int(text, "vocab_size", where)
    kv_heads = _positive_int(text, "num_key_value_heads", where, default=heads)
    head_dim = _positive_int(text, "head_dim", where, required=False)
    if head_dim is None:
        if hidden % heads:
            raise PlanError("model", "%s: hidden_size %d is not a multiple of num_attention_heads %d and head_dim is missing" % (where, hidden, heads))
        head_dim = hidden // heads
    if kv_heads > heads or heads % kv_heads:
        raise PlanError("model", "%s: num_key_value_heads %d must divide num_attention_heads %d" % (where, kv_heads, heads))
    # Gemma ties the LM head to the embeddings unless told otherwise; the other
    # families here default to separate weights.
    tied = text.get("tie_word_embeddings", config.get("tie_word_embeddings", model_type.startswith("gemma")))
    if not isinstance(tied, bool):
        raise PlanError("model", "%s: tie_word_embeddings must be true or false, not %r" % (where, tied))

    # --- attention ---------------------------------------------------------
    mla = None
    if text.get("kv_lora_rank") is not None:
        mla = {
            "kv_lora_rank": _positive_int(text, "kv_lora_rank", where),
            "qk_rope_head_dim": _positive_int(text, "qk_rope_head_dim", where),
            "qk_nope_head_dim": _positive_int(text, "qk_nope_head_dim", where),
            "v_head_dim": _positive_int(text, "v_head_dim", where),
            "q_lora_rank": _positive_int(text, "q_lora_rank", where, required=False),
        }
        qk = mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"]
        attn_linear = 0
        attn_small = mla["kv_lora_rank"]  # kv_a_layernorm
        if mla["q_lora_rank"]:
            attn_linear += hidden * mla["q_lora_rank"] + mla["q_lora_rank"] * heads * qk
            attn_small += mla["q_lora_rank"]  # q_a_layernorm
        else:
            attn_linear += hidden * heads * qk
        attn_linear += hidden * (mla["kv_lora_rank"] + mla["qk_rope_head_dim"])  # kv_a_proj_with_mqa
        attn_linear += mla["kv_lora_rank"] * heads * (mla["qk_nope_head_dim"] + mla["v_head_dim"])  # kv_b_proj
        attn_linear += heads * mla["v_head_dim"] * hidden  # o_proj
    else:
        q_out = heads * head_dim
        kv_out = kv_heads * head_dim
        attn_linear = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
        attn_small = 0
        # Qwen2 puts biases on q, k and v (hard-coded, not in config.json);
        # attention_bias=true (Llama-style configs) adds them to all four projections.
        if model_type in ("qwen2", "qwen2_moe"):
            attn_small += q_out + 2 * kv_out
        elif text.get("attention_bias") is True:
            attn_small += q_out + 2 * kv_out + hidden
        if model_type in ("qwen3", "qwen3_moe"):
            attn_small += 2 * head_dim  # q_norm, k_norm
    norms_per_layer = (4 if model_type.startswith(("gemma2", "gemma3")) else 2) * hidden

    # --- MLP / experts -----------------------------------------------------
    experts = None
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        if isinstance(text.get(key), int) and not isinstance(text.get(key), bool) and text[key] > 1:
            if text[key] > MAX_EXPERTS:
                raise PlanError("model", "%s: %r is %d, above the %d experts the planner accepts; fix the config.json" % (where, key, text[key], MAX_EXPERTS))
            experts = text[key]
            break
    moe = None
    if experts:
        expert_inter = _positive_int(text, "moe_intermediate_size", where, required=False) or _positive_int(text, "intermediate_size", where)
        shared_inter = _count_field(text, "n_shared_experts", where, 0, MAX_EXPERTS) * expert_inter + _count_field(
            text, "shared_expert_intermediate_size", where, 0, 2**22
        )
        moe = {
            "experts": experts,
            "experts_per_token": _positive_int(text, "num_experts_per_tok", where, default=2),
            "expert_intermediate_size": expert_inter,
            "shared_intermediate_size": shared_inter,
            "shared_expert_gate": bool(text.get("shared_expert_intermediate_size")),
            "first_dense_layers": _count_field(text, "first_k_dense_replace", where, 0, 10000),
            "layer_freq": _count_field(text, "moe_layer_freq", where, 1, 10000),
            "sparse_step": _count_field(text, "decoder_sparse_step", where, 1, 10000),
            "dense_only_layers": set(text.get("mlp_only_layers") or []),
        }
    spec = {"moe": moe}
    moe_layers = sum(1 for index in range(layers) if _kind_of_layer(index, spec))
    dense_layers = layers - moe_layers
    intermediate = _positive_int(text, "intermediate_size", where) if dense_layers or not moe else text.get("intermediate_size")
    dense_mlp = dense_layers * 3 * hidden * intermediate if dense_layers else 0
    expert_linear = 0
    moe_small = 0
    if moe_layers:
        expert_linear = moe_layers * moe["experts"] * 3 * hidden * moe["expert_intermediate_size"]
        dense_mlp += moe_layers * 3 * hidden * moe["shared_intermediate_size"]
        moe_small = moe_layers * (hidden * moe["experts"] + (hidden if moe["shared_expert_gate"] else 0))

    embed = vocab * hidden
    lm_head = 0 if tied else vocab * hidden
    attn_total = layers * attn_linear
    small = layers * (attn_small + norms_per_layer) + hidden + moe_small
    linear = attn_total + dense_mlp + expert_linear
    params = embed + lm_head + linear + small
    # What one decode step at batch 1 reads: the LM head (the embedding matrix when
    # tied), all attention and dense MLP weights, and only the routed experts in use.
    active_expert = expert_linear * moe["experts_per_token"] // moe["experts"] if moe_layers else 0
    decode_linear = attn_total + dense_mlp + active_expert
    decode_other = vocab * hidden + small
    max_len = text.get("max_position_embeddings")
    if is_int(max_len, MAX_MODEL_LEN + 1):
        max_len = MAX_MODEL_LEN + 1  # refused as max_model_len unless one is set
    return {
        "architecture": architectures[0],
        "model_type": model_type,
        "layers": layers,
        "hidden_size": hidden,
        "attention_heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "tied_embeddings": tied,
        "mla": mla,
        "moe": moe,
        "moe_layers": moe_layers,
        "max_position_embeddings": max_len if isinstance(max_len, int) and not isinstance(max_len, bool) and max_len > 0 else None,
        "params": params,
        "params_linear": linear,
        "params_other": params - linear,
        "params_decode_linear": decode_linear,
        "params_decode_other": decode_other,
    }


def kv_bytes_per_token(spec, tp=1, kv_bytes=None):
    """KV-cache bytes one token takes on one card of a ``tp``-way instance.

    Standard attention: 2 (K and V) x layers x KV heads x head size x bytes; TP splits
    the KV heads (a head is replicated when there are fewer heads than ranks).
    MLA caches one latent vector (kv_lora_rank) plus the RoPE key (qk_rope_head_dim)
    per layer, and vLLM keeps the whole latent on every TP rank.
    ``kv_bytes`` defaults to the spec's own (``kv_bytes``, set for float32) or 2.
    """
    if kv_bytes is None:
        kv_bytes = spec.get("kv_bytes", KV_BYTES)
    if spec["mla"]:
        return spec["layers"] * (spec["mla"]["kv_lora_rank"] + spec["mla"]["qk_rope_head_dim"]) * kv_bytes
    heads_per_card = max(1, -(-spec["kv_heads"] // tp))
    return 2 * spec["layers"] * heads_per_card * spec["head_dim"] * kv_bytes


def load_model_config(path):
    """(name, model_dir, config) for a model directory or a path to its config.json."""
    if not path:
        raise PlanError("model", "give the path of a model directory or of its config.json")
    path = os.path.expanduser(str(path))
    if os.path.isdir(path):
        model_dir, config_path = path, os.path.join(path, "config.json")
    else:
        model_dir, config_path = os.path.dirname(path) or ".", path
    if not os.path.lexists(config_path):
        raise PlanError("model", "no config.json at %s: point model at a model directory (with config.json) or at the config.json itself" % config_path)
    try:
        config = load_json(config_path, MAX_CONFIG_BYTES, "config.json", constants=True)
    except InputError as exc:
        raise PlanError("model", "%s: copy the model's config.json there again" % exc) from None
    if not isinstance(config, dict):
        raise PlanError("model", "%s must hold a JSON object, not %s" % (config_path, type(config).__name__))
    name = os.path.basename(os.path.normpath(os.path.abspath(model_dir))) or str(config.get("_name_or_path") or "model")
    return name, model_dir, config, config_path


# ---------------------------------------------------------------------------
# Weights on disk: model.safetensors.index.json or safetensors headers
# ---------------------------------------------------------------------------


def read_safetensors_header(path):
    """The JSON header of a safetensors file: 8-byte little-endian length, then JSON.

    Returns ``(header, data_bytes)``: the parsed header and the bytes after it (where the offsets point).
    """
    try:
        size = regular_file(path, 2**62, "safetensors file")
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise PlanError("model", "%s is too short to be a safetensors file" % path)
            (length,) = struct.unpack("<Q", raw)
            if length > SAFETENSORS_MAX_HEADER:
                raise PlanError("model", "%s announces a %d-byte header; that is not a safetensors file" % (path, length))
            if length > size - 8:
                raise PlanError("model", "%s ends inside its safetensors header (truncated download?)" % path)
            blob = handle.read(length)
    except (InputError, OSError) as exc:
        raise PlanError("model", "%s; remove it or download it again" % exc) from None
    if len(blob) != length:
        raise PlanError("model", "%s ends inside its safetensors header (truncated download?)" % path)
    try:
        header = loads_json(blob, "header")
    except InputError as exc:
        raise PlanError("model", "%s has an unreadable safetensors header: %s; download it again" % (path, exc)) from None
    if not isinstance(header, dict):
        raise PlanError("model", "%s has a safetensors header that is not a JSON object" % path)
    return header, size - 8 - length


def _tensor_bytes(path, name, tensor, data_bytes):
    """(bytes, elements, dtype) of one tensor of a safetensors header, checked against the file."""
    where = "%s: tensor %r" % (path, name)
    if not isinstance(tensor, dict):
        raise PlanError("model", "%s is not an object with dtype, shape and data_offsets" % where)
    offsets = tensor.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o, 0) for o in offsets):
        raise PlanError("model", "%s: data_offsets must be two whole numbers, 0 or more, not %r; download the file again" % (where, offsets))
    begin, end = offsets
    if begin > end or end > data_bytes:
        raise PlanError(
            "model", "%s: data_offsets %r do not lie within the file's %d data bytes (begin <= end); download the file again" % (where, offsets, data_bytes)
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) > 16 or not all(is_int(s, 0, 2**40) for s in shape):
        raise PlanError("model", "%s: shape must be a list of whole numbers, 0 or more, not %r; download the file again" % (where, shape))
    dtype = tensor.get("dtype")
    if not isinstance(dtype, str) or len(dtype) > 32:
        raise PlanError("model", "%s: dtype must be a string such as BF16, not %r; download the file again" % (where, dtype))
    count = 1
    for size in shape:
        count *= size
    return end - begin, count, dtype


def checkpoint_weights(model_dir):
    """Exact weight bytes from the checkpoint, without loading it; None without one.

    ``model.safetensors.index.json`` carries ``metadata.total_size``; otherwise each
    ``*.safetensors`` header lists every tensor's byte range, dtype and shape.
    """
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.lexists(index):
        try:
            content = load_json(index, MAX_INDEX_BYTES, "safetensors index")
        except InputError as exc:
            raise PlanError("model", "%s; download model.safetensors.index.json again" % exc) from None
        metadata = content.get("metadata") if isinstance(content, dict) else None
        if not isinstance(content, dict) or not isinstance(metadata, (dict, type(None))):
            raise PlanError("model", "%s is not a safetensors index (an object with metadata); download it again" % index)
        total = (metadata or {}).get("total_size")
        if total is not None and not is_int(total, 1, 2**60):
            raise PlanError("model", "%s: metadata.total_size must be a positive whole number of bytes, not %r; download it again" % (index, total))
        if total is not None:
            return {"source": "model.safetensors.index.json", "bytes": total, "params": None, "dtype": None}
    files = sorted(glob.glob(os.path.join(glob.escape(model_dir), "*.safetensors")))
    if not files:
        return None
    if len(files) > MAX_SAFETENSORS_FILES:
        raise PlanError("model", "%s holds %d safetensors files, more than the %d the planner reads" % (model_dir, len(files), MAX_SAFETENSORS_FILES))
    total_bytes = 0
    params = 0
    by_dtype = {}
    for path in files:
        header, data_bytes = read_safetensors_header(path)
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            size, count, kind = _tensor_bytes(path, name, tensor, data_bytes)
            total_bytes += size
            params += count
            by_dtype[kind] = by_dtype.get(kind, 0) + size
    dominant = max(by_dtype, key=by_dtype.get) if by_dtype else None
    dtype = SAFETENSORS_DTYPES.get(dominant)
    return {
        "source": "the headers of %d safetensors file%s" % (len(files), "" if len(files) == 1 else "s"),
        "bytes": total_bytes,
        # packed integer weights (GPTQ/AWQ int32) do not count parameters one per element
        "params": params if dtype else None,
        "dtype": dtype,
    }


def checkpoint_format(config):
    """What the checkpoint stores: bfloat16/float16/float32, fp8, int4, or None (unknown)."""
    quant = config.get("quantization_config")
    if quant is not None and not isinstance(quant, dict):
        raise PlanError("model", "config.json: quantization_config must be an object, not %r; fix the config.json" % (quant,))
    if isinstance(quant, dict):
        method = str(quant.get("quant_method") or "").lower()
        bits = quant.get("bits", quant.get("w_bit"))
        if method in ("fp8", "fbgemm_fp8"):
            return "fp8"
        if method in ("awq", "gptq", "awq_marlin", "gptq_marlin", "marlin") and bits == 4:
            return "int4"
        if method == "compressed-tensors":
            groups = quant.get("config_groups") or {}
            if not isinstance(groups, dict) or not all(isinstance(g, dict) and isinstance(g.get("weights") or {}, dict) for g in groups.values()):
                raise PlanError(
                    "dtype", "config.json: quantization_config.config_groups must map group names to objects with a weights object, not %r" % (groups,)
                )
            weights = [group.get("weights") or {} for group in groups.values()]
            if weights and all(w.get("num_bits") == 4 for w in weights):
                return "int4"
            if weights and all(w.get("num_bits") == 8 and w.get("type") == "float" for w in weights):
                return "fp8"
        raise PlanError(
            "dtype",
            "config.json declares quantization_config quant_method=%r bits=%r, which the planner cannot size; "
            "set dtype to what the weights take per parameter (fp8 or int4)" % (method, bits),
        )
    stored = config.get("torch_dtype") or config.get("dtype")
    if stored is None and isinstance(config.get("text_config"), dict):
        stored = config["text_config"].get("torch_dtype") or config["text_config"].get("dtype")
    return {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}.get(str(stored)) if stored else None


def resolve_dtype(requested, stored):
    """(dtype the weights take in memory, note for the reasons) for dtype=requested."""
    if requested == "auto":
        if stored in ("fp8", "int4", "bfloat16", "float16"):
            return stored, "dtype auto takes the checkpoint's %s" % stored
        if stored == "float32":
            return "bfloat16", "dtype auto: vLLM casts this float32 checkpoint to 16 bits (planned as bfloat16)"
        return "bfloat16", "dtype auto: config.json names no torch_dtype, planned as bfloat16"
    if stored in ("fp8", "int4") and requested != stored:
        raise PlanError("dtype", "the checkpoint is already quantized to %s; vLLM serves it as is: set dtype to auto or %s" % (stored, stored))
    return requested, "dtype %s as requested" % requested


def weight_bytes(spec, dtype):
    """Weight bytes computed from the parameter counts for a dtype."""
    return math.ceil(spec["params_linear"] * LINEAR_BYTES[dtype] + spec["params_other"] * other_bytes(dtype))


def _decode_bytes(spec, dtype):
    return spec["params_decode_linear"] * LINEAR_BYTES[dtype] + spec["params_decode_other"] * other_bytes(dtype)


# ---------------------------------------------------------------------------
# The cards
# ---------------------------------------------------------------------------


def _check_cards(facts):
    if not isinstance(facts, dict):
        raise PlanError("gpus", "must be the nvidia_gpus facts (a dict), not %s" % type(facts).__name__)
    if not facts.get("available"):
        raise PlanError(
            "gpus",
            "the facts say no GPU is usable (%s): install the driver and nvidia-ml-py, or plan with gpu_profile and gpu_count"
            % (facts.get("reason") or "no reason given"),
        )
    cards = facts.get("gpus")
    if not isinstance(cards, list) or not cards:
        raise PlanError("gpus", "the facts list zero cards: there is nothing to plan on; check the host, or plan with gpu_profile and gpu_count")
    if len(cards) > MAX_GPUS:
        raise PlanError("gpus", "the facts list %d cards, more than the %d of one server the planner plans for; check the facts" % (len(cards), MAX_GPUS))
    checked = []
    seen = set()
    for position, card in enumerate(cards):
        if not isinstance(card, dict):
            raise PlanError("gpus", "gpus[%d] is not a dict" % position)
        index = card.get("index")
        total = card.get("memory_total_bytes")
        if not is_int(index, 0, MAX_GPU_INDEX):
            raise PlanError("gpus", "gpus[%d] has no valid index (a card number from 0 to %d), not %r" % (position, MAX_GPU_INDEX, index))
        if index in seen:
            raise PlanError(
                "gpus",
                "gpus[%d] repeats card index %d: two instances would share CUDA_VISIBLE_DEVICES=%d; read the facts again (nvidia_gpu_facts)"
                % (position, index, index),
            )
        seen.add(index)
        if not is_int(total, 1, MAX_CARD_BYTES):
            raise PlanError("gpus", "card %d has no valid memory_total_bytes (a positive whole number up to 2**50), not %r" % (index, total))
        free = card.get("memory_free_bytes")
        if free is not None and not is_int(free, 0, MAX_CARD_BYTES):
            raise PlanError("gpus", "card %d: memory_free_bytes must be a whole number of bytes or null, not %r" % (index, free))
        if card.get("name") is not None and (not isinstance(card["name"], str) or len(card["name"]) > 256):
            raise PlanError("gpus", "card %d: name must be a string, not %r" % (index, card["name"]))
        cc = card.get("compute_capability")
        if cc is not None and (not isinstance(cc, (str, int, float)) or isinstance(cc, bool) or len(str(cc)) > 16):
            raise PlanError("gpus", "card %d: compute_capability must be a string such as 9.0, not %r" % (index, cc))
        mig = card.get("mig_mode")
        if mig is None:
            mig = {}
        if not isinstance(mig, dict) or not all(isinstance(mig.get(k, False), (bool, type(None))) for k in ("current", "pending")):
            raise PlanError("gpus", "card %d: mig_mode must be {current: bool, pending: bool} or null, not %r" % (index, mig))
        if mig.get("current"):
            raise PlanError(
                "gpus",
                "card %d (%s) has MIG enabled: vLLM takes whole cards by index and cannot use MIG instances "
                "(nor UUIDs) in CUDA_VISIBLE_DEVICES; disable MIG (nvidia-smi -i %d -mig 0, then reset the card) and plan again"
                % (index, card.get("name"), index),
            )
        checked.append(card)
    return sorted(checked, key=lambda card: card["index"])


def _links(facts):
    links = {}
    pairs = facts.get("pairs")
    if pairs is None:
        return links
    if not isinstance(pairs, list) or len(pairs) > MAX_GPUS * MAX_GPUS:
        raise PlanError("gpus", "pairs must be the list of card pairs from nvidia_gpu_facts (at most %d), not %r" % (MAX_GPUS * MAX_GPUS, type(pairs).__name__))
    for position, pair in enumerate(pairs):
        if not isinstance(pair, dict) or not is_int(pair.get("from"), 0, MAX_GPU_INDEX) or not is_int(pair.get("to"), 0, MAX_GPU_INDEX):
            raise PlanError("gpus", "pairs[%d] must be an object with card indices from and to, not %r" % (position, pair))
        if pair.get("interconnect") in INTERCONNECT_RANK:
            links[(pair["from"], pair["to"])] = pair["interconnect"]
    return links


def group_interconnect(links, indices):
    """The weakest link between any two cards of a group ("pcie_no_p2p" when unknown)."""
    worst = "nvlink"
    for first in indices:
        for second in indices:
            if first == second:
                continue
            link = links.get((first, second), "pcie_no_p2p")
            if INTERCONNECT_RANK[link] < INTERCONNECT_RANK[worst]:
                worst = link
    return worst


# ---------------------------------------------------------------------------
# Fit and speed
# ---------------------------------------------------------------------------


def tp_sizes(spec, limit):
    """Tensor-parallel degrees vLLM accepts for this model, up to ``limit``.

    TP must divide the attention heads; KV heads are split when TP divides them and
    replicated when TP is a multiple of them.
    """
    kv = spec["attention_heads"] if spec["mla"] else spec["kv_heads"]
    return [t for t in range(1, limit + 1) if spec["attention_heads"] % t == 0 and (kv % t == 0 or t % kv == 0)]


def fit(spec, weights, tp, *, budget, overhead, tokens):
    """Per-card memory of a ``tp``-way instance holding ``tokens`` tokens of KV cache."""
    weights_card = math.ceil(weights / float(tp))
    kv_token = kv_bytes_per_token(spec, tp)
    room = budget - weights_card - overhead
    kv_tokens = int(room // kv_token) if room > 0 else 0
    return {
        "tp": tp,
        "weights_card": weights_card,
        "kv_token_card": kv_token,
        "kv_card": kv_token * tokens,
        "need": weights_card + kv_token * tokens + overhead,
        "kv_tokens": kv_tokens,
        "fits": kv_tokens >= tokens,
    }


def decode_ms(decode_bytes, bandwidth_gbs, tp, link, layers):
    """Estimated ms per token at batch 1: every weight read once per token, the layers' own kernels, the step's overhead."""
    one_card = decode_bytes / (bandwidth_gbs * 1e9 * DECODE_BANDWIDTH_EFFICIENCY) * 1000.0 + LAYER_OVERHEAD_MS * layers
    if tp == 1:
        return one_card + STEP_OVERHEAD_MS
    return one_card / tp / TP_SCALING_EFFICIENCY + ALLREDUCES_PER_LAYER * layers * ALLREDUCE_US[link] / 1000.0 + STEP_OVERHEAD_MS


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------


def _check_inputs(*, dtype, max_model_len, concurrency, gpu_memory_utilization, objective, topology, tensor_parallel_size, base_port, overhead_gib):
    if dtype not in DTYPES:
        raise PlanError("dtype", "%r is not a dtype the planner knows; use one of %s" % (dtype, ", ".join(DTYPES)))
    if objective not in OBJECTIVES:
        raise PlanError("objective", "%r is not an objective; use throughput or latency" % (objective,))
    if topology not in TOPOLOGIES:
        raise PlanError("topology", "%r is not a topology; use one of %s" % (topology, ", ".join(TOPOLOGIES)))
    for name, value, high in (("max_model_len", max_model_len, MAX_MODEL_LEN), ("tensor_parallel_size", tensor_parallel_size, MAX_GPUS)):
        if value is not None and not is_int(value, 1, high):
            raise PlanError(name, "must be a whole number from 1 to %d, not %r" % (high, value))
    if not is_int(concurrency, 1, MAX_CONCURRENCY):
        raise PlanError("concurrency", "must be a whole number of sequences from 1 to %d, not %r" % (MAX_CONCURRENCY, concurrency))
    if not is_number(gpu_memory_utilization) or not 0 < gpu_memory_utilization <= 1:
        raise PlanError("gpu_memory_utilization", "must be a fraction in (0, 1], like vLLM's default 0.9, not %r" % (gpu_memory_utilization,))
    # 1-65535 here; the launch (vllm_launch.check_plan) then holds every instance's port to 1024-65535.
    if not is_int(base_port, 1, 65535):
        raise PlanError("base_port", "must be a TCP port between 1 and 65535, not %r" % (base_port,))
    if not is_number(overhead_gib, 0, MAX_OVERHEAD_GIB):
        raise PlanError("overhead_gib", "must be a finite number of GiB from 0 to %g, not %r" % (MAX_OVERHEAD_GIB, overhead_gib))


def _model_words(name, spec):
    if spec["moe"]:
        kind = "mixture of experts, %d experts, %d per token; every expert counts for memory" % (
            spec["moe"]["experts"],
            spec["moe"]["experts_per_token"],
        )
    else:
        kind = "dense"
    if spec["mla"]:
        kind += ", multi-head latent attention"
    return "%s (%s, %s)" % (name, spec["architecture"], kind)


def _kv_words(spec):
    if spec["mla"]:
        mla = spec["mla"]
        return "%d layers x (%d latent + %d RoPE key) x %d bytes = %d bytes per token, kept whole on every TP rank" % (
            spec["layers"],
            mla["kv_lora_rank"],
            mla["qk_rope_head_dim"],
            spec.get("kv_bytes", KV_BYTES),
            kv_bytes_per_token(spec),
        )
    return "2 x %d layers x %d KV heads x %d head size x %d bytes = %d bytes per token" % (
        spec["layers"],
        spec["kv_heads"],
        spec["head_dim"],
        spec.get("kv_bytes", KV_BYTES),
        kv_bytes_per_token(spec),
    )


def _fit_words(result, overhead):
    return "%s weights + %s KV cache + %s overhead = %s" % (gib(result["weights_card"]), gib(result["kv_card"]), gib(overhead), gib(result["need"]))


def _cards_words(cards, budget, utilization, link):
    names = sorted({card.get("name") or "unknown card" for card in cards})
    smallest = min(card["memory_total_bytes"] for card in cards)
    text = "%d x %s (%s each" % (len(cards), " / ".join(names), gib(smallest))
    if len(cards) > 1:
        text += ", %s" % INTERCONNECT_WORDS.get(link, link)
    return text + ")"


def _nowhere(ctx):
    """The PlanError for a model that fits no tensor-parallel split of these cards."""
    spec, n, budget, overhead, tokens = ctx["spec"], ctx["n"], ctx["budget"], ctx["overhead"], ctx["tokens"]
    sizes = tp_sizes(spec, n)
    widest = sizes[-1]
    best = fit(spec, ctx["weights"], widest, budget=budget, overhead=overhead, tokens=tokens)
    short = best["need"] - budget
    split = "one card needs" if widest == 1 else "even with tensor parallel %d each card needs" % widest
    message = "%s in %s does not fit on %s: the weights alone are %s; %s %s, %s (%.0f%%) more than the %s usable per card at gpu_memory_utilization %.2f." % (
        ctx["name"],
        ctx["dtype"],
        ctx["cards_words"],
        gib(ctx["weights"]),
        split,
        _fit_words(best, overhead),
        gib(short),
        100.0 * short / budget,
        gib(budget),
        ctx["utilization"],
    )

    def tokens_that_fit(weights):
        """(tp, tokens) of the widest split that holds the weights with some KV cache, or None."""
        result = fit(spec, weights, widest, budget=budget, overhead=overhead, tokens=tokens)
        if result["kv_tokens"] < 1:
            return None
        return widest, result["kv_tokens"]

    options = []
    room = tokens_that_fit(ctx["weights"])
    if room:
        options.append(
            "fewer tokens: with tensor parallel %d at most %d tokens of KV cache fit (max_model_len %d at concurrency %d)"
            % (room[0], room[1], room[1] // ctx["concurrency"], ctx["concurrency"])
        )
    else:
        options.append("fewer tokens cannot help: the weights and overhead alone need %s per card" % gib(best["weights_card"] + overhead))
    for smaller in ("fp8", "int4"):
        if LINEAR_BYTES[smaller] >= LINEAR_BYTES[ctx["dtype"]]:
            continue
        small_weights = weight_bytes(spec, smaller)
        fitting = [t for t in sizes if fit(spec, small_weights, t, budget=budget, overhead=overhead, tokens=tokens)["fits"]]
        hint = " (needs an AWQ/GPTQ int4 checkpoint)" if smaller == "int4" else ""
        if fitting:
            options.append("dtype %s%s: weights %s, fits with tensor parallel %d" % (smaller, hint, gib(small_weights), fitting[0]))
            continue
        other = fit(spec, small_weights, widest, budget=budget, overhead=overhead, tokens=tokens)
        words = "dtype %s%s: weights %s, still %s short per card at %d tokens" % (smaller, hint, gib(small_weights), gib(other["need"] - budget), tokens)
        room = tokens_that_fit(small_weights)
        if room:
            words += ", fits with at most %d tokens of KV cache (tensor parallel %d)" % (room[1], room[0])
        options.append(words)
    more = [t for t in tp_sizes(spec, MAX_CARDS_ONE_HOST) if t > n and fit(spec, ctx["weights"], t, budget=budget, overhead=overhead, tokens=tokens)["fits"]]
    if more:
        options.append("more cards: %d of these cards with tensor parallel %d" % (more[0], more[0]))
    else:
        options.append("more cards: even %d of these cards in one server are not enough in %s" % (MAX_CARDS_ONE_HOST, ctx["dtype"]))
    bigger = []
    for key in gpu_catalog.profile_names():
        entry = gpu_catalog.PROFILES[key]
        other_budget = int(ctx["utilization"] * gpu_catalog.memory_bytes(entry))
        if other_budget <= budget or key.endswith("-nvlink"):
            continue
        if any(fit(spec, ctx["weights"], t, budget=other_budget, overhead=overhead, tokens=tokens)["fits"] for t in sizes):
            bigger.append((gpu_catalog.memory_bytes(entry), key))
    if bigger:
        options.append("bigger cards, %d of them: %s" % (n, ", ".join(pair[1] for pair in sorted(bigger)[:3])))
    raise PlanError("model", message + " What would fit: " + "; ".join(options) + ".")


def _instances(topology, groups, tp, *, indices, base_port, links):
    """Instance list; each TP group without P2P gets NCCL_P2P_DISABLE=1."""

    def env(cards):
        values = {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in cards), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        if tp > 1:
            for start in range(0, len(cards), tp):
                if group_interconnect(links, cards[start : start + tp]) == "pcie_no_p2p":
                    values["NCCL_P2P_DISABLE"] = "1"
        return values

    if topology in ("dp", "tp_dp"):
        result = []
        for group in range(groups):
            cards = indices[group * tp : (group + 1) * tp]
            result.append({"name": str(group), "gpus": cards, "port": base_port + group, "env": env(cards)})
        return result
    cards = indices[: groups * tp]
    return [{"name": "main", "gpus": cards, "port": base_port, "env": env(cards)}]


# ---------------------------------------------------------------------------
# Measurements: the bake-off's winners beat the estimates above
# ---------------------------------------------------------------------------

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


def load_measured(path):
    """The parsed measurement file at ``path``; None when there is none yet."""
    path = os.path.expanduser(str(path))
    if not os.path.lexists(path):
        return None
    try:
        data = load_json(path, MAX_MEASURED_BYTES, "measurement file")
    except InputError as exc:
        raise PlanError("measured", "%s: run playbooks/bakeoff.yml again or remove the file" % exc) from None
    check_measured(data, path)
    return data


def parse_measured_time(text, where="measured_at"):
    """An ISO 8601 time with a zone (``2026-11-27T05:40:00Z``) as an aware datetime."""
    if not isinstance(text, str):
        raise PlanError("measured", "%s must be an ISO 8601 time, not %r" % (where, text))
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PlanError("measured", "%s: %r is not an ISO 8601 time such as 2026-11-27T05:40:00Z" % (where, text)) from None
    if value.tzinfo is None:
        raise PlanError("measured", "%s: %r has no time zone; write it in UTC with a trailing Z" % (where, text))
    return value


def check_measured(data, where="measured"):
    """Check the shape of a measurement file (see docs/bakeoff.md); PlanError names what is wrong."""
    if not isinstance(data, dict) or data.get("format") != MEASURED_FORMAT:
        raise PlanError("measured", "%s is not a bake-off measurement file (format %r expected)" % (where, MEASURED_FORMAT))
    if data.get("version") != MEASURED_VERSION:
        raise PlanError("measured", "%s has version %r; this planner reads version %d" % (where, data.get("version"), MEASURED_VERSION))
    entries = data.get("measurements")
    if not isinstance(entries, list):
        raise PlanError("measured", "%s: measurements must be a list" % where)
    for position, entry in enumerate(entries):
        label = "%s: measurements[%d]" % (where, position)
        if not isinstance(entry, dict):
            raise PlanError("measured", "%s is not an object" % label)
        for key in (*MEASURED_MATCH_KEYS, "host", "measured_at", "winners"):
            if key not in entry:
                raise PlanError("measured", "%s has no %r" % (label, key))
        for key in ("host", "model", "cards", "dtype"):
            if not isinstance(entry[key], str) or len(entry[key]) > 1024:
                raise PlanError("measured", "%s.%s must be a string, not %r" % (label, key, entry[key]))
        if not is_int(entry["max_model_len"], 1) or not is_number(entry["gpu_memory_utilization"], 0, 1):
            raise PlanError("measured", "%s: max_model_len must be a positive whole number and gpu_memory_utilization a fraction" % label)
        parse_measured_time(entry["measured_at"], "%s.measured_at" % label)
        winners = entry["winners"]
        if not isinstance(winners, dict):
            raise PlanError("measured", "%s.winners must be an object" % label)
        for objective, winner in winners.items():
            if not isinstance(winner, dict) or winner.get("better") not in ("higher", "lower"):
                raise PlanError("measured", "%s.winners.%s.better must be higher or lower" % (label, objective))
            ranking = winner.get("ranking")
            if not isinstance(ranking, list) or not all(
                isinstance(r, dict) and r.get("topology") in MEASURED_TOPOLOGIES and is_number(r.get("value"), 0) for r in ranking
            ):
                raise PlanError(
                    "measured",
                    "%s.winners.%s.ranking must list {topology: one of %s, value: a finite number, 0 or more}"
                    % (label, objective, ", ".join(MEASURED_TOPOLOGIES)),
                )
    return data


def _fmt_figure(value):
    return "%.3g" % value if abs(value) < 100 else "%.0f" % value


def _measured_words(entry, objective, first, second):
    unit = entry["winners"][objective].get("unit") or ""
    where = " at concurrency %s" % first["concurrency"] if first.get("concurrency") else ""
    versus = " vs %s %s (%s)" % (_fmt_figure(second["value"]), unit, second["topology"]) if second else " %s (the only topology measured)" % unit
    return "%s won %s, %s%s%s, bake-off of %s on %s" % (
        first["topology"],
        objective,
        _fmt_figure(first["value"]),
        versus,
        where,
        str(entry["measured_at"])[:10],
        entry["host"],
    )


def measured_choice(data, estimate, *, objective, single_endpoint, gpu_memory_utilization, now, max_age_days, where):
    """What the measurements say for a plan whose estimate is ``estimate``.

    Returns ``(topology or None, reason)``: the measured winner for the objective
    (among single-endpoint topologies when one is asked for), or None with the
    reason the measurements do not apply (another model, other cards, other
    settings, too old, the objective not measured).
    """
    wanted = {
        "model": estimate["model"],
        "cards": estimate["cards"],
        "dtype": estimate["dtype"],
        "max_model_len": estimate["max_model_len"],
        "gpu_memory_utilization": gpu_memory_utilization,
    }
    entries = data.get("measurements") or []
    matching = []
    misses = []
    for entry in entries:
        diff = [key for key in MEASURED_MATCH_KEYS if entry.get(key) != wanted[key]]
        if diff:
            misses.append(
                "%s on %s: %s"
                % (
                    str(entry.get("measured_at"))[:10],
                    entry.get("host"),
                    "; ".join("%s %r, not %r" % (key, entry.get(key), wanted[key]) for key in diff),
                )
            )
        else:
            matching.append(entry)
    if not matching:
        if not entries:
            return None, "measured: %s holds no bake-off results yet; planned from estimates." % where
        return None, "measured: none of the %d bake-off result%s in %s is for this model, these cards and settings (%s); planned from estimates." % (
            len(entries),
            "" if len(entries) == 1 else "s",
            where,
            " | ".join(misses[:3]),
        )
    entry = max(matching, key=lambda e: parse_measured_time(e["measured_at"]))
    age = now - parse_measured_time(entry["measured_at"])
    if age > datetime.timedelta(days=max_age_days):
        return None, "measured: the bake-off of %s on %s is %d days old, older than measured_max_age_days %d: planned from estimates; run it again." % (
            str(entry["measured_at"])[:10],
            entry["host"],
            age.days,
            max_age_days,
        )
    key = MEASURED_OBJECTIVES[objective]
    winner = entry["winners"].get(key)
    if not winner or not winner.get("ranking"):
        return None, "measured: the bake-off of %s on %s has no winner for %s; planned from estimates." % (str(entry["measured_at"])[:10], entry["host"], key)
    ranking = sorted(winner["ranking"], key=lambda r: r["value"], reverse=winner["better"] == "higher")
    if single_endpoint:
        ranking = [r for r in ranking if r["topology"] in SINGLE_ENDPOINT_TOPOLOGIES]
        if not ranking:
            return None, "measured: single_endpoint is set and the bake-off of %s on %s measured no single-endpoint topology (%s); planned from estimates." % (
                str(entry["measured_at"])[:10],
                entry["host"],
                ", ".join(SINGLE_ENDPOINT_TOPOLOGIES),
            )
    first = ranking[0]
    second = ranking[1] if len(ranking) > 1 else None
    return first["topology"], "measured: " + _measured_words(entry, key, first, second)


def plan(measured=None, measured_max_age_days=DEFAULT_MEASURED_MAX_AGE_DAYS, now=None, launch=None, launch_prefix="", **kwargs):
    """The vllm_plan for one server, with each instance's launch (``vllm_launch.build_launch``).

    ``launch``: the launch settings (``vllm_launch.DEFAULT_SETTINGS``); an empty
    ``served_model_name`` takes the model's name and an empty ``model_path``
    ``/var/lib/vllm/models/<served_model_name>``. ``launch_prefix`` prefixes the
    setting names in the messages of refused launch settings (the plan role's
    ``plan_``). See ``_plan_topology`` for the rest.
    """
    result = _plan_topology(measured=measured, measured_max_age_days=measured_max_age_days, now=now, **kwargs)
    settings = dict(launch or {})
    if not settings.get("served_model_name"):
        if not vllm_launch.served_name_ok(result["model"]):
            error = PlanError(
                "model",
                "the model directory's name %r is not a safe served model name (letters, digits and . _ : / @ + -, no whitespace, "
                "control characters or '..'): rename the directory or set %sserved_model_name" % (result["model"], launch_prefix),
            )
            error.details = {"model": result["model"], "cards": result["cards"]}
            raise error
        settings["served_model_name"] = result["model"]
    if not settings.get("model_path"):
        settings["model_path"] = DEFAULT_MODEL_ROOT + "/" + settings["served_model_name"]
    try:
        return vllm_launch.build_launch(result, settings, prefix=launch_prefix)
    except vllm_launch.LaunchError as exc:
        error = PlanError(exc.param, str(exc))
        error.args = (str(exc),)  # the launch's message already names the setting
        error.details = {"model": result["model"], "cards": result["cards"]}
        raise error from exc


def _plan_topology(measured=None, measured_max_age_days=DEFAULT_MEASURED_MAX_AGE_DAYS, now=None, **kwargs):
    """The vllm_plan for one server (see ``_plan`` for the arguments).

    ``measured``: a bake-off measurement file (path, or its parsed content). With
    ``topology`` auto, a measurement of the same model on the same cards and
    settings, at most ``measured_max_age_days`` old, decides the topology for the
    objective instead of the estimates (and the reasons say so); otherwise the
    reasons say why it was ignored. The plan's ``source`` is ``measured`` or
    ``estimated``.

    Raises PlanError naming the input to change; its ``details`` carry the model
    name and the cards when they were known.
    """
    known = {}
    try:
        estimate = _plan(known, **kwargs)
        estimate["source"] = "estimated"
        if measured is None or measured == "":
            return estimate
        if not is_int(measured_max_age_days, 1, MAX_MEASURED_AGE_DAYS):
            raise PlanError("measured_max_age_days", "must be a whole number of days from 1 to %d, not %r" % (MAX_MEASURED_AGE_DAYS, measured_max_age_days))
        if isinstance(measured, dict):
            where = "the measurements given"
            data = check_measured(measured, where)
        else:
            where = str(measured)
            data = load_measured(measured)
        if data is None:
            estimate["reasons"].insert(0, "measured: no bake-off results at %s yet (playbooks/bakeoff.yml writes them); planned from estimates." % where)
            return estimate
        if kwargs.get("topology", "auto") != "auto":
            estimate["reasons"].insert(0, "measured: topology %s is set, so the bake-off results in %s are not used." % (kwargs["topology"], where))
            return estimate
        if kwargs.get("tensor_parallel_size") is not None:
            estimate["reasons"].insert(0, "measured: tensor_parallel_size is set, so the bake-off results in %s are not used." % where)
            return estimate
        now = now or datetime.datetime.now(datetime.timezone.utc)
        topology, reason = measured_choice(
            data,
            estimate,
            objective=kwargs.get("objective", "throughput"),
            single_endpoint=kwargs.get("single_endpoint", False),
            gpu_memory_utilization=kwargs.get("gpu_memory_utilization", DEFAULT_GPU_MEMORY_UTILIZATION),
            now=now,
            max_age_days=measured_max_age_days,
            where=where,
        )
        if topology is None:
            estimate["reasons"].insert(0, reason)
            return estimate
        if topology == estimate["topology"]:
            estimate["reasons"].insert(0, reason + "; the estimate agrees.")
            estimate["source"] = "measured"
            return estimate
        try:
            chosen = _plan({}, **dict(kwargs, topology="tp" if topology == "tp_dp" else topology, forced_by="as measured best"))
        except PlanError as exc:
            estimate["reasons"].insert(0, "%s; but %s does not fit the settings of this plan (%s), so the estimate stands." % (reason, topology, exc))
            return estimate
        chosen["reasons"].insert(0, "%s; the estimate said %s." % (reason, estimate["topology"]))
        chosen["source"] = "measured"
        return chosen
    except PlanError as exc:
        exc.details = dict(known)
        raise


def _plan(
    known,
    *,
    gpus=None,
    gpu_profile=None,
    gpu_count=None,
    model=None,
    dtype="auto",
    max_model_len=None,
    concurrency=1,
    gpu_memory_utilization=DEFAULT_GPU_MEMORY_UTILIZATION,
    objective="throughput",
    single_endpoint=False,
    topology="auto",
    tensor_parallel_size=None,
    base_port=DEFAULT_BASE_PORT,
    overhead_gib=DEFAULT_OVERHEAD_GIB,
    device="cuda",
    cpu_kvcache_space_gib=DEFAULT_CPU_KVCACHE_SPACE_GIB,
    max_num_seqs=0,
    forced_by="as requested",
):
    """The vllm_plan for one server; ``known`` collects model and cards as they are read.

    ``forced_by`` says in the reasons why a topology other than auto was used.
    ``device`` cpu plans vLLM's CPU build standing in for the cards: the topology
    is the cards', the KV cache is ``cpu_kvcache_space_gib`` per worker.
    """
    _check_serving_inputs(device=device, cpu_kvcache_space_gib=cpu_kvcache_space_gib, max_num_seqs=max_num_seqs, concurrency=concurrency)
    _check_inputs(
        dtype=dtype,
        max_model_len=max_model_len,
        concurrency=concurrency,
        gpu_memory_utilization=gpu_memory_utilization,
        objective=objective,
        topology=topology,
        tensor_parallel_size=tensor_parallel_size,
        base_port=base_port,
        overhead_gib=overhead_gib,
    )
    if gpus is not None and gpu_profile is not None:
        raise PlanError("gpus", "give either gpus (facts) or gpu_profile with gpu_count, not both")
    if gpus is None:
        if gpu_profile is None:
            raise PlanError("gpus", "give the nvidia_gpus facts in gpus, or gpu_profile and gpu_count to plan for catalogue cards")
        if gpu_count is None:
            raise PlanError("gpu_count", "gpu_profile needs gpu_count (how many such cards the server has)")
        if not is_int(gpu_count, 1, MAX_GPUS):
            raise PlanError("gpu_count", "must be a whole number of cards from 1 to %d (one server), not %r" % (MAX_GPUS, gpu_count))
        try:
            gpus = gpu_catalog.profile_facts(gpu_profile, gpu_count)
        except gpu_catalog.CatalogError as exc:
            raise PlanError(exc.param, str(exc)) from exc
    cards = _check_cards(gpus)
    links = _links(gpus)
    indices = [card["index"] for card in cards]
    n = len(cards)
    warnings = []
    reasons = []

    # --- the model -----------------------------------------------------------
    name, model_dir, config, config_path = load_model_config(model)
    known["model"] = name
    spec = describe_model(config, config_path)
    stored = checkpoint_format(config)
    checkpoint = checkpoint_weights(model_dir)
    if checkpoint and checkpoint["dtype"]:
        stored = checkpoint["dtype"]
    resolved, dtype_note = resolve_dtype(dtype, stored)
    spec = dict(spec, kv_bytes=kv_bytes_for(resolved))
    params = checkpoint["params"] if checkpoint and checkpoint["params"] and stored != "float32" else spec["params"]
    if checkpoint and (resolved == stored or {resolved, stored} == {"bfloat16", "float16"}):
        weights = checkpoint["bytes"]
        weights_source = "exact, from %s" % checkpoint["source"]
    elif checkpoint and stored == "float32" and resolved in ("bfloat16", "float16"):
        weights = checkpoint["bytes"] // 2
        weights_source = "half the float32 bytes in %s" % checkpoint["source"]
    else:
        weights = weight_bytes(spec, resolved)
        weights_source = "computed from config.json: %.2f B linear-layer parameters x %g bytes + %.2f B others x 2 bytes" % (
            spec["params_linear"] / 1e9,
            LINEAR_BYTES[resolved],
            spec["params_other"] / 1e9,
        )
        if checkpoint:
            weights_source += " (the checkpoint holds %s, planned as %s)" % (stored, resolved)
    if resolved == "int4" and stored != "int4":
        warnings.append("dtype int4 needs an AWQ or GPTQ int4 checkpoint: vLLM does not quantize to 4 bits on load; point model at such a checkpoint")

    model_max = spec["max_position_embeddings"]
    if max_model_len is None:
        if model_max is None:
            raise PlanError("max_model_len", "config.json gives no max_position_embeddings: set max_model_len")
        if model_max > MAX_MODEL_LEN:
            raise PlanError(
                "max_model_len",
                "config.json's max_position_embeddings is above the %d tokens the planner plans for: set max_model_len to the context you serve"
                % MAX_MODEL_LEN,
            )
        max_model_len = model_max
    elif model_max is not None and max_model_len > model_max:
        raise PlanError(
            "max_model_len",
            "%d is longer than the model's max_position_embeddings %d and vLLM refuses it; use %d or less" % (max_model_len, model_max, model_max),
        )
    tokens = max_model_len * concurrency

    # --- the cards -----------------------------------------------------------
    smallest = min(card["memory_total_bytes"] for card in cards)
    budget = int(gpu_memory_utilization * smallest)
    overhead = int(overhead_gib * GIB)
    names = sorted({card.get("name") or "unknown card" for card in cards})
    if len(names) > 1 or len({card["memory_total_bytes"] for card in cards}) > 1:
        warnings.append("the cards differ (%s): every card is planned as the smallest, %s" % (" / ".join(names), gib(smallest)))
    for card in cards:
        free = card.get("memory_free_bytes")
        if isinstance(free, int) and free < gpu_memory_utilization * card["memory_total_bytes"]:
            warnings.append(
                "card %d has only %s free of %s (other processes hold memory): vLLM will refuse to start at gpu_memory_utilization %.2f until they stop"
                % (card["index"], gib(free), gib(card["memory_total_bytes"]), gpu_memory_utilization)
            )
        if (card.get("mig_mode") or {}).get("pending"):
            warnings.append(
                "card %d has MIG pending: after the next reset it will be unusable by vLLM; cancel it with nvidia-smi -i %d -mig 0"
                % (card["index"], card["index"])
            )
        cc = card.get("compute_capability")
        try:
            cc_value = float(cc) if cc else None
        except ValueError:
            cc_value = None
        if cc_value is not None and resolved == "fp8" and cc_value < 8.9:
            warnings.append(
                "card %d (compute capability %s) has no FP8 tensor cores: vLLM runs fp8 as weight-only FP8 (Marlin), memory as planned but slower"
                % (card["index"], cc)
            )
        if cc_value is not None and resolved == "bfloat16" and cc_value < 8.0:
            warnings.append("card %d (compute capability %s) has no bfloat16: set dtype float16" % (card["index"], cc))
    all_link = group_interconnect(links, indices) if n > 1 else "single card"
    cards_words = _cards_words(cards, budget, gpu_memory_utilization, all_link)
    known["cards"] = cards_words
    if gpu_profile is not None:
        catalog_key = gpu_catalog.get_profile(gpu_profile)[0]
    else:
        catalog_key = gpu_catalog.match_name(cards[0].get("name"), smallest)
    bandwidth = gpu_catalog.PROFILES[catalog_key]["bandwidth_gbs"] if catalog_key else None

    reasons.append(
        "%s: %.2f B parameters; %s; %s weights take %s (%s)." % (_model_words(name, spec), params / 1e9, dtype_note, resolved, gib(weights), weights_source)
    )
    reasons.append(
        "KV cache (%d-bit, vLLM's kv_cache_dtype auto): %s; %d tokens x %d sequence%s = %d tokens need %s per instance."
        % (8 * spec["kv_bytes"], _kv_words(spec), max_model_len, concurrency, "" if concurrency == 1 else "s", tokens, gib(kv_bytes_per_token(spec) * tokens))
    )

    ctx = {
        "spec": spec,
        "n": n,
        "budget": budget,
        "overhead": overhead,
        "tokens": tokens,
        "weights": weights,
        "name": name,
        "dtype": resolved,
        "cards_words": cards_words,
        "utilization": gpu_memory_utilization,
        "concurrency": concurrency,
    }
    sizes = tp_sizes(spec, n)
    fits = {t: fit(spec, weights, t, budget=budget, overhead=overhead, tokens=tokens) for t in sizes}
    tp_min = next((t for t in sizes if fits[t]["fits"]), None)
    one = fits[1]
    budget_words = "Usable per card: %.2f x %s = %s" % (gpu_memory_utilization, gib(smallest), gib(budget))
    if one["fits"]:
        reasons.append("%s; one card needs %s, so a full copy fits on one card." % (budget_words, _fit_words(one, overhead)))
    else:
        reasons.append(
            "%s; one card would need %s, %s too much, so one card cannot hold it." % (budget_words, _fit_words(one, overhead), gib(one["need"] - budget))
        )

    # --- operator overrides ------------------------------------------------
    if tensor_parallel_size is not None:
        if tensor_parallel_size > n:
            raise PlanError(
                "tensor_parallel_size",
                "%d is more than the %d card%s on this host; use at most %d" % (tensor_parallel_size, n, "" if n == 1 else "s", n),
            )
        if tensor_parallel_size not in sizes:
            raise PlanError(
                "tensor_parallel_size",
                "%d does not divide the model's %d attention heads (%d KV heads); use one of %s"
                % (tensor_parallel_size, spec["attention_heads"], spec["kv_heads"], ", ".join(str(t) for t in sizes)),
            )
        if not fits[tensor_parallel_size]["fits"]:
            if tp_min is None:
                _nowhere(ctx)
            raise PlanError(
                "tensor_parallel_size",
                "with tensor parallel %d each card needs %s but only %s is usable; use %d or more"
                % (tensor_parallel_size, _fit_words(fits[tensor_parallel_size], overhead), gib(budget), tp_min),
            )
    if tp_min is None:
        _nowhere(ctx)

    if topology == "dp":
        if tensor_parallel_size not in (None, 1):
            raise PlanError("topology", "dp runs one whole copy per card; drop tensor_parallel_size or use topology tp")
        if tp_min > 1:
            raise PlanError(
                "topology",
                "dp puts a whole copy on each card, but one card would need %s and only %s is usable (%s short); "
                "use topology auto or tp (tensor parallel %d fits)" % (gib(one["need"]), gib(budget), gib(one["need"] - budget), tp_min),
            )
        tp = 1
        chosen = "dp"
        reasons.append("topology dp %s: one vLLM per card, %d instance%s." % (forced_by, n, "" if n == 1 else "s"))
        if single_endpoint and n > 1:
            warnings.append("single_endpoint is set but topology dp gives %d endpoints: the gateway must front them (or use topology vllm_dp)" % n)
    elif topology == "vllm_dp":
        if n < 2:
            raise PlanError("topology", "vllm_dp runs one server over several copies and needs 2 or more cards; this host has 1: use dp or auto")
        tp = tensor_parallel_size or tp_min
        if n // tp < 2:
            raise PlanError(
                "topology",
                "vllm_dp needs room for two copies, but each copy needs tensor parallel %d and there are %d cards; use topology tp" % (tp, n),
            )
        chosen = "vllm_dp"
        reasons.append(
            "topology vllm_dp %s: one vLLM with --data-parallel-size %d%s on one port." % (forced_by, n // tp, "" if tp == 1 else " x tensor parallel %d" % tp)
        )
    elif topology == "tp":
        if n < 2:
            raise PlanError("topology", "tp splits the model over several cards and needs 2 or more; this host has 1: use dp or auto")
        if tensor_parallel_size == 1:
            raise PlanError("tensor_parallel_size", "topology tp needs tensor_parallel_size 2 or more")
        tp = tensor_parallel_size or next((t for t in sizes if t >= 2 and fits[t]["fits"]), None)
        if tp is None:
            raise PlanError(
                "topology", "no tensor-parallel degree of 2 or more divides the model's %d attention heads on %d cards; use dp" % (spec["attention_heads"], n)
            )
        chosen = "tp" if n // tp == 1 else "tp_dp"
        reasons.append("topology tp %s: tensor parallel %d%s." % (forced_by, tp, "" if n // tp == 1 else ", %d instances to use all cards" % (n // tp)))
    else:
        tp = tensor_parallel_size or tp_min
        if tensor_parallel_size is None and objective == "latency" and n >= 2:
            tp = _latency_choice(
                ctx, fits, tp_min, links=links, indices=indices, bandwidth=bandwidth, resolved=resolved, reasons=reasons, card_name=cards[0].get("name")
            )
        groups = n // tp
        if tp == 1:
            if n == 1:
                chosen = "dp"
                reasons.append("One card: one vLLM instance on port %d." % base_port)
            elif single_endpoint:
                chosen = "vllm_dp"
                reasons.append(
                    "single_endpoint: the model fits one card, so instead of one TP instance (the article's answer) vLLM's own "
                    "--data-parallel-size %d serves %d copies behind one port, %d, with no load balancer; the copies share no all-reduce." % (n, n, base_port)
                )
            else:
                chosen = "dp"
                reasons.append(
                    "Data parallel: one vLLM per card, %d instances on ports %d-%d behind the gateway: no all-reduce per layer, "
                    "each card schedules its own requests (the article's rule for a model that fits one card; objective %s)."
                    % (n, base_port, base_port + n - 1, objective)
                )
        else:
            if tp == tp_min and tp_min > 1:
                reasons.append(
                    "Tensor parallel %d: the smallest degree whose per-card share fits: %s of %s." % (tp, _fit_words(fits[tp], overhead), gib(budget))
                )
            if groups >= 2 and single_endpoint:
                chosen = "vllm_dp"
                reasons.append(
                    "single_endpoint: one vLLM with --data-parallel-size %d over %d tensor-parallel-%d copies on port %d." % (groups, groups, tp, base_port)
                )
            elif groups >= 2:
                chosen = "tp_dp"
                reasons.append(
                    "%d cards hold %d copies: %d tensor-parallel-%d instances on ports %d-%d behind the gateway."
                    % (n, groups, groups, tp, base_port, base_port + groups - 1)
                )
            else:
                chosen = "tp"

    groups = n // tp
    used = indices[: groups * tp]
    if len(used) < n:
        warnings.append(
            "card%s %s stay unused: %d cards do not split into groups of %d"
            % ("" if n - len(used) == 1 else "s", ", ".join(str(i) for i in indices[len(used) :]), n, tp)
        )
    interconnect = None
    if tp > 1:
        interconnect = min((group_interconnect(links, used[g * tp : (g + 1) * tp]) for g in range(groups)), key=INTERCONNECT_RANK.get)
        if interconnect == "pcie_no_p2p":
            warnings.append(
                "tensor parallel over cards without working P2P (cards %s): NCCL_P2P_DISABLE=1 is set so NCCL does not hang trying it, "
                "and every all-reduce goes through host memory (about %d us each, %d per token); "
                "vLLM's docs suggest pipeline parallel (--pipeline-parallel-size) for PCIe-only cards"
                % (", ".join(str(i) for i in used), ALLREDUCE_US["pcie_no_p2p"], ALLREDUCES_PER_LAYER * spec["layers"])
            )
    chosen_fit = fits[tp]
    kv_tokens = chosen_fit["kv_tokens"]
    if device == "cpu":
        kv_tokens = _cpu_kv_tokens(spec, tp, cpu_kvcache_space_gib, tokens=tokens, max_model_len=max_model_len, concurrency=concurrency, reasons=reasons)
    max_concurrency = round(kv_tokens / float(max_model_len), 2)
    reasons.append(
        "Each instance holds %d tokens of KV cache: %.2fx sequences of %d tokens at once (asked: %d)."
        % (kv_tokens, max_concurrency, max_model_len, concurrency)
    )
    data_parallel = 1 if chosen == "tp" else groups
    return {
        "topology": chosen,
        "tensor_parallel_size": tp,
        "data_parallel_size": data_parallel,
        "instances": _instances(chosen, groups, tp, indices=indices, base_port=base_port, links=links),
        "memory": {
            "params": params,
            "weights_bytes": weights,
            "weights_bytes_per_gpu": chosen_fit["weights_card"],
            "kv_bytes_per_token": kv_bytes_per_token(spec),
            "kv_tokens_per_instance": kv_tokens,
            "max_concurrency": max_concurrency,
        },
        "reasons": reasons,
        "warnings": warnings,
        "model": name,
        "cards": cards_words,
        "dtype": resolved,
        "max_model_len": max_model_len,
        "gpu_memory_utilization": gpu_memory_utilization,
        "interconnect": interconnect,
        "device": device,
        "max_num_seqs": max_num_seqs or default_max_num_seqs(concurrency),
        "quantized_checkpoint": stored in ("fp8", "int4"),
        **({"cpu_kvcache_space_gib": cpu_kvcache_space_gib} if device == "cpu" else {}),
    }


def _check_serving_inputs(*, device, cpu_kvcache_space_gib, max_num_seqs, concurrency):
    if device not in DEVICES:
        raise PlanError("device", "%r is not a vLLM build; use cuda or cpu" % (device,))
    # vLLM's CPU build reads VLLM_CPU_KVCACHE_SPACE with int(): whole GiB only.
    if not is_int(cpu_kvcache_space_gib, 1, MAX_CPU_KVCACHE_GIB):
        raise PlanError(
            "cpu_kvcache_space_gib",
            "must be a whole number of GiB from 1 to %d (vLLM reads VLLM_CPU_KVCACHE_SPACE as an integer), not %r"
            % (MAX_CPU_KVCACHE_GIB, cpu_kvcache_space_gib),
        )
    if not is_int(max_num_seqs, 0, MAX_NUM_SEQS):
        raise PlanError(
            "max_num_seqs", "must be 0 (vLLM's usual 256, or concurrency when larger) or a whole number up to %d, not %r" % (MAX_NUM_SEQS, max_num_seqs)
        )
    if isinstance(concurrency, int) and 0 < max_num_seqs < concurrency:
        raise PlanError(
            "max_num_seqs",
            "%d is below concurrency %d: vLLM would never run the sequences the plan holds KV cache for; set max_num_seqs to %d or more (or 0)"
            % (max_num_seqs, concurrency, concurrency),
        )


def _cpu_kv_tokens(spec, tp, space_gib, *, tokens, max_model_len, concurrency, reasons):
    """KV tokens of one instance on vLLM's CPU build: each worker's VLLM_CPU_KVCACHE_SPACE over its share of a token."""
    per_token = kv_bytes_per_token(spec, tp)
    kv_tokens = int(space_gib * GIB) // per_token
    reasons.append(
        "CPU build: each of the %d worker%s standing in for a card keeps %s GiB of KV cache (VLLM_CPU_KVCACHE_SPACE), %d bytes per token on each: %d tokens."
        % (tp, "" if tp == 1 else "s", _fmt_gib_value(space_gib), per_token, kv_tokens)
    )
    if kv_tokens < tokens:
        need = tokens * per_token / float(GIB)
        raise PlanError(
            "cpu_kvcache_space_gib",
            "%s GiB of KV cache per worker holds %d tokens, fewer than max_model_len %d x concurrency %d = %d: "
            "set cpu_kvcache_space_gib to %s or more, or lower max_model_len or concurrency"
            % (_fmt_gib_value(space_gib), kv_tokens, max_model_len, concurrency, tokens, _fmt_gib_value(math.ceil(need * 100) / 100.0)),
        )
    return kv_tokens


def _fmt_gib_value(value):
    return ("%.2f" % value).rstrip("0").rstrip(".")


def _latency_choice(ctx, fits, tp_min, *, links, indices, bandwidth, resolved, reasons, card_name):
    """Tensor-parallel degree for a latency objective: more TP only when the interconnect pays for it."""
    spec = ctx["spec"]
    if bandwidth is None:
        reasons.append(
            "Objective latency: %s has no bandwidth figure in the catalogue, so TP's per-token gain cannot be estimated; kept tensor parallel %d."
            % (card_name, tp_min)
        )
        return tp_min
    decode = _decode_bytes(spec, resolved)
    estimates = {}
    for t in sorted(fits):
        if t < tp_min or not fits[t]["fits"]:
            continue
        link = group_interconnect(links, indices[:t]) if t > 1 else None
        estimates[t] = (decode_ms(decode, bandwidth, t, link, spec["layers"]), link)
    best = min(estimates, key=lambda t: estimates[t][0])
    base_ms = estimates[tp_min][0]
    if best == tp_min:
        other = next((t for t in sorted(estimates) if t > tp_min), None)
        if other is None:
            reasons.append("Objective latency: tensor parallel %d is the only split that fits on %d cards." % (tp_min, len(indices)))
            return tp_min
        link = estimates[other][1]
        reasons.append(
            "Objective latency: over %s, %d all-reduces per token at about %d us each (%s) would make tensor parallel %d slower per token "
            "at batch 1 than %d (estimated %s -> %s), so it is not used."
            % (
                INTERCONNECT_WORDS[link],
                ALLREDUCES_PER_LAYER * spec["layers"],
                ALLREDUCE_US[link],
                ALLREDUCE_WORDS[link],
                other,
                tp_min,
                _fmt_ms(base_ms),
                _fmt_ms(estimates[other][0]),
            )
        )
        return tp_min
    gain = base_ms / estimates[best][0]
    link = estimates[best][1]
    if gain < LATENCY_TP_MIN_GAIN:
        reasons.append(
            "Objective latency: over %s, tensor parallel %d would cut the estimated per-token time at batch 1 only from %s to %s (%.2fx, below %.1fx), "
            "not worth giving up a whole copy; kept %d."
            % (INTERCONNECT_WORDS[link], best, _fmt_ms(base_ms), _fmt_ms(estimates[best][0]), gain, LATENCY_TP_MIN_GAIN, tp_min)
        )
        return tp_min
    reasons.append(
        "Objective latency: cards %s are joined by %s and decode is memory-bandwidth bound, so each of %d cards reads 1/%d of the weights per token. "
        "Measured on two NVLinked H200s, the linear layers of an 8B Llama went from %.2f ms to %.2f ms with TP=2 (%.2fx); with %d all-reduces per token "
        "at about %d us each (%s), the estimate here is %s -> %s per token at batch 1 (%.2fx, at least %.1fx wanted), so one tensor-parallel-%d "
        "instance beats data parallel for latency (at the cost of one independent copy per %d cards)."
        % (
            ",".join(str(i) for i in indices[:best]),
            INTERCONNECT_WORDS[link],
            best,
            best,
            MEASURED_ONE_CARD_MS,
            MEASURED_TP2_MS,
            MEASURED_ONE_CARD_MS / MEASURED_TP2_MS,
            ALLREDUCES_PER_LAYER * spec["layers"],
            ALLREDUCE_US[link],
            ALLREDUCE_WORDS[link],
            _fmt_ms(base_ms),
            _fmt_ms(estimates[best][0]),
            gain,
            LATENCY_TP_MIN_GAIN,
            best,
            best,
        )
    )
    return best


# ---------------------------------------------------------------------------
# A readable table of plans (used by the plan_table filter and playbooks/plan.yml)
# ---------------------------------------------------------------------------

TABLE_COLUMNS = ("HOST", "CARDS", "MODEL", "TOPOLOGY", "WEIGHTS/CARD", "KV TOKENS/INSTANCE", "MAX CONCURRENCY")


def topology_words(vllm_plan):
    topology = vllm_plan.get("topology")
    tp = vllm_plan.get("tensor_parallel_size", 1)
    dp = vllm_plan.get("data_parallel_size", 1)
    if topology == "dp":
        return "dp x%d" % dp
    if topology == "tp":
        return "tp %d" % tp
    if topology == "tp_dp":
        return "tp %d x dp %d" % (tp, dp)
    if topology == "vllm_dp":
        return "vllm_dp %d" % dp + ("" if tp == 1 else " x tp %d" % tp)
    return str(topology)


def rows_from_results(hosts, results):
    """Table rows from each host's plan (``results``: host -> a vllm_plan module result, a plan, a refusal or None).

    A refusal is the plan role's ``gpufleet_plan`` of a refused host: ``{"refused": message, "param": ..., "details": ...}``.
    """
    rows = []
    for host in hosts:
        result = results.get(host)
        if not isinstance(result, dict):
            rows.append({"host": host, "error": "no plan: the host failed or was unreachable before planning (see its error above)"})
            continue
        vllm_plan = result.get("plan") if "plan" in result else (result if "topology" in result else None)
        if isinstance(vllm_plan, dict):
            rows.append({"host": host, "plan": vllm_plan})
            continue
        details = result.get("details") or {}
        if result.get("skipped"):
            error = "no plan: skipped (%s)" % (result.get("skip_reason") or "condition false")
        else:
            error = result.get("refused") or result.get("msg") or "no plan"
        rows.append({"host": host, "error": error, "cards": details.get("cards"), "model": details.get("model")})
    return rows


def format_plan_table(rows, width=120):
    """Text table of plans, one row per host, then the reasons and warnings under it.

    ``rows``: dicts with ``host`` and either ``plan`` (a vllm_plan) or ``error`` (text).
    """
    table = []
    notes = []
    for row in rows:
        host = str(row.get("host", "?"))
        vllm_plan = row.get("plan")
        if isinstance(vllm_plan, dict) and vllm_plan.get("topology"):
            memory = vllm_plan.get("memory") or {}
            table.append(
                (
                    host,
                    str(vllm_plan.get("cards", "")),
                    str(vllm_plan.get("model", "")),
                    topology_words(vllm_plan),
                    gib(memory.get("weights_bytes_per_gpu") or 0),
                    str(memory.get("kv_tokens_per_instance", "")),
                    "%.2fx" % (memory.get("max_concurrency") or 0),
                )
            )
            lines = [("why", text) for text in vllm_plan.get("reasons") or []]
            lines += [("warning", text) for text in vllm_plan.get("warnings") or []]
        else:
            table.append((host, str(row.get("cards") or "-"), str(row.get("model") or "-"), "REFUSED", "-", "-", "-"))
            lines = [("error", str(row.get("error") or "no plan (host unreachable, or its facts failed)"))]
        notes.append((host, lines))
    widths = [max(len(column), *(len(line[i]) for line in table)) if table else len(column) for i, column in enumerate(TABLE_COLUMNS)]
    out = ["  ".join(column.ljust(widths[i]) for i, column in enumerate(TABLE_COLUMNS)).rstrip()]
    out.append("  ".join("-" * widths[i] for i in range(len(TABLE_COLUMNS))))
    for line in table:
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
    for host, lines in notes:
        out.append("")
        out.append("%s:" % host)
        for label, text in lines:
            out.extend(textwrap.wrap(text, width=width, initial_indent="  %s: " % label, subsequent_indent=" " * (len(label) + 4)))
    return "\n".join(out)
