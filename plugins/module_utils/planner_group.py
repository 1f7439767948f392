# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Server groups: a model too big for one server, tensor parallel inside each server and pipeline parallel across them.

The inventory declares which servers may be grouped (``gpufleet_server_group``);
the plan role passes the group of the planning host as ``group``:

    {"name": "big", "host": "gpu3", "master_port": 29500, "interface": "eth0",
     "members": [{"host": "gpu3", "address": "10.0.0.3", "gpus": <facts>, "vllm_version": "0.26.0"}, ...]}

``check_group`` refuses a malformed group, naming ``group.<key>``. The members
must be alike (cards, count, vLLM version: ``check_alike``). Each member runs one
vLLM process over all its cards (tensor parallel ``tp``), and ``pp`` members form
one pipeline: vLLM's own multi-node launch (``--nnodes``, ``--node-rank``,
``--master-addr``, ``--master-port``; the followers ``--headless``). vLLM splits
the decoder layers evenly over the stages (``stage_layers``, as its
``get_pp_indices``); the first stage also holds the embeddings and the last the
final norm and LM head, and each stage keeps the KV cache of its own layers.
The smallest ``pp`` whose fullest card fits wins; a group of ``2 x pp`` members or
more is split, in inventory order, into copies ``<name>-0``, ``<name>-1`` ...
(data parallel of groups), and members left over are refused.
"""

from __future__ import annotations

import ipaddress
import math
import re

from ansible_collections.gpufleet.serving.plugins.module_utils import gpu_catalog
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import is_int
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_cards import check_cards, group_interconnect, links_of
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_choose import _instances, check_tensor_parallel
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_common import (
    GIB,
    INTERCONNECT_WORDS,
    LINEAR_BYTES,
    MAX_GPUS,
    PlanError,
    gib,
    other_bytes,
)
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_model import kv_bytes_per_token, weight_bytes
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_narrate import cpu_kv_words, fit_words, fmt_gib_value, no_p2p_words, unused_words
from ansible_collections.gpufleet.serving.plugins.module_utils.vllm_launch import cpu_kv_cache_bytes, default_max_num_seqs

GROUP_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
HOST_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
INTERFACE_RE = re.compile(r"[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,14}")
# A version such as 0.26.0, or words such as "(the vllm role's default)" that the plan role gives for a version it
# leaves to the vllm role: compared between members and shown in refusals, never run.
VERSION_RE = re.compile(r"[0-9A-Za-z(][0-9A-Za-z .+_()'-]{0,63}")
MAX_GROUP_MEMBERS = 64
MAX_ADDRESS_LENGTH = 253
DEFAULT_MASTER_PORT = 29500
GROUP_KEYS = ("name", "host", "members", "master_port", "interface")
MEMBER_KEYS = ("host", "address", "gpus", "gpu_profile", "gpu_count", "vllm_version")
# How far past the declared members the refusal looks for the pipeline that would fit.
MAX_HINT_STAGES = 256


def group_error(key, message):
    """A PlanError of parameter ``group`` whose message starts with ``group.<key>``."""
    error = PlanError("group", message)
    error.args = ("group.%s: %s" % (key, message) if key else "group: %s" % message,)
    return error


def _show(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def address_ok(text):
    """True for an IPv4/IPv6 literal (no zone). Not a DNS name: the members' units accept group traffic by address
    (IPAddressAllow=) and the group guard checks each peer's address, so a name would lock the members out."""
    if not isinstance(text, str) or not 1 <= len(text) <= MAX_ADDRESS_LENGTH:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return "%" not in text


