# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The choosers: each reads the same assessment (``planner_fit.assess``) and returns a choice.

A choice is ``{"topology", "tp", "reasons", "warnings"}`` with only what the choice
adds; ``plan_of`` turns the assessment and a choice into the plan dict. The
topology an operator sets, the estimate for each objective, and the bake-off's
measured winner are all choosers over one assessment: nothing is planned twice.
"""

from __future__ import annotations

from ansible_collections.gpufleet.serving.plugins.module_utils.planner_cards import group_interconnect
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_common import (
    INTERCONNECT_RANK,
    PlanError,
    gib,
)
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_fit import cpu_kv_tokens, latency_estimates, refuse_nowhere
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_narrate import (
    cpu_kv_words,
    fit_words,
    latency_words,
    no_p2p_words,
    unused_words,
)
from ansible_collections.gpufleet.serving.plugins.module_utils.vllm_launch import default_max_num_seqs


def _choice(topology, tp, reasons=(), warnings=()):
    return {"topology": topology, "tp": tp, "reasons": list(reasons), "warnings": list(warnings)}


def check_tensor_parallel(a):
    """Refuse a tensor_parallel_size that does not fit, and a model that fits no split at all."""
    tps, n, fits = a["tensor_parallel_size"], a["n"], a["fits"]
    if tps is not None:
        if tps > n:
            raise PlanError("tensor_parallel_size", "%d is more than the %d card%s on this host; use at most %d" % (tps, n, "" if n == 1 else "s", n))
        if tps not in a["sizes"]:
            raise PlanError(
                "tensor_parallel_size",
                "%d does not divide the model's %d attention heads (%d KV heads); use one of %s"
                % (tps, a["spec"]["attention_heads"], a["spec"]["kv_heads"], ", ".join(str(t) for t in a["sizes"])),
            )
        if not fits[tps]["fits"]:
            if a["tp_min"] is None:
                refuse_nowhere(a)
            raise PlanError(
                "tensor_parallel_size",
                "with tensor parallel %d each card needs %s but only %s is usable; use %d or more"
                % (tps, fit_words(fits[tps], a["overhead"]), gib(a["budget"]), a["tp_min"]),
            )
    if a["tp_min"] is None:
        refuse_nowhere(a)


def choose_dp(a, forced_by):
    """Topology dp as set: one whole copy per card."""
    n, one = a["n"], a["fits"][1]
    if a["tensor_parallel_size"] not in (None, 1):
        raise PlanError("topology", "dp runs one whole copy per card; drop tensor_parallel_size or use topology tp")
    if a["tp_min"] > 1:
        raise PlanError(
            "topology",
            "dp puts a whole copy on each card, but one card would need %s and only %s is usable (%s short); "
            "use topology auto or tp (tensor parallel %d fits)" % (gib(one["need"]), gib(a["budget"]), gib(one["need"] - a["budget"]), a["tp_min"]),
        )
    reasons = ["topology dp %s: one vLLM per card, %d instance%s." % (forced_by, n, "" if n == 1 else "s")]
    warnings = []
    if a["single_endpoint"] and n > 1:
        warnings.append("single_endpoint is set but topology dp gives %d endpoints: the gateway must front them (or use topology vllm_dp)" % n)
    return _choice("dp", 1, reasons, warnings)


def choose_vllm_dp(a, forced_by):
    """Topology vllm_dp as set: one vLLM over several copies, one port."""
    n = a["n"]
    if n < 2:
        raise PlanError("topology", "vllm_dp runs one server over several copies and needs 2 or more cards; this host has 1: use dp or auto")
    tp = a["tensor_parallel_size"] or a["tp_min"]
    if n // tp < 2:
        raise PlanError(
            "topology",
            "vllm_dp needs room for two copies, but each copy needs tensor parallel %d and there are %d cards; use topology tp" % (tp, n),
        )
    reason = "topology vllm_dp %s: one vLLM with --data-parallel-size %d%s on one port." % (forced_by, n // tp, "" if tp == 1 else " x tensor parallel %d" % tp)
    return _choice("vllm_dp", tp, [reason])


def choose_tp(a, forced_by):
    """Topology tp as set: the smallest split of 2 or more that fits, or tensor_parallel_size."""
    n, tps = a["n"], a["tensor_parallel_size"]
    if n < 2:
        raise PlanError("topology", "tp splits the model over several cards and needs 2 or more; this host has 1: use dp or auto")
    if tps == 1:
        raise PlanError("tensor_parallel_size", "topology tp needs tensor_parallel_size 2 or more")
    tp = tps or next((t for t in a["sizes"] if t >= 2 and a["fits"][t]["fits"]), None)
    if tp is None:
        raise PlanError(
            "topology", "no tensor-parallel degree of 2 or more divides the model's %d attention heads on %d cards; use dp" % (a["spec"]["attention_heads"], n)
        )
    reason = "topology tp %s: tensor parallel %d%s." % (forced_by, tp, "" if n // tp == 1 else ", %d instances to use all cards" % (n // tp))
    return _choice("tp" if n // tp == 1 else "tp_dp", tp, [reason])


def latency_tp(a):
    """(tensor-parallel degree, reason) for a latency objective: more TP only when the interconnect pays for it."""
    estimates = latency_estimates(a)
    return estimates["choice"], latency_words(a, estimates)


def _one_copy_per_card(a):
    n, port = a["n"], a["base_port"]
    if n == 1:
        return _choice("dp", 1, ["One card: one vLLM instance on port %d." % port])
    if a["single_endpoint"]:
        return _choice(
            "vllm_dp",
            1,
            [
                "single_endpoint: the model fits one card, so instead of one TP instance (the article's answer) vLLM's own "
                "--data-parallel-size %d serves %d copies behind one port, %d, with no load balancer; the copies share no all-reduce." % (n, n, port)
            ],
        )
    return _choice(
        "dp",
        1,
        [
            "Data parallel: one vLLM per card, %d instances on ports %d-%d behind the gateway: no all-reduce per layer, "
            "each card schedules its own requests (the article's rule for a model that fits one card; objective %s)." % (n, port, port + n - 1, a["objective"])
        ],
    )


def _split_copies(a, tp):
    n, port, groups = a["n"], a["base_port"], a["n"] // tp
    reasons = []
    if tp == a["tp_min"] and a["tp_min"] > 1:
        reasons.append(
            "Tensor parallel %d: the smallest degree whose per-card share fits: %s of %s." % (tp, fit_words(a["fits"][tp], a["overhead"]), gib(a["budget"]))
        )
    if groups >= 2 and a["single_endpoint"]:
        reasons.append("single_endpoint: one vLLM with --data-parallel-size %d over %d tensor-parallel-%d copies on port %d." % (groups, groups, tp, port))
        return _choice("vllm_dp", tp, reasons)
    if groups >= 2:
        reasons.append(
            "%d cards hold %d copies: %d tensor-parallel-%d instances on ports %d-%d behind the gateway." % (n, groups, groups, tp, port, port + groups - 1)
        )
        return _choice("tp_dp", tp, reasons)
    return _choice("tp", tp, reasons)


def _copies(a, tp):
    return _one_copy_per_card(a) if tp == 1 else _split_copies(a, tp)


def choose_throughput(a):
    """Objective throughput: the smallest split that fits (or tensor_parallel_size), as many copies as the cards hold."""
    return _copies(a, a["tensor_parallel_size"] or a["tp_min"])


def choose_latency(a):
    """Objective latency: more tensor parallel than the smallest split only when the estimated per-token time pays for a copy."""
    if a["tensor_parallel_size"] is not None or a["n"] < 2:
        return choose_throughput(a)
    tp, reason = latency_tp(a)
    choice = _copies(a, tp)
    return dict(choice, reasons=[reason, *choice["reasons"]])


OBJECTIVE_CHOOSERS = {"throughput": choose_throughput, "latency": choose_latency}


def choose_auto(a, forced_by=None):
    """Topology auto: the chooser of the objective (``forced_by`` is unused: nothing was forced)."""
    return OBJECTIVE_CHOOSERS[a["objective"]](a)


CHOOSERS = {"auto": choose_auto, "dp": choose_dp, "vllm_dp": choose_vllm_dp, "tp": choose_tp}


def choose(a, topology, forced_by="as requested"):
    """The choice for ``topology`` (auto or one the operator or the bake-off set) over the assessment ``a``."""
    return CHOOSERS[topology](a, forced_by)


def choose_measured(a, estimate, topology, reason):
    """The plan when the bake-off measured ``topology`` best (``reason`` says so), over the estimate's assessment.

    Returns a new plan: the estimate with the reason when the measurement agrees
    with it or the measured topology does not fit these settings, else the
    measured topology's plan. Neither ``estimate`` nor ``a`` is changed.
    """
    if topology == estimate["topology"]:
        return dict(estimate, reasons=[reason + "; the estimate agrees."] + estimate["reasons"], source="measured")
    try:
        chosen = plan_of(a, choose(a, "tp" if topology == "tp_dp" else topology, "as measured best"))
    except PlanError as exc:
        words = "%s; but %s does not fit the settings of this plan (%s), so the estimate stands." % (reason, topology, exc)
        return dict(estimate, reasons=[words] + estimate["reasons"])
    return dict(chosen, reasons=["%s; the estimate said %s." % (reason, estimate["topology"])] + chosen["reasons"], source="measured")


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


def _layout(a, tp):
    """(groups, cards used, weakest interconnect in a group, warnings) of ``tp``-way groups over the cards."""
    n, indices, links = a["n"], a["indices"], a["links"]
    groups = n // tp
    used = indices[: groups * tp]
    warnings = []
    if len(used) < n:
        warnings.append(unused_words(indices, used, n, tp))
    interconnect = None
    if tp > 1:
        interconnect = min((group_interconnect(links, used[g * tp : (g + 1) * tp]) for g in range(groups)), key=INTERCONNECT_RANK.get)
        if interconnect == "pcie_no_p2p":
            warnings.append(no_p2p_words(used, a["spec"]["layers"]))
    return groups, interconnect, warnings


def plan_of(a, choice):
    """The vllm_plan dict (without its launch) for a choice over the assessment ``a``."""
    chosen, tp = choice["topology"], choice["tp"]
    groups, interconnect, layout_warnings = _layout(a, tp)
    chosen_fit = a["fits"][tp]
    kv_tokens = chosen_fit["kv_tokens"]
    cpu_reasons = []
    if a["device"] == "cpu":
        kv_tokens, per_token = cpu_kv_tokens(a, tp)
        cpu_reasons.append(cpu_kv_words(tp, a["cpu_kvcache_space_gib"], per_token, kv_tokens))
    max_len, concurrency = a["max_model_len"], a["concurrency"]
    max_concurrency = round(kv_tokens / float(max_len), 2)
    holds = "Each instance holds %d tokens of KV cache: %.2fx sequences of %d tokens at once (asked: %d)." % (kv_tokens, max_concurrency, max_len, concurrency)
    return {
        "topology": chosen,
        "tensor_parallel_size": tp,
        "data_parallel_size": 1 if chosen == "tp" else groups,
        "instances": _instances(chosen, groups, tp, indices=a["indices"], base_port=a["base_port"], links=a["links"]),
        "memory": {
            "params": a["params"],
            "weights_bytes": a["weights"],
            "weights_bytes_per_gpu": chosen_fit["weights_card"],
            "kv_bytes_per_token": a["kv_bytes_per_token"],
            "kv_tokens_per_instance": kv_tokens,
            "max_concurrency": max_concurrency,
        },
        "reasons": [*a["reasons"], *choice["reasons"], *cpu_reasons, holds],
        "warnings": [*a["warnings"], *choice["warnings"], *layout_warnings],
        "model": a["name"],
        "cards": a["cards_words"],
        "dtype": a["dtype"],
        "max_model_len": max_len,
        "gpu_memory_utilization": a["utilization"],
        "interconnect": interconnect,
        "device": a["device"],
        "max_num_seqs": a["max_num_seqs"] or default_max_num_seqs(concurrency),
        "quantized_checkpoint": a["stored"] in ("fp8", "int4"),
        **({"cpu_kvcache_space_gib": a["cpu_kvcache_space_gib"]} if a["device"] == "cpu" else {}),
    }
