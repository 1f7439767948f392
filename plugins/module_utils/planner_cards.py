# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The cards: the nvidia_gpus facts (or a catalogue profile) checked, their links, and what to warn about them."""

from __future__ import annotations

from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import is_int
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_common import (
    INTERCONNECT_RANK,
    MAX_CARD_BYTES,
    MAX_GPU_INDEX,
    MAX_GPUS,
    PlanError,
    gib,
)


def _check_mig(index, card):
    mig = card.get("mig_mode")
    if mig is None:
        mig = {}
    if not isinstance(mig, dict) or not all(isinstance(mig.get(k, False), (bool, type(None))) for k in ("current", "pending")):
        raise PlanError("gpus", "card %d: mig_mode must be {current: bool, pending: bool} or null, not %r" % (index, mig))
    if mig.get("current"):
        raise PlanError(
            "gpus",
            "card %d (%s) has MIG enabled: vLLM takes whole cards by index and cannot use MIG instances "
            "(nor UUIDs) in CUDA_VISIBLE_DEVICES; disable MIG (nvidia-smi -i %d -mig 0, then reset the card) and plan again" % (index, card.get("name"), index),
        )


def _check_card(position, card, seen):
    """Refuse one card of the facts that vLLM could not use or the planner could not read."""
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
    _check_mig(index, card)


def check_cards(facts):
    """The cards of the facts, checked, in index order."""
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
    seen = set()
    for position, card in enumerate(cards):
        _check_card(position, card, seen)
        seen.add(card["index"])
    return sorted(cards, key=lambda card: card["index"])


def links_of(facts):
    """(from, to) -> interconnect of each card pair the facts know."""
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


def _compute_capability(card):
    cc = card.get("compute_capability")
    try:
        return float(cc) if cc else None
    except ValueError:
        return None


def _card_warnings(card, utilization, dtype):
    """What one card will make vLLM refuse, or run slower than planned."""
    warnings = []
    index, total = card["index"], card["memory_total_bytes"]
    free = card.get("memory_free_bytes")
    if isinstance(free, int) and free < utilization * total:
        warnings.append(
            "card %d has only %s free of %s (other processes hold memory): vLLM will refuse to start at gpu_memory_utilization %.2f until they stop"
            % (index, gib(free), gib(total), utilization)
        )
    if (card.get("mig_mode") or {}).get("pending"):
        warnings.append("card %d has MIG pending: after the next reset it will be unusable by vLLM; cancel it with nvidia-smi -i %d -mig 0" % (index, index))
    cc, cc_value = card.get("compute_capability"), _compute_capability(card)
    if cc_value is not None and dtype == "fp8" and cc_value < 8.9:
        warnings.append(
            "card %d (compute capability %s) has no FP8 tensor cores: vLLM runs fp8 as weight-only FP8 (Marlin), memory as planned but slower" % (index, cc)
        )
    if cc_value is not None and dtype == "bfloat16" and cc_value < 8.0:
        warnings.append("card %d (compute capability %s) has no bfloat16: set dtype float16" % (index, cc))
    return warnings


def card_warnings(cards, utilization, dtype):
    """Warnings about the cards for a plan at ``utilization`` in ``dtype``: mixed cards, busy cards, MIG pending, missing number formats."""
    warnings = []
    names = sorted({card.get("name") or "unknown card" for card in cards})
    smallest = min(card["memory_total_bytes"] for card in cards)
    if len(names) > 1 or len({card["memory_total_bytes"] for card in cards}) > 1:
        warnings.append("the cards differ (%s): every card is planned as the smallest, %s" % (" / ".join(names), gib(smallest)))
    for card in cards:
        warnings += _card_warnings(card, utilization, dtype)
    return warnings