def _text(group, key, pattern, words):
    value = group.get(key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise group_error(key, "must be %s, not %s" % (words, _show(value)))
    return value


def _unknown_keys(mapping, known, where):
    unknown = sorted(str(key)[:40] for key in mapping if key not in known)
    if unknown:
        raise group_error(where + unknown[0], "is not a key of %s; the keys are %s" % (where.rstrip(".") or "group", ", ".join(known)))


def _member_facts(where, member):
    """The member's facts: ``gpus`` as given, or ``gpu_count`` cards of ``gpu_profile``."""
    gpus, profile, count = member.get("gpus"), member.get("gpu_profile"), member.get("gpu_count")
    if gpus is not None and profile is not None:
        raise group_error(where + ".gpus", "give either gpus (the member's nvidia_gpus facts) or gpu_profile with gpu_count, not both")
    if gpus is not None:
        return gpus
    if profile is None:
        raise group_error(where + ".gpus", "give the member's nvidia_gpus facts in gpus, or gpu_profile and gpu_count")
    if not is_int(count, 1, MAX_GPUS):
        raise group_error(where + ".gpu_count", "must be a whole number of cards from 1 to %d, not %s" % (MAX_GPUS, _show(count)))
    try:
        return gpu_catalog.profile_facts(profile, count)
    except gpu_catalog.CatalogError as exc:
        raise group_error(where + "." + exc.param, str(exc)) from exc


def _member_cards(where, member):
    """(cards, links) of one member, its facts checked as the planning host's are."""
    facts = _member_facts(where, member)
    try:
        return check_cards(facts), links_of(facts)
    except PlanError as exc:
        raise group_error(where + ".gpus", str(exc)[len(exc.param) + 2 :]) from exc


def card_signature(cards):
    """(count, names, memory of the smallest card): what members of one pipeline must share."""
    names = " / ".join(sorted({card.get("name") or "unknown card" for card in cards}))
    return len(cards), names, min(card["memory_total_bytes"] for card in cards)


def signature_words(signature):
    return "%d x %s (%s each)" % (signature[0], signature[1], gib(signature[2]))


def _check_member(position, member):
    where = "members[%d]" % position
    if not isinstance(member, dict):
        raise group_error(where, "must be a mapping {host, address, gpus or gpu_profile and gpu_count, vllm_version}, not %s" % type(member).__name__)
    _unknown_keys(member, MEMBER_KEYS, where + ".")
    host = member.get("host")
    if not isinstance(host, str) or not HOST_NAME_RE.fullmatch(host):
        raise group_error(
            where + ".host", "must be an inventory host name (1-63 letters, digits, '.', '_', '-', starting with a letter or digit), not %s" % _show(host)
        )
    address = member.get("address")
    if not address_ok(address):
        raise group_error(
            where + ".address", "must be the IPv4 or IPv6 address (no zone) the other members reach %s at, not a name (the units and the group guard "
            "let peers in by address; gpufleet_group_address sets it), not %s" % (host, _show(address))
        )
    version = member.get("vllm_version")
    if version is not None and (not isinstance(version, str) or not VERSION_RE.fullmatch(version)):
        raise group_error(
            where + ".vllm_version", "must be a vLLM version such as 0.26.0 (1-64 letters, digits, spaces and . + _ ( ) ' -), not %s" % _show(version)
        )
    cards, links = _member_cards(where, member)
    return {"host": host, "address": address, "vllm_version": version, "signature": card_signature(cards), "links": links, "cards": cards}


def _check_members(members):
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_GROUP_MEMBERS:
        size = len(members) if isinstance(members, list) else type(members).__name__
        raise group_error("members", "must list the group's servers in inventory order, 1 to %d of them, not %s" % (MAX_GROUP_MEMBERS, size))
    checked = [_check_member(position, member) for position, member in enumerate(members)]
    for key in ("host", "address"):
        seen = {}
        for position, member in enumerate(checked):
            if member[key] in seen:
                raise group_error(
                    "members[%d].%s" % (position, key),
                    "%s is also members[%d]'s %s: every member is a different server" % (member[key], seen[member[key]], key),
                )
            seen[member[key]] = position
    return checked


def check_group(group):
    """The group checked: {name, host, position (of host in members), members, master_port, interface}; refusals name group.<key>."""
    if not isinstance(group, dict):
        raise group_error("", "must be a mapping {name, host, members, master_port, interface}, not %s" % type(group).__name__)
    _unknown_keys(group, GROUP_KEYS, "")
    name = _text(group, "name", GROUP_NAME_RE, "the server group's name (gpufleet_server_group: 1-32 of a-z, 0-9, '_', '-', starting with a letter or digit)")
    port = group.get("master_port")
    port = DEFAULT_MASTER_PORT if port is None else port
    if not is_int(port, 1024, 65535):
        raise group_error("master_port", "must be a TCP port from 1024 to 65535 for the leader's torch.distributed store, not %s" % _show(port))
    interface = _text(
        group, "interface", INTERFACE_RE, "the network interface between the servers (1-15 letters, digits, '_', '.', ':', '-', not starting with '-')"
    )
    if interface in (".", ".."):
        raise group_error("interface", "must name a network interface, not %s" % _show(interface))
    host = _text(group, "host", HOST_NAME_RE, "the planning host's inventory name")
    members = _check_members(group.get("members"))
    hosts = [member["host"] for member in members]
    if host not in hosts:
        raise group_error("host", "%s is not among the members of server group %s (%s)" % (host, name, ", ".join(hosts[:8])))
    return {"name": name, "host": host, "position": hosts.index(host), "members": members, "master_port": port, "interface": interface}


def check_alike(group, own_cards):
    """Refuse a group whose members differ in cards (name, memory, count) or vLLM version, or whose host's entry is not its own facts."""
    members, position = group["members"], group["position"]
    own = card_signature(own_cards)
    if members[position]["signature"] != own:
        raise group_error(
            "members[%d].gpus" % position,
            "this host %s is planned on %s, but its entry in the group says %s: pass the same facts"
            % (group["host"], signature_words(own), signature_words(members[position]["signature"])),
        )
    first = members[0]
    problems = []
    cards = [m for m in members if m["signature"] != first["signature"]]
    if cards:
        problems.append(
            "cards: %s has %s, but %s"
            % (first["host"], signature_words(first["signature"]), ", ".join("%s has %s" % (m["host"], signature_words(m["signature"])) for m in cards[:8]))
        )
    versions = [m for m in members if m["vllm_version"] != first["vllm_version"]]
    if versions:
        others = ", ".join("%s has %s" % (m["host"], m["vllm_version"] or "none given") for m in versions[:8])
        problems.append("vllm_version: %s has %s, but %s" % (first["host"], first["vllm_version"] or "none given", others))
    if problems:
        raise PlanError(
            "group",
            "the members of server group %s differ (%s); one pipeline needs the same cards (name, memory and count) and the same vLLM version "
            "on every server: make them alike, or put the odd ones in another gpufleet_server_group" % (group["name"], "; ".join(problems)),
        )


# ---------------------------------------------------------------------------
# Stages: the layers, weights and KV cache each server of a pipeline holds


def stage_layers(layers, pp):
    """Decoder layers of each pipeline stage, as vLLM's ``get_pp_indices`` splits them: the remainder goes to the stages before the last."""
    parts = [layers // pp] * pp
    for back in range(2, layers % pp + 2):
        parts[-back] += 1
    return parts


def weight_parts(a):
    """(bytes of one decoder layer, of the embeddings, of the final norm and LM head), scaled to the weights planned.

    The LM head counts on the last stage even when tied: vLLM's last stage keeps its own copy of the embeddings then.
    """
    spec, dtype = a["spec"], a["dtype"]
    estimate = weight_bytes(spec, dtype)
    embedding = spec["vocab_size"] * spec["hidden_size"] * other_bytes(dtype)
    norm = spec["hidden_size"] * other_bytes(dtype)
    layer = (estimate - embedding * (1 if spec["tied_embeddings"] else 2) - norm) / float(spec["layers"])
    scale = a["weights"] / float(estimate)
    return layer * scale, embedding * scale, (embedding + norm) * scale


def stage_fits(a, tp, pp):
    """Per stage: its layers and, on each of its ``tp`` cards, weights, KV per token, need for the goals' tokens, KV tokens that fit."""
    layer, embedding, head = weight_parts(a)
    kv_layer = kv_bytes_per_token(a["spec"], tp) // a["spec"]["layers"]
    stages = []
    for rank, count in enumerate(stage_layers(a["spec"]["layers"], pp)):
        held = count * layer + (embedding if rank == 0 else 0) + (head if rank == pp - 1 else 0)
        weights_card = math.ceil(held / tp)
        kv_token = kv_layer * count
        room = a["budget"] - weights_card - a["overhead"]
        kv_tokens = int(room // kv_token) if room > 0 and kv_token > 0 else 0
        stages.append(
            {
                "rank": rank,
                "layers": count,
                "weights_card": weights_card,
                "kv_token_card": kv_token,
                "kv_card": kv_token * a["tokens"],
                "need": weights_card + kv_token * a["tokens"] + a["overhead"],
                "kv_tokens": kv_tokens,
                "fits": kv_tokens >= a["tokens"],
            }
        )
    return stages


def fullest(stages):
    """The stage whose cards need the most."""
    return max(stages, key=lambda stage: stage["need"])


def group_tp(a):
    """Tensor parallel inside each server: the widest degree the model allows on a server's cards (all of them, normally).

    ``tensor_parallel_size`` when set.
    """
    if a["tensor_parallel_size"] is not None:
        if a["tensor_parallel_size"] not in a["sizes"]:
            raise PlanError(
                "tensor_parallel_size",
                "%d does not split the model's %d attention heads over this server's %d cards; use one of %s"
                % (a["tensor_parallel_size"], a["spec"]["attention_heads"], a["n"], ", ".join(str(t) for t in a["sizes"])),
            )
        return a["tensor_parallel_size"]
    return a["sizes"][-1]


def smallest_pipeline(a, tp, first, last):
    """(pp, stages) of the smallest pipeline of ``first``..``last`` stages (at most one per layer) whose every card fits, or (None, None)."""
    for pp in range(first, min(last, a["spec"]["layers"]) + 1):
        stages = stage_fits(a, tp, pp)
        if all(stage["fits"] for stage in stages):
            return pp, stages
    return None, None


def _stage_words(stage, overhead):
    return "%s weights + %s KV cache + %s overhead = %s" % (gib(stage["weights_card"]), gib(stage["kv_card"]), gib(overhead), gib(stage["need"]))


def _fp8_hint(a, tp, count):
    """What fp8 weights (vLLM's on-load quantization) would need, when they are smaller than the planned dtype."""
    if LINEAR_BYTES["fp8"] >= LINEAR_BYTES[a["dtype"]]:
        return None
    small = dict(a, weights=weight_bytes(a["spec"], "fp8"), dtype="fp8")
    pp, _stages = smallest_pipeline(small, tp, 2, MAX_HINT_STAGES)
    if pp is None:
        return None
    return "dtype fp8 (%s of weights) on %d such servers%s" % (gib(small["weights"]), pp, " (the group has them)" if pp <= count else "")


def refuse_group(a, group, tp):
    """The PlanError for a model that even all members of the group cannot hold: by how much, and what would."""
    count = len(group["members"])
    widest = min(count, a["spec"]["layers"])
    stages = stage_fits(a, tp, max(widest, 1))
    worst = fullest(stages)
    short = worst["need"] - a["budget"]
    words = (
        "%s in %s does not fit server group %s: with all %d of its servers of %s (tensor parallel %d x pipeline parallel %d), stage %d's cards need %s, "
        "%s (%.0f%%) more than the %s usable per card at gpu_memory_utilization %.2f."
    ) % (
        a["name"],
        a["dtype"],
        group["name"],
        count,
        signature_words(card_signature(a["cards"])),
        tp,
        widest,
        worst["rank"],
        _stage_words(worst, a["overhead"]),
        gib(max(short, 0)),
        100.0 * max(short, 0) / a["budget"],
        gib(a["budget"]),
        a["utilization"],
    )
    if count > a["spec"]["layers"]:
        words += " vLLM gives every stage at least one of the model's %d layers, so no more servers can join one pipeline." % a["spec"]["layers"]
    options = []
    more, _stages = smallest_pipeline(a, tp, count + 1, MAX_HINT_STAGES)
    options.append("%d such servers in the group" % more if more else "no group of up to %d such servers" % min(MAX_HINT_STAGES, a["spec"]["layers"]))
    if worst["weights_card"] + a["overhead"] < a["budget"]:
        fewer = min(stage["kv_tokens"] for stage in stages)
        options.append("fewer tokens: at most %d tokens of KV cache fit (max_model_len x concurrency, now %d)" % (fewer, a["tokens"]))
    hint = _fp8_hint(a, tp, count)
    if hint:
        options.append(hint)
    return PlanError("group", words + " What would fit: " + "; ".join(options) + ".")


def split_groups(group, pp):
    """(index of this host's copy, copies, its members, members left over): consecutive groups of ``pp`` in inventory order.

    Raises the PlanError for a host that is left over.
    """
    members, position = group["members"], group["position"]
    copies = len(members) // pp
    leftover = members[copies * pp :]
    index = position // pp
    if index >= copies:
        named = ", ".join("%s-%d (%s)" % (group["name"], i, ", ".join(m["host"] for m in members[i * pp : (i + 1) * pp])) for i in range(copies))
        raise PlanError(
            "group",
            "%s is left over in server group %s: the model needs %d servers per pipeline, and the group's %d servers in inventory order make %d "
            "such pipeline%s, %s; %s remain%s, too few for another. Add %d server%s like them to %s, or take %s out of it (gpufleet_server_group)"
            % (
                group["host"],
                group["name"],
                pp,
                len(members),
                copies,
                "" if copies == 1 else "s",
                named,
                ", ".join(m["host"] for m in leftover),
                "s" if len(leftover) == 1 else "",
                pp - len(leftover),
                "" if pp - len(leftover) == 1 else "s",
                group["name"],
                "it" if len(leftover) == 1 else "them",
            ),
        )
    return index, copies, members[index * pp : (index + 1) * pp], leftover


def group_of(group, index, mine):
    """The plan's ``group``: this copy's name, size, this host's rank, the leader, the port and interface, the members with their ranks."""
    leader = mine[0]
    return {
        "name": "%s-%d" % (group["name"], index),
        "nnodes": len(mine),
        "node_rank": group["position"] - index * len(mine),
        "leader": leader["host"],
        "master_addr": leader["address"],
        "master_port": group["master_port"],
        "interface": group["interface"],
        "members": [{"host": member["host"], "address": member["address"], "rank": rank} for rank, member in enumerate(mine)],
    }


def cpu_stage_tokens(a, stages):
    """(KV tokens, bytes per token per worker) of a pipeline on vLLM's CPU build: each worker's KV cache over its stage's share."""
    per_token = max(stage["kv_token_card"] for stage in stages)
    kv_tokens = cpu_kv_cache_bytes(a["cpu_kvcache_space_gib"]) // per_token
    if kv_tokens < a["tokens"]:
        need = math.ceil(a["tokens"] * per_token / float(GIB) * 100) / 100.0
        raise PlanError(
            "cpu_kvcache_space_gib",
            "%s GiB of KV cache per worker holds %d tokens of its stage's layers, fewer than max_model_len %d x concurrency %d = %d: "
            "set cpu_kvcache_space_gib to %s or more, or lower max_model_len or concurrency"
            % (fmt_gib_value(a["cpu_kvcache_space_gib"]), kv_tokens, a["max_model_len"], a["concurrency"], a["tokens"], fmt_gib_value(need)),
        )
    return kv_tokens, per_token


# ---------------------------------------------------------------------------
# The plan of one member


def not_needed_words(a, group, result):
    tp = result["tensor_parallel_size"]
    return (
        "Server group %s (%d server%s) is not needed: %s fits this server alone (tensor parallel %d: %s of %s usable per card), "
        "so it is planned like any other server."
    ) % (
        group["name"],
        len(group["members"]),
        "" if len(group["members"]) == 1 else "s",
        a["name"],
        tp,
        fit_words(a["fits"][tp], a["overhead"]),
        gib(a["budget"]),
    )


def one_server_words(a, tp):
    """Why one server is not enough (or, with topology pp forced, that it would be)."""
    one = a["fits"][tp]
    offer = "one server of %s offers %d x %s = %s at gpu_memory_utilization %.2f" % (
        signature_words(card_signature(a["cards"])),
        a["n"],
        gib(a["budget"]),
        gib(a["n"] * a["budget"]),
        a["utilization"],
    )
    if a["tp_min"] is not None:
        return "topology pp as requested: %s needs %s of weights and %s, and would fit it with tensor parallel %d (%s), but is spread over servers." % (
            a["name"],
            gib(a["weights"]),
            offer,
            a["tp_min"],
            fit_words(a["fits"][a["tp_min"]], a["overhead"]),
        )
    return "%s in %s needs %s of weights; %s, but with tensor parallel %d each card would need %s, %s more than the %s usable: it needs several servers." % (
        a["name"],
        a["dtype"],
        gib(a["weights"]),
        offer,
        tp,
        fit_words(one, a["overhead"]),
        gib(one["need"] - a["budget"]),
        gib(a["budget"]),
    )


def pipeline_words(a, tp, pp, stages):
    worst = fullest(stages)
    text = (
        "%d servers with tensor parallel %d x pipeline parallel %d (decoder layers %s by stage, as vLLM splits them; the first stage adds the embeddings, "
        "the last the LM head) put at most %s of weights on each card; the fullest cards (stage %d) need %s of the %s usable, %s to spare"
        % (
            pp,
            tp,
            pp,
            "/".join(str(stage["layers"]) for stage in stages),
            gib(max(stage["weights_card"] for stage in stages)),
            worst["rank"],
            _stage_words(worst, a["overhead"]),
            gib(a["budget"]),
            gib(a["budget"] - worst["need"]),
        )
    )
    if pp > 2:
        fewer = fullest(stage_fits(a, tp, pp - 1))
        text += "; %d servers would need %s per card" % (pp - 1, gib(fewer["need"]))
    return text + "."


def layout_words(tp, interconnect, group, placed):
    return (
        "Tensor parallel %d inside each server (%s: its two all-reduces per layer stay on the server), pipeline parallel across the servers over %s "
        "(one hand-off of activations per stage and step): the layout vLLM's documentation recommends for several nodes, launched by vLLM itself "
        "(--nnodes %d --node-rank --master-addr %s --master-port %d, the followers --headless), no Ray."
        % (tp, INTERCONNECT_WORDS.get(interconnect, "one card"), group["interface"], placed["nnodes"], placed["master_addr"], placed["master_port"])
    )


def group_words(group, copies, placed, port):
    members, pp = group["members"], placed["nnodes"]
    named = ", ".join("%s-%d (%s)" % (group["name"], i, ", ".join(m["host"] for m in members[i * pp : (i + 1) * pp])) for i in range(copies))
    text = "Server group %s: its %d servers in inventory order make %d pipeline%s of %d, %s" % (
        group["name"],
        len(members),
        copies,
        "" if copies == 1 else "s",
        pp,
        named,
    )
    if copies > 1:
        text += ", each one copy of the model behind the gateway (data parallel of groups)"
    if placed["node_rank"] == 0:
        role = "the leader: it serves the API on port %d, the only member of %s behind the gateway" % (port, placed["name"])
    else:
        role = "a follower: it runs vLLM headless, and the leader %s (%s) serves the API" % (placed["leader"], placed["master_addr"])
    return text + "; this host %s is rank %d of %s, %s." % (group["host"], placed["node_rank"], placed["name"], role)


def group_warnings(a, group, tp, placed, leftover):
    warnings = [
        "between the servers of %s, vLLM's torch.distributed, NCCL and gloo traffic on %s is unencrypted and lets a peer run code (vLLM's security notes): "
        "accept it only from the group's members (%s)" % (placed["name"], group["interface"], ", ".join(m["address"] for m in placed["members"]))
    ]
    if leftover:
        warnings.append(
            "server group %s: %s left over and refused: %d server%s do not make another pipeline of %d"
            % (group["name"], ", ".join(m["host"] for m in leftover), len(leftover), "" if len(leftover) == 1 else "s", placed["nnodes"])
        )
    used = a["indices"][:tp]
    if tp < a["n"]:
        warnings.append(unused_words(a["indices"], used, a["n"], tp))
    if tp > 1 and group_interconnect(a["links"], used) == "pcie_no_p2p":
        warnings.append(no_p2p_words(used, a["spec"]["layers"]))
    return warnings


def _memory(a, stages, kv_tokens, max_concurrency):
    worst = fullest(stages)
    return {
        "params": a["params"],
        "weights_bytes": a["weights"],
        "weights_bytes_per_gpu": max(stage["weights_card"] for stage in stages),
        "kv_bytes_per_token": a["kv_bytes_per_token"],
        "kv_tokens_per_instance": kv_tokens,
        "max_concurrency": max_concurrency,
        "kv_bytes_per_gpu": worst["kv_card"],
        "overhead_bytes_per_gpu": a["overhead"],
        "need_bytes_per_gpu": worst["need"],
        "usable_bytes_per_gpu": a["budget"],
        "headroom_bytes_per_gpu": a["budget"] - worst["need"],
        "stage_layers": [stage["layers"] for stage in stages],
    }


def group_plan(a, group, tp, found, lead):
    """The vllm_plan (without its launch) of this host as a member of a pipeline of ``found`` = (pp, stages)."""
    pp, stages = found
    index, copies, mine, leftover = split_groups(group, pp)
    placed = group_of(group, index, mine)
    instance = _instances("tp", 1, tp, indices=a["indices"], base_port=a["base_port"], links=a["links"])[0]
    instance["role"] = "leader" if placed["node_rank"] == 0 else "follower"
    interconnect = group_interconnect(a["links"], a["indices"][:tp]) if tp > 1 else None
    kv_tokens = min(stage["kv_tokens"] for stage in stages)
    extra = []
    if a["device"] == "cpu":
        kv_tokens, per_token = cpu_stage_tokens(a, stages)
        extra.append(cpu_kv_words(tp, a["cpu_kvcache_space_gib"], per_token, kv_tokens))
    max_concurrency = round(kv_tokens / float(a["max_model_len"]), 2)
    holds = "The pipeline holds %d tokens of KV cache: %.2fx sequences of %d tokens at once (asked: %d)."
    extra.append(holds % (kv_tokens, max_concurrency, a["max_model_len"], a["concurrency"]))
    reasons = [lead, pipeline_words(a, tp, pp, stages), layout_words(tp, interconnect, group, placed), group_words(group, copies, placed, a["base_port"])]
    return {
        "topology": "pp",
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "data_parallel_size": 1,
        "instances": [instance],
        "group": placed,
        "memory": _memory(a, stages, kv_tokens, max_concurrency),
        "reasons": [*a["reasons"], *reasons, *extra],
        "warnings": [*a["warnings"], *group_warnings(a, group, tp, placed, leftover)],
        "model": a["name"],
        "cards": a["cards_words"],
        "dtype": a["dtype"],
        "max_model_len": a["max_model_len"],
        "gpu_memory_utilization": a["utilization"],
        "interconnect": interconnect,
        "device": a["device"],
        "max_num_seqs": a["max_num_seqs"] or default_max_num_seqs(a["concurrency"]),
        "quantized_checkpoint": a["stored"] in ("fp8", "int4"),
        "source": "estimated",
        **({"cpu_kvcache_space_gib": a["cpu_kvcache_space_gib"]} if a["device"] == "cpu" else {}),
    }


def plan_with_group(a, group, single):
    """The plan of a host of a server group: ``single()`` (the server's own plan, with ``group`` None) when the model fits
    this server and topology is not pp, else the plan of its place in a pipeline of servers.
    """
    if group is None:
        raise PlanError(
            "topology",
            "pp spreads the model over several servers (vLLM's multi-node launch) and needs group: put the host in a gpufleet_server_group, "
            "or use topology auto, dp, tp or vllm_dp",
        )
    checked = check_group(group)
    if a["topology"] != "pp" and (a["tp_min"] is not None or a["topology"] != "auto"):
        check_tensor_parallel(a)
        result = single()
        return dict(result, group=None, reasons=[*result["reasons"], not_needed_words(a, checked, result)])
    check_alike(checked, a["cards"])
    tp = group_tp(a)
    if a["spec"]["layers"] < 2:
        raise PlanError("group", "%s has %d decoder layer: pipeline parallel needs 2 or more, one per stage at least" % (a["name"], a["spec"]["layers"]))
    pp, stages = smallest_pipeline(a, tp, 2, len(checked["members"]))
    if pp is None:
        raise refuse_group(a, checked, tp)
    return group_plan(a, checked, tp, (pp, stages), one_server_words(a, tp))


__all__ = [
    "DEFAULT_MASTER_PORT",
    "MAX_GROUP_MEMBERS",
    "address_ok",
    "card_signature",
    "check_alike",
    "check_group",
    "cpu_stage_tokens",
    "fullest",
    "group_error",
    "group_of",
    "group_plan",
    "group_tp",
    "plan_with_group",
    "refuse_group",
    "smallest_pipeline",
    "split_groups",
    "stage_fits",
    "stage_layers",
    "weight_parts",
]
