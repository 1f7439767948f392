# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The model: its description from config.json, and its weights from the safetensors on disk."""

from __future__ import annotations

import glob
import math
import os
import struct

from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError, is_int, load_json, loads_json, regular_file
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_common import (
    CONFIG_BOUNDS,
    KV_BYTES,
    LINEAR_BYTES,
    MAX_CONFIG_BYTES,
    MAX_EXPERTS,
    MAX_INDEX_BYTES,
    MAX_MODEL_LEN,
    MAX_SAFETENSORS_FILES,
    SAFETENSORS_DTYPES,
    SAFETENSORS_MAX_HEADER,
    PlanError,
    other_bytes,
)


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


def _text_config(config, where):
    """The part of config.json that describes the language model (``text_config`` of a multimodal one)."""
    if not isinstance(config, dict):
        raise PlanError("model", "%s must hold a JSON object" % where)
    if config.get("text_config") is not None and not isinstance(config.get("text_config"), dict):
        raise PlanError("model", "%s: 'text_config' must be an object, not %r; fix the config.json" % (where, config["text_config"]))
    if isinstance(config.get("text_config"), dict) and "num_hidden_layers" not in config:
        return config["text_config"]
    return config


def _shape(config, text, where):
    """Layers, widths and heads of the model, each checked."""
    model_type = str(text.get("model_type") or config.get("model_type") or "")
    shape = {
        "architecture": (config.get("architectures") or [model_type or "unknown"])[0],
        "model_type": model_type,
        "layers": _positive_int(text, "num_hidden_layers", where),
        "hidden_size": _positive_int(text, "hidden_size", where),
        "attention_heads": _positive_int(text, "num_attention_heads", where),
        "vocab_size": _positive_int(text, "vocab_size", where),
    }
    hidden, heads = shape["hidden_size"], shape["attention_heads"]
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
    return dict(shape, kv_heads=kv_heads, head_dim=head_dim, tied_embeddings=tied)


def _latent_attention(text, shape, where):
    """(mla, linear parameters, small parameters) of one multi-head latent attention layer (DeepSeek)."""
    hidden, heads = shape["hidden_size"], shape["attention_heads"]
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
    return mla, attn_linear, attn_small


def _attention(text, shape, where):
    """(mla or None, linear parameters, small parameters) of one attention layer."""
    if text.get("kv_lora_rank") is not None:
        return _latent_attention(text, shape, where)
    hidden, model_type = shape["hidden_size"], shape["model_type"]
    q_out = shape["attention_heads"] * shape["head_dim"]
    kv_out = shape["kv_heads"] * shape["head_dim"]
    attn_linear = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
    attn_small = 0
    # Qwen2 puts biases on q, k and v (hard-coded, not in config.json);
    # attention_bias=true (Llama-style configs) adds them to all four projections.
    if model_type in ("qwen2", "qwen2_moe"):
        attn_small += q_out + 2 * kv_out
    elif text.get("attention_bias") is True:
        attn_small += q_out + 2 * kv_out + hidden
    if model_type in ("qwen3", "qwen3_moe"):
        attn_small += 2 * shape["head_dim"]  # q_norm, k_norm
    return None, attn_linear, attn_small


