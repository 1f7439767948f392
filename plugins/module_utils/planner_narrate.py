# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Narration: the figures of an assessment and a choice turned into the plan's sentences.

Nothing here decides anything: each function takes what was decided and says it.
"""

from __future__ import annotations

from ansible_collections.gpufleet.serving.plugins.module_utils.planner_common import (
    ALLREDUCE_US,
    ALLREDUCE_WORDS,
    ALLREDUCES_PER_LAYER,
    INTERCONNECT_WORDS,
    KV_BYTES,
    LATENCY_TP_MIN_GAIN,
    MEASURED_ONE_CARD_MS,
    MEASURED_TP2_MS,
    fmt_ms,
    gib,
)
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_model import kv_bytes_per_token


def fmt_gib_value(value):
    return ("%.2f" % value).rstrip("0").rstrip(".")


def model_words(name, spec):
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


def kv_words(spec):
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


def fit_words(result, overhead):
    return "%s weights + %s KV cache + %s overhead = %s" % (gib(result["weights_card"]), gib(result["kv_card"]), gib(overhead), gib(result["need"]))


def cards_words(cards, link):
    names = sorted({card.get("name") or "unknown card" for card in cards})
    smallest = min(card["memory_total_bytes"] for card in cards)
    text = "%d x %s (%s each" % (len(cards), " / ".join(names), gib(smallest))
    if len(cards) > 1:
        text += ", %s" % INTERCONNECT_WORDS.get(link, link)
    return text + ")"


def base_reasons(a, dtype_note, weights_source, smallest):
    """The reasons every plan of this assessment starts with: the model, its KV cache, the room on a card."""
    spec, tokens, concurrency, overhead, budget, one = a["spec"], a["tokens"], a["concurrency"], a["overhead"], a["budget"], a["fits"][1]
    reasons = [
        "%s: %.2f B parameters; %s; %s weights take %s (%s)."
        % (model_words(a["name"], spec), a["params"] / 1e9, dtype_note, a["dtype"], gib(a["weights"]), weights_source),
        "KV cache (%d-bit, vLLM's kv_cache_dtype auto): %s; %d tokens x %d sequence%s = %d tokens need %s per instance."
        % (
            8 * spec["kv_bytes"],
            kv_words(spec),
            a["max_model_len"],
            concurrency,
            "" if concurrency == 1 else "s",
            tokens,
            gib(kv_bytes_per_token(spec) * tokens),
        ),
    ]
    budget_words = "Usable per card: %.2f x %s = %s" % (a["utilization"], gib(smallest), gib(budget))
    if one["fits"]:
        reasons.append("%s; one card needs %s, so a full copy fits on one card." % (budget_words, fit_words(one, overhead)))
    else:
        reasons.append(
            "%s; one card would need %s, %s too much, so one card cannot hold it." % (budget_words, fit_words(one, overhead), gib(one["need"] - budget))
        )
    return reasons


def nowhere_words(a, best, widest):
    """The first sentence of a refusal for a model that fits no split: by how much it misses."""
    budget = a["budget"]
    short = best["need"] - budget
    split = "one card needs" if widest == 1 else "even with tensor parallel %d each card needs" % widest
    return "%s in %s does not fit on %s: the weights alone are %s; %s %s, %s (%.0f%%) more than the %s usable per card at gpu_memory_utilization %.2f." % (
        a["name"],
        a["dtype"],
        a["cards_words"],
        gib(a["weights"]),
        split,
        fit_words(best, a["overhead"]),
        gib(short),
        100.0 * short / budget,
        gib(budget),
        a["utilization"],
    )


def _latency_faster_words(a, est):
    best, link, layers = est["best"], est["link"], a["spec"]["layers"]
    return (
        "Objective latency: cards %s are joined by %s and decode is memory-bandwidth bound, so each of %d cards reads 1/%d of the weights per token. "
        "Measured on two NVLinked H200s, the linear layers of an 8B Llama went from %.2f ms to %.2f ms with TP=2 (%.2fx); with %d all-reduces per token "
        "at about %d us each (%s), the estimate here is %s -> %s per token at batch 1 (%.2fx, at least %.1fx wanted), so one tensor-parallel-%d "
        "instance beats data parallel for latency (at the cost of one independent copy per %d cards)."
        % (
            ",".join(str(i) for i in a["indices"][:best]),
            INTERCONNECT_WORDS[link],
            best,
            best,
            MEASURED_ONE_CARD_MS,
            MEASURED_TP2_MS,
            MEASURED_ONE_CARD_MS / MEASURED_TP2_MS,
            ALLREDUCES_PER_LAYER * layers,
            ALLREDUCE_US[link],
            ALLREDUCE_WORDS[link],
            fmt_ms(est["base_ms"]),
            fmt_ms(est["best_ms"]),
            est["gain"],
            LATENCY_TP_MIN_GAIN,
            best,
            best,
        )
    )


def latency_words(a, est):
    """The reason for the tensor-parallel degree a latency objective took (``planner_fit.latency_estimates``)."""
    tp_min, case = a["tp_min"], est["case"]
    if case == "no_bandwidth":
        return "Objective latency: %s has no bandwidth figure in the catalogue, so TP's per-token gain cannot be estimated; kept tensor parallel %d." % (
            a["card_name"],
            tp_min,
        )
    if case == "only":
        return "Objective latency: tensor parallel %d is the only split that fits on %d cards." % (tp_min, len(a["indices"]))
    link = est["link"]
    if case == "slower":
        return (
            "Objective latency: over %s, %d all-reduces per token at about %d us each (%s) would make tensor parallel %d slower per token "
            "at batch 1 than %d (estimated %s -> %s), so it is not used."
            % (
                INTERCONNECT_WORDS[link],
                ALLREDUCES_PER_LAYER * a["spec"]["layers"],
                ALLREDUCE_US[link],
                ALLREDUCE_WORDS[link],
                est["other"],
                tp_min,
                fmt_ms(est["base_ms"]),
                fmt_ms(est["other_ms"]),
            )
        )
    if case == "small_gain":
        return (
            "Objective latency: over %s, tensor parallel %d would cut the estimated per-token time at batch 1 only from %s to %s (%.2fx, below %.1fx), "
            "not worth giving up a whole copy; kept %d."
            % (INTERCONNECT_WORDS[link], est["best"], fmt_ms(est["base_ms"]), fmt_ms(est["best_ms"]), est["gain"], LATENCY_TP_MIN_GAIN, tp_min)
        )
    return _latency_faster_words(a, est)


def cpu_kv_words(tp, space_gib, per_token, kv_tokens):
    return (
        "CPU build: each of the %d worker%s standing in for a card keeps %s GiB of KV cache (--kv-cache-memory-bytes), %d bytes per token on each: %d tokens."
        % (
            tp,
            "" if tp == 1 else "s",
            fmt_gib_value(space_gib),
            per_token,
            kv_tokens,
        )
    )


def unused_words(indices, used, n, tp):
    return "card%s %s stay unused: %d cards do not split into groups of %d" % (
        "" if n - len(used) == 1 else "s",
        ", ".join(str(i) for i in indices[len(used) :]),
        n,
        tp,
    )


def no_p2p_words(used, layers):
    return (
        "tensor parallel over cards without working P2P (cards %s): NCCL_P2P_DISABLE=1 is set so NCCL does not hang trying it, "
        "and every all-reduce goes through host memory (about %d us each, %d per token); "
        "vLLM's docs suggest pipeline parallel (--pipeline-parallel-size) for PCIe-only cards"
        % (", ".join(str(i) for i in used), ALLREDUCE_US["pcie_no_p2p"], ALLREDUCES_PER_LAYER * layers)
    )
