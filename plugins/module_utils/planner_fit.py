# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The assessment: how each tensor-parallel split of the cards holds the model, and what a token costs."""

from __future__ import annotations

import math

from ansible_collections.gpufleet.serving.plugins.module_utils import gpu_catalog
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_cards import group_interconnect
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_common import (
    ALLREDUCE_US,
    ALLREDUCES_PER_LAYER,
    DECODE_BANDWIDTH_EFFICIENCY,
    GIB,
    LATENCY_TP_MIN_GAIN,
    LAYER_OVERHEAD_MS,
    LINEAR_BYTES,
    MAX_CARDS_ONE_HOST,
    STEP_OVERHEAD_MS,
    TP_SCALING_EFFICIENCY,
    PlanError,
    gib,
)
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_model import decode_bytes, kv_bytes_per_token, weight_bytes
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_narrate import fmt_gib_value, nowhere_words
from ansible_collections.gpufleet.serving.plugins.module_utils.vllm_launch import cpu_kv_cache_bytes


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


def assess(spec, weights, n, *, budget, overhead, tokens):
    """(tensor-parallel degrees, fit of each, smallest degree that fits or None): the assessment every chooser reads."""
    sizes = tp_sizes(spec, n)
    fits = {t: fit(spec, weights, t, budget=budget, overhead=overhead, tokens=tokens) for t in sizes}
    return sizes, fits, next((t for t in sizes if fits[t]["fits"]), None)


def latency_estimates(a):
    """The batch-1 cost of each split that fits, and the split a latency objective takes.

    ``case``: no_bandwidth (the card has no bandwidth figure), only (one split fits),
    slower (more TP costs more than it saves), small_gain (below LATENCY_TP_MIN_GAIN)
    or faster; ``choice`` is the degree taken.
    """
    spec, tp_min, indices = a["spec"], a["tp_min"], a["indices"]
    if a["bandwidth"] is None:
        return {"case": "no_bandwidth", "choice": tp_min}
    decode = decode_bytes(spec, a["dtype"])
    estimates = {}
    for t in sorted(a["fits"]):
        if t < tp_min or not a["fits"][t]["fits"]:
            continue
        link = group_interconnect(a["links"], indices[:t]) if t > 1 else None
        estimates[t] = (decode_ms(decode, a["bandwidth"], t, link, spec["layers"]), link)
    best = min(estimates, key=lambda t: estimates[t][0])
    base_ms = estimates[tp_min][0]
    if best == tp_min:
        other = next((t for t in sorted(estimates) if t > tp_min), None)
        if other is None:
            return {"case": "only", "choice": tp_min}
        return {"case": "slower", "choice": tp_min, "other": other, "other_ms": estimates[other][0], "link": estimates[other][1], "base_ms": base_ms}
    gain = base_ms / estimates[best][0]
    figures = {"best": best, "best_ms": estimates[best][0], "link": estimates[best][1], "base_ms": base_ms, "gain": gain}
    if gain < LATENCY_TP_MIN_GAIN:
        return dict(figures, case="small_gain", choice=tp_min)
    return dict(figures, case="faster", choice=best)


def cpu_kv_tokens(a, tp):
    """(KV tokens, bytes per token per worker) of one instance on vLLM's CPU build: each worker's KV cache over a token's share."""
    per_token = kv_bytes_per_token(a["spec"], tp)
    space_gib, tokens = a["cpu_kvcache_space_gib"], a["tokens"]
    kv_tokens = cpu_kv_cache_bytes(space_gib) // per_token
    if kv_tokens < tokens:
        need = tokens * per_token / float(GIB)
        raise PlanError(
            "cpu_kvcache_space_gib",
            "%s GiB of KV cache per worker holds %d tokens, fewer than max_model_len %d x concurrency %d = %d: "
            "set cpu_kvcache_space_gib to %s or more, or lower max_model_len or concurrency"
            % (fmt_gib_value(space_gib), kv_tokens, a["max_model_len"], a["concurrency"], tokens, fmt_gib_value(math.ceil(need * 100) / 100.0)),
        )
    return kv_tokens, per_token