def _experts(text, where):
    """The mixture-of-experts description, or None for a dense model."""
    experts = None
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        if isinstance(text.get(key), int) and not isinstance(text.get(key), bool) and text[key] > 1:
            if text[key] > MAX_EXPERTS:
                raise PlanError("model", "%s: %r is %d, above the %d experts the planner accepts; fix the config.json" % (where, key, text[key], MAX_EXPERTS))
            experts = text[key]
            break
    if not experts:
        return None
    expert_inter = _positive_int(text, "moe_intermediate_size", where, required=False) or _positive_int(text, "intermediate_size", where)
    shared_inter = _count_field(text, "n_shared_experts", where, 0, MAX_EXPERTS) * expert_inter + _count_field(
        text, "shared_expert_intermediate_size", where, 0, 2**22
    )
    return {
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


def _mlp(text, shape, moe, where):
    """(MoE layers, dense MLP parameters, expert parameters, router and shared-gate parameters) of the whole model."""
    layers, hidden = shape["layers"], shape["hidden_size"]
    moe_layers = sum(1 for index in range(layers) if _kind_of_layer(index, {"moe": moe}))
    dense_layers = layers - moe_layers
    intermediate = _positive_int(text, "intermediate_size", where) if dense_layers or not moe else text.get("intermediate_size")
    dense_mlp = dense_layers * 3 * hidden * intermediate if dense_layers else 0
    expert_linear = 0
    moe_small = 0
    if moe_layers:
        expert_linear = moe_layers * moe["experts"] * 3 * hidden * moe["expert_intermediate_size"]
        dense_mlp += moe_layers * 3 * hidden * moe["shared_intermediate_size"]
        moe_small = moe_layers * (hidden * moe["experts"] + (hidden if moe["shared_expert_gate"] else 0))
    return moe_layers, dense_mlp, expert_linear, moe_small


def _max_position(text):
    max_len = text.get("max_position_embeddings")
    if is_int(max_len, MAX_MODEL_LEN + 1):
        max_len = MAX_MODEL_LEN + 1  # refused as max_model_len unless one is set
    return max_len if isinstance(max_len, int) and not isinstance(max_len, bool) and max_len > 0 else None


def describe_model(config, where="config.json"):
    """Shape and parameter counts of a decoder-only model from its Hugging Face config.

    Handles dense models (Llama, Mistral, Qwen2, Gemma 2, Phi-3), mixture-of-experts
    (Mixtral ``num_local_experts``, Qwen-MoE ``num_experts``, DeepSeek
    ``n_routed_experts``: every expert counts for memory) and multi-head latent
    attention (DeepSeek ``kv_lora_rank``). MLPs are gated (SwiGLU/GeGLU: gate, up and
    down projections), as in every family above.
    """
    text = _text_config(config, where)
    _check_config_types(config, text, where)
    shape = _shape(config, text, where)
    layers, hidden, vocab = shape["layers"], shape["hidden_size"], shape["vocab_size"]
    mla, attn_linear, attn_small = _attention(text, shape, where)
    norms_per_layer = (4 if shape["model_type"].startswith(("gemma2", "gemma3")) else 2) * hidden
    moe = _experts(text, where)
    moe_layers, dense_mlp, expert_linear, moe_small = _mlp(text, shape, moe, where)
    attn_total = layers * attn_linear
    small = layers * (attn_small + norms_per_layer) + hidden + moe_small
    linear = attn_total + dense_mlp + expert_linear
    params = vocab * hidden + (0 if shape["tied_embeddings"] else vocab * hidden) + linear + small
    # What one decode step at batch 1 reads: the LM head (the embedding matrix when
    # tied), all attention and dense MLP weights, and only the routed experts in use.
    active_expert = expert_linear * moe["experts_per_token"] // moe["experts"] if moe_layers else 0
    keys = ("architecture", "model_type", "layers", "hidden_size", "attention_heads", "kv_heads", "head_dim", "vocab_size", "tied_embeddings")
    return {
        **{key: shape[key] for key in keys},
        "mla": mla,
        "moe": moe,
        "moe_layers": moe_layers,
        "max_position_embeddings": _max_position(text),
        "params": params,
        "params_linear": linear,
        "params_other": params - linear,
        "params_decode_linear": attn_total + dense_mlp + active_expert,
        "params_decode_other": vocab * hidden + small,
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


def decode_bytes(spec, dtype):
    """Bytes one decode step at batch 1 reads in ``dtype``."""
    return spec["params_decode_linear"] * LINEAR_BYTES[dtype] + spec["params_decode_other"] * other_bytes(dtype)


# ---------------------------------------------------------------------------
# The cards
# ---------------------------------------------------------------------------


def weights_source_words(spec, resolved, checkpoint, stored):
    """Where a weight figure computed from config.json comes from."""
    words = "computed from config.json: %.2f B linear-layer parameters x %g bytes + %.2f B others x 2 bytes" % (
        spec["params_linear"] / 1e9,
        LINEAR_BYTES[resolved],
        spec["params_other"] / 1e9,
    )
    if checkpoint:
        words += " (the checkpoint holds %s, planned as %s)" % (stored, resolved)
    return words


def model_weights(spec, checkpoint, stored, resolved):
    """(weight bytes, where the figure comes from): the checkpoint's own bytes when it holds this dtype, else computed."""
    if checkpoint and (resolved == stored or {resolved, stored} == {"bfloat16", "float16"}):
        return checkpoint["bytes"], "exact, from %s" % checkpoint["source"]
    if checkpoint and stored == "float32" and resolved in ("bfloat16", "float16"):
        return checkpoint["bytes"] // 2, "half the float32 bytes in %s" % checkpoint["source"]
    return weight_bytes(spec, resolved), weights_source_words(spec, resolved, checkpoint, stored)