def _tokens_that_fit(a, weights, widest):
    """(tp, tokens) of the widest split that holds ``weights`` with some KV cache, or None."""
    result = fit(a["spec"], weights, widest, budget=a["budget"], overhead=a["overhead"], tokens=a["tokens"])
    if result["kv_tokens"] < 1:
        return None
    return widest, result["kv_tokens"]


def _smaller_dtype_options(a, sizes, widest):
    """What fp8 or int4 weights would change, for each that is smaller than the planned dtype."""
    spec, budget, overhead, tokens = a["spec"], a["budget"], a["overhead"], a["tokens"]
    options = []
    for smaller in ("fp8", "int4"):
        if LINEAR_BYTES[smaller] >= LINEAR_BYTES[a["dtype"]]:
            continue
        small_weights = weight_bytes(spec, smaller)
        fitting = [t for t in sizes if fit(spec, small_weights, t, budget=budget, overhead=overhead, tokens=tokens)["fits"]]
        hint = " (needs an AWQ/GPTQ int4 checkpoint)" if smaller == "int4" else ""
        if fitting:
            options.append("dtype %s%s: weights %s, fits with tensor parallel %d" % (smaller, hint, gib(small_weights), fitting[0]))
            continue
        other = fit(spec, small_weights, widest, budget=budget, overhead=overhead, tokens=tokens)
        words = "dtype %s%s: weights %s, still %s short per card at %d tokens" % (smaller, hint, gib(small_weights), gib(other["need"] - budget), tokens)
        room = _tokens_that_fit(a, small_weights, widest)
        if room:
            words += ", fits with at most %d tokens of KV cache (tensor parallel %d)" % (room[1], room[0])
        options.append(words)
    return options


def _more_or_bigger_cards(a, sizes):
    """What more of these cards in one server, or bigger cards from the catalogue, would do."""
    spec, n, budget, overhead, tokens = a["spec"], a["n"], a["budget"], a["overhead"], a["tokens"]
    options = []
    more = [t for t in tp_sizes(spec, MAX_CARDS_ONE_HOST) if t > n and fit(spec, a["weights"], t, budget=budget, overhead=overhead, tokens=tokens)["fits"]]
    if more:
        options.append("more cards: %d of these cards with tensor parallel %d" % (more[0], more[0]))
    else:
        options.append("more cards: even %d of these cards in one server are not enough in %s" % (MAX_CARDS_ONE_HOST, a["dtype"]))
    bigger = []
    for key in gpu_catalog.profile_names():
        entry = gpu_catalog.PROFILES[key]
        other_budget = int(a["utilization"] * gpu_catalog.memory_bytes(entry))
        if other_budget <= budget or key.endswith("-nvlink"):
            continue
        if any(fit(spec, a["weights"], t, budget=other_budget, overhead=overhead, tokens=tokens)["fits"] for t in sizes):
            bigger.append((gpu_catalog.memory_bytes(entry), key))
    if bigger:
        options.append("bigger cards, %d of them: %s" % (n, ", ".join(pair[1] for pair in sorted(bigger)[:3])))
    return options


def refuse_nowhere(a):
    """Raise the PlanError for a model that fits no tensor-parallel split of these cards, with what would fit."""
    sizes = tp_sizes(a["spec"], a["n"])
    widest = sizes[-1]
    best = fit(a["spec"], a["weights"], widest, budget=a["budget"], overhead=a["overhead"], tokens=a["tokens"])
    options = []
    room = _tokens_that_fit(a, a["weights"], widest)
    if room:
        options.append(
            "fewer tokens: with tensor parallel %d at most %d tokens of KV cache fit (max_model_len %d at concurrency %d)"
            % (room[0], room[1], room[1] // a["concurrency"], a["concurrency"])
        )
    else:
        options.append("fewer tokens cannot help: the weights and overhead alone need %s per card" % gib(best["weights_card"] + a["overhead"]))
    options += _smaller_dtype_options(a, sizes, widest)
    options += _more_or_bigger_cards(a, sizes)
    raise PlanError("model", nowhere_words(a, best, widest) + " What would fit: " + "; ".join(options) + ".")
