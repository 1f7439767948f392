# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Server groups (issue 23): tensor parallel inside each server, pipeline parallel across the servers of a group.

The per-card figures are computed here from the model's shape, independently of
the planner's parameter counting: Llama's layer is q, k, v, o, a gated MLP and
two norms; vLLM splits the layers as its ``get_pp_indices`` does; the first
stage holds the embeddings, the last the final norm and the LM head.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import gpu_catalog, nvml_facts, planner_group, planner_plan
from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_planner as vp

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
LLAMA_70B = str(FIXTURES / "models" / "Llama-3.1-70B")
LLAMA_8B = str(FIXTURES / "models" / "Llama-3.1-8B")
GIB = 1024**3
# Llama-3.1-405B's config.json (meta-llama/Llama-3.1-405B), the fields the planner reads.
LLAMA_405B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 16384,
    "intermediate_size": 53248,
    "num_hidden_layers": 126,
    "num_attention_heads": 128,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
# The tiny model of tests/model/make_tiny_model.py (config.json only: the planner reads nothing else).
TINY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 444,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}
TOKENS = 8192


def model_dir(tmp_path, name, config):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture
def llama_405b(tmp_path):
    return model_dir(tmp_path, "Llama-3.1-405B", LLAMA_405B)


@pytest.fixture
def tiny(tmp_path):
    return model_dir(tmp_path, "tiny", TINY)


@pytest.fixture
def h200x2():
    return nvml_facts.facts_from_raw(json.loads((FIXTURES / "nvml" / "h200x2-nvlink.nvml.json").read_text()), "snapshot")


def members(count, profile="l40s", **common):
    """``count`` two-card servers gpu1, gpu2, ... of a catalogue profile, at 10.0.0.1, 10.0.0.2, ... (``common`` changes each)."""
    base = {"gpu_profile": profile, "gpu_count": 2, "vllm_version": "0.26.0"}
    return [dict(base, host="gpu%d" % n, address="10.0.0.%d" % n, **common) for n in range(1, count + 1)]


def group(host, member_list, **changes):
    return dict({"name": "big", "host": host, "members": member_list, "master_port": 29500, "interface": "eth0"}, **changes)


def plan_on(profile, model, count, host="gpu1", **kwargs):
    kwargs.setdefault("max_model_len", TOKENS)
    return vp.plan(gpu_profile=profile, gpu_count=2, model=model, group=group(host, members(count, profile)), **kwargs)


def refused(**kwargs):
    with pytest.raises(vp.PlanError) as error:
        vp.plan(**kwargs)
    return error.value


# ---------------------------------------------------------------------------
# The figures, computed independently


def vllm_layer_split(layers, pp):
    """vLLM's get_pp_indices without VLLM_PP_LAYER_PARTITION: even, the remainder on the stages before the last."""
    parts = [layers // pp] * pp
    for back in range(2, layers % pp + 2):
        parts[-back] += 1
    return parts


def llama_config(path):
    return json.loads((Path(path) / "config.json").read_text()) if Path(path).is_dir() else LLAMA_405B


def independent(config, profile, tp, pp, tokens=TOKENS):
    """Per stage (weights, KV, need) per card in bytes for a bf16 Llama on ``tp`` x ``pp`` cards of ``profile`` at 0.9."""
    h, inter, layers, vocab = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"], config["vocab_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = h // heads
    layer = h * h + 2 * h * kv_heads * head_dim + h * h + 3 * h * inter + 2 * h
    stages = []
    for rank, count in enumerate(vllm_layer_split(layers, pp)):
        params = count * layer + (vocab * h if rank == 0 else 0) + (vocab * h + h if rank == pp - 1 else 0)
        weights = params * 2 / tp
        kv = 2 * count * (kv_heads // tp) * head_dim * 2 * tokens
        stages.append((weights, kv, weights + kv + 2 * GIB))
    return stages


def smallest_independent(config, profile, tp=2, limit=64):
    budget = int(0.9 * gpu_catalog.memory_bytes(gpu_catalog.PROFILES[profile]))
    for pp in range(1, limit + 1):
        stages = independent(config, profile, tp, pp)
        if max(stage[2] for stage in stages) <= budget:
            return pp, stages, budget
    return None, None, budget


def test_layers_split_as_vllm_splits_them():
    # vLLM's own examples (docs and tests/distributed/test_pipeline_partition.py).
    assert vp.stage_layers(32, 4) == [8, 8, 8, 8]
    assert vp.stage_layers(22, 4) == [5, 6, 6, 5]
    assert vp.stage_layers(5, 3) == [2, 2, 1]
    assert vp.stage_layers(61, 2) == [31, 30]
    assert vp.stage_layers(61, 4) == [15, 15, 16, 15]
    assert vp.stage_layers(126, 4) == [31, 32, 32, 31]
    for layers in (2, 80, 126):
        for pp in range(1, layers + 1):
            assert vp.stage_layers(layers, pp) == vllm_layer_split(layers, pp)


# Two-card servers, bf16, max_model_len 8192, concurrency 1: the servers needed (1: the group is not needed).
SERVERS_70B = {"rtx-4090": 4, "a100-40gb": 2, "l40s": 2, "a100-80gb": 1, "h100-sxm": 1, "h200": 1}
SERVERS_405B = {"rtx-4090": 22, "l40s": 10, "a100-80gb": 6, "h100-sxm": 6, "h200": 4}


def check_group_figures(result, config, profile, servers):
    pp, stages, budget = smallest_independent(config, profile)
    assert pp == servers
    assert (result["topology"], result["tensor_parallel_size"], result["pipeline_parallel_size"]) == ("pp", 2, servers)
    memory = result["memory"]
    assert memory["stage_layers"] == vllm_layer_split(config["num_hidden_layers"], servers)
    assert memory["weights_bytes_per_gpu"] == pytest.approx(max(stage[0] for stage in stages), abs=1)
    fullest = max(stages, key=lambda stage: stage[2])
    assert memory["need_bytes_per_gpu"] == pytest.approx(fullest[2], abs=1)
    assert memory["kv_bytes_per_gpu"] == fullest[1]
    assert memory["usable_bytes_per_gpu"] == budget and memory["headroom_bytes_per_gpu"] == pytest.approx(budget - fullest[2], abs=1)
    # One server fewer would not fit.
    fewer = independent(config, profile, 2, servers - 1)
    assert max(stage[2] for stage in fewer) > budget


@pytest.mark.parametrize(("profile", "servers"), sorted(SERVERS_70B.items()))
def test_llama_70b_on_groups_of_two_card_servers(profile, servers):
    result = plan_on(profile, LLAMA_70B, 8)
    if servers == 1:
        assert result["topology"] == "tp" and result["group"] is None and "pipeline_parallel_size" not in result
        assert result["reasons"][-1].startswith("Server group big (8 servers) is not needed: Llama-3.1-70B fits this server alone (tensor parallel 2: ")
        assert smallest_independent(llama_config(LLAMA_70B), profile)[0] == 1
        return
    check_group_figures(result, llama_config(LLAMA_70B), profile, servers)
    assert result["group"]["nnodes"] == servers and result["group"]["name"] == "big-0"


@pytest.mark.parametrize(("profile", "servers"), sorted(SERVERS_405B.items()))
def test_llama_405b_on_groups_of_two_card_servers(llama_405b, profile, servers):
    result = plan_on(profile, llama_405b, 64)
    check_group_figures(result, LLAMA_405B, profile, servers)
    assert result["group"]["members"] == [{"host": "gpu%d" % (n + 1), "address": "10.0.0.%d" % (n + 1), "rank": n} for n in range(servers)]


def test_the_reasons_give_the_numbers():
    result = plan_on("rtx-4090", LLAMA_70B, 4, host="gpu2")
    text = "\n".join(result["reasons"])
    assert (
        "Llama-3.1-70B in bfloat16 needs 131.4 GiB of weights; one server of 2 x NVIDIA GeForce RTX 4090 (24.0 GiB each) offers 2 x 21.6 GiB = 43.2 GiB "
        "at gpu_memory_utilization 0.90, but with tensor parallel 2 each card would need 65.7 GiB weights + 1.2 GiB KV cache + 2.0 GiB overhead = 69.0 GiB"
    ) in text
    assert "4 servers with tensor parallel 2 x pipeline parallel 4 (decoder layers 20/20/20/20 by stage" in text
    assert "put at most 16.9 GiB of weights on each card; the fullest cards (stage 3) need 16.9 GiB weights + 0.3 GiB KV cache + 2.0 GiB overhead" in text
    assert "3 servers would need 24.9 GiB per card" in text
    assert "this host gpu2 is rank 1 of big-0, a follower: it runs vLLM headless, and the leader gpu1 (10.0.0.1) serves the API" in text
    assert any("unencrypted" in warning and "10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4" in warning for warning in result["warnings"])


# ---------------------------------------------------------------------------
# The plan's group: ranks, leader, copies, members left over


def test_ranks_leader_and_follower():
    leader = plan_on("l40s", LLAMA_70B, 2, host="gpu1")
    follower = plan_on("l40s", LLAMA_70B, 2, host="gpu2")
    assert leader["group"] == {
        "name": "big-0",
        "nnodes": 2,
        "node_rank": 0,
        "leader": "gpu1",
        "master_addr": "10.0.0.1",
        "master_port": 29500,
        "interface": "eth0",
        "members": [{"host": "gpu1", "address": "10.0.0.1", "rank": 0}, {"host": "gpu2", "address": "10.0.0.2", "rank": 1}],
    }
    assert follower["group"] == dict(leader["group"], node_rank=1)
    assert [(i["name"], i["port"], i["gpus"], i["role"]) for i in leader["instances"]] == [("main", 8001, [0, 1], "leader")]
    assert [(i["name"], i["port"], i["gpus"], i["role"]) for i in follower["instances"]] == [("main", 8001, [0, 1], "follower")]
    assert leader["data_parallel_size"] == 1 and leader["interconnect"] == "pcie_p2p"


def test_copies_of_groups_are_named_in_inventory_order():
    names = {}
    for n in range(1, 7):
        result = plan_on("l40s", LLAMA_70B, 6, host="gpu%d" % n)
        names["gpu%d" % n] = (result["group"]["name"], result["group"]["node_rank"], result["group"]["leader"], result["instances"][0]["role"])
    assert names == {
        "gpu1": ("big-0", 0, "gpu1", "leader"),
        "gpu2": ("big-0", 1, "gpu1", "follower"),
        "gpu3": ("big-1", 0, "gpu3", "leader"),
        "gpu4": ("big-1", 1, "gpu3", "follower"),
        "gpu5": ("big-2", 0, "gpu5", "leader"),
        "gpu6": ("big-2", 1, "gpu5", "follower"),
    }
    result = plan_on("l40s", LLAMA_70B, 6, host="gpu4")
    assert result["group"]["members"] == [{"host": "gpu3", "address": "10.0.0.3", "rank": 0}, {"host": "gpu4", "address": "10.0.0.4", "rank": 1}]
    assert "make 3 pipelines of 2, big-0 (gpu1, gpu2), big-1 (gpu3, gpu4), big-2 (gpu5, gpu6), each one copy of the model behind the gateway" in (
        " ".join(result["reasons"])
    )


def test_a_member_left_over_is_refused_and_the_others_are_told():
    error = refused(gpu_profile="l40s", gpu_count=2, model=LLAMA_70B, max_model_len=TOKENS, group=group("gpu5", members(5)))
    assert error.param == "group"
    assert str(error).startswith("group: gpu5 is left over in server group big: the model needs 2 servers per pipeline")
    assert "big-0 (gpu1, gpu2), big-1 (gpu3, gpu4); gpu5 remains, too few for another. Add 1 server like them to big, or take it out of it" in str(error)
    assert error.details["model"] == "Llama-3.1-70B"
    others = plan_on("l40s", LLAMA_70B, 5, host="gpu3")
    assert others["group"]["name"] == "big-1"
    assert any(w.startswith("server group big: gpu5 left over and refused") for w in others["warnings"])


def test_a_model_that_fits_one_server_ignores_the_group(h200x2):
    alone = vp.plan(gpus=h200x2, model=LLAMA_8B, max_model_len=TOKENS)
    grouped = vp.plan(gpus=h200x2, model=LLAMA_8B, max_model_len=TOKENS, group=None)
    assert grouped == alone and "group" not in alone
    facts_members = [{"host": "gpu%d" % n, "address": "10.0.0.%d" % n, "gpus": h200x2} for n in (1, 2, 3)]
    with_group = vp.plan(gpus=h200x2, model=LLAMA_8B, max_model_len=TOKENS, group=group("gpu2", facts_members))
    assert with_group["group"] is None
    assert {k: v for k, v in with_group.items() if k not in ("group", "reasons")} == {k: v for k, v in alone.items() if k != "reasons"}
    assert with_group["reasons"] == [
        *alone["reasons"],
        "Server group big (3 servers) is not needed: Llama-3.1-8B fits this server alone (tensor parallel 1: 15.0 GiB weights + 1.0 GiB KV cache + "
        "2.0 GiB overhead = 18.0 GiB of 126.4 GiB usable per card), so it is planned like any other server.",
    ]


# ---------------------------------------------------------------------------
# topology pp forced: the tiny model on the two-H200 capture


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_pp_forced_on_the_tiny_model(h200x2, tiny, device):
    facts_members = [
        {"host": "fleet-1", "address": "10.88.0.11", "gpus": h200x2, "vllm_version": "0.26.0"},
        {"host": "fleet-2", "address": "10.88.0.12", "gpus": h200x2, "vllm_version": "0.26.0"},
    ]
    dtype = "float32" if device == "cpu" else "auto"
    plans = [
        vp.plan(gpus=h200x2, model=tiny, topology="pp", device=device, dtype=dtype, group=group(host, facts_members, name="pair"))
        for host in ("fleet-1", "fleet-2")
    ]
    for rank, result in enumerate(plans):
        assert (result["topology"], result["tensor_parallel_size"], result["pipeline_parallel_size"]) == ("pp", 2, 2)
        assert result["group"]["name"] == "pair-0" and result["group"]["node_rank"] == rank and result["group"]["leader"] == "fleet-1"
        assert result["group"]["master_addr"] == "10.88.0.11" and result["group"]["nnodes"] == 2
        assert [m["rank"] for m in result["group"]["members"]] == [0, 1]
        assert result["instances"][0]["role"] == ("leader", "follower")[rank] and result["instances"][0]["gpus"] == [0, 1]
        assert result["memory"]["stage_layers"] == [1, 1]
        assert result["reasons"][3].startswith("topology pp as requested: tiny needs 0.0 GiB of weights")
    if device == "cpu":
        # One worker per planned card, each with its stage's layer: 1 GiB / (1 layer x 1 KV head x 32 x 2 x 4 bytes).
        assert plans[0]["cpu_kvcache_space_gib"] == 1 and plans[0]["memory"]["kv_tokens_per_instance"] == GIB // 256


def test_pp_needs_a_group(h200x2, tiny):
    error = refused(gpus=h200x2, model=tiny, topology="pp")
    assert error.param == "topology" and "needs group" in str(error)


def test_a_forced_single_server_topology_is_not_replaced_by_a_group():
    error = refused(gpu_profile="l40s", gpu_count=2, model=LLAMA_70B, max_model_len=TOKENS, topology="tp", group=group("gpu1", members(2)))
    assert error.param == "model" and "does not fit" in str(error)


def test_tensor_parallel_size_sets_the_split_inside_each_server():
    result = plan_on("l40s", LLAMA_70B, 8, tensor_parallel_size=1)
    pp, _stages, _budget = smallest_independent(llama_config(LLAMA_70B), "l40s", tp=1)
    assert (result["tensor_parallel_size"], result["pipeline_parallel_size"], pp) == (1, 4, 4)
    assert result["instances"][0]["gpus"] == [0]
    assert any("card 1 stay unused" in warning for warning in result["warnings"])


# ---------------------------------------------------------------------------
# Refusals: groups that differ, groups too small


def test_members_with_other_cards_are_refused_by_name():
    mixed = members(3)
    mixed[2].update(gpu_profile="rtx-4090")
    error = refused(gpu_profile="l40s", gpu_count=2, model=LLAMA_70B, max_model_len=TOKENS, group=group("gpu1", mixed))
    assert error.param == "group"
    words = "the members of server group big differ (cards: gpu1 has 2 x NVIDIA L40S (48.0 GiB each), but gpu3 has 2 x NVIDIA GeForce RTX 4090 (24.0 GiB each))"
    assert words in str(error)
    fewer = members(2)
    fewer[1].update(gpu_count=1)
    assert "gpu2 has 1 x NVIDIA L40S (48.0 GiB each)" in str(refused(gpu_profile="l40s", gpu_count=2, model=LLAMA_70B, group=group("gpu1", fewer)))


def test_a_version_left_to_the_vllm_role_is_the_same_on_every_member():
    same = members(2, vllm_version="(the vllm role's default)")
    assert plan_on("l40s", LLAMA_70B, 2)["topology"] == "pp"
    result = vp.plan(gpu_profile="l40s", gpu_count=2, model=LLAMA_70B, max_model_len=TOKENS, group=group("gpu2", same))
    assert result["group"]["node_rank"] == 1


def test_members_with_another_vllm_version_are_refused_by_name():
    mixed = members(4)
    mixed[1].update(vllm_version="0.25.1")
    mixed[3].update(vllm_version=None)
    error = refused(gpu_profile="l40s", gpu_count=2, model=LLAMA_70B, max_model_len=TOKENS, group=group("gpu3", mixed))
    assert error.param == "group"
    assert "(vllm_version: gpu1 has 0.26.0, but gpu2 has 0.25.1, gpu4 has none given)" in str(error)


def test_the_hosts_own_entry_must_be_its_facts():
    error = refused(gpu_profile="h200", gpu_count=2, model=LLAMA_70B, topology="pp", group=group("gpu1", members(2)))
    assert str(error).startswith("group.members[0].gpus: this host gpu1 is planned on 2 x NVIDIA H200 (140.4 GiB each), but its entry in the group says")


def test_a_group_too_small_says_by_how_much_and_what_would_do(llama_405b):
    error = refused(gpu_profile="rtx-4090", gpu_count=2, model=llama_405b, max_model_len=TOKENS, group=group("gpu1", members(8, "rtx-4090")))
    assert error.param == "group"
    text = str(error)
    assert text.startswith(
        "group: Llama-3.1-405B in bfloat16 does not fit server group big: with all 8 of its servers of 2 x NVIDIA GeForce RTX 4090 (24.0 GiB each) "
        "(tensor parallel 2 x pipeline parallel 8), stage "
    )
    assert "more than the 21.6 GiB usable per card at gpu_memory_utilization 0.90" in text
    assert "What would fit: 22 such servers in the group; dtype fp8 (381.9 GiB of weights) on 11 such servers." in text
    assert error.details["model"] == "Llama-3.1-405B"


def test_a_pipeline_has_at_most_one_stage_per_layer(tmp_path):
    huge = dict(TINY, hidden_size=65536, intermediate_size=2**22, num_attention_heads=512, num_key_value_heads=8, head_dim=128)
    huge_dir = model_dir(tmp_path, "huge", huge)
    error = refused(gpu_profile="rtx-4090", gpu_count=2, model=huge_dir, max_model_len=2048, group=group("gpu1", members(4, "rtx-4090")))
    assert error.param == "group" and "vLLM gives every stage at least one of the model's 2 layers" in str(error)
    one = dict(TINY, num_hidden_layers=1)
    facts = gpu_catalog.profile_facts("h200", 2)
    error = refused(gpus=facts, model=model_dir(tmp_path, "one", one), topology="pp", group=group("gpu1", members(2, "h200")))
    assert error.param == "group" and "1 decoder layer: pipeline parallel needs 2 or more" in str(error)


def test_one_member_alone_cannot_make_a_pipeline():
    error = refused(gpu_profile="l40s", gpu_count=2, model=LLAMA_70B, max_model_len=TOKENS, group=group("gpu1", members(1)))
    assert error.param == "group" and "with all 1 of its servers" in str(error) and "What would fit: 2 such servers in the group" in str(error)


# ---------------------------------------------------------------------------
# Hostile groups: every refusal names group.<key>


def hostile(**changes):
    base = group("gpu1", members(2))
    for key, value in changes.items():
        if key.startswith("m0_"):
            base["members"][0][key[3:]] = value
        else:
            base[key] = value
    return base


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"name": "Big"}, "group.name"),
        ({"name": "b" * 33}, "group.name"),
        ({"name": "big\n"}, "group.name"),
        ({"name": None}, "group.name"),
        ({"host": "-gpu1"}, "group.host"),
        ({"host": "gpu9"}, "group.host"),
        ({"host": "g" * 64}, "group.host"),
        ({"members": []}, "group.members"),
        ({"members": "gpu1"}, "group.members"),
        ({"members": members(65)}, "group.members"),
        ({"members": [5]}, "group.members[0]"),
        ({"master_port": 80}, "group.master_port"),
        ({"master_port": True}, "group.master_port"),
        ({"master_port": 65536}, "group.master_port"),
        ({"master_port": "29500"}, "group.master_port"),
        ({"interface": "-eth0"}, "group.interface"),
        ({"interface": "eth0 up"}, "group.interface"),
        ({"interface": "e" * 16}, "group.interface"),
        ({"interface": ".."}, "group.interface"),
        ({"interface": None}, "group.interface"),
        ({"ray": True}, "group.ray"),
        ({"m0_host": "gpu 1"}, "group.members[0].host"),
        ({"m0_address": "10.0.0.1; rm -rf /"}, "group.members[0].address"),
        ({"m0_address": "-oProxyCommand=x"}, "group.members[0].address"),
        ({"m0_address": "fe80::1%eth0"}, "group.members[0].address"),
        ({"m0_address": "10.0.0.999"}, "group.members[0].address"),
        ({"m0_address": "host_name.example"}, "group.members[0].address"),
        ({"m0_address": "gpu1.fleet.example"}, "group.members[0].address"),
        ({"m0_address": "a" * 254}, "group.members[0].address"),
        ({"m0_address": ""}, "group.members[0].address"),
        ({"m0_address": "10.0.0.2"}, "group.members[1].address"),
        ({"m0_host": "gpu2"}, "group.members[1].host"),
        ({"m0_vllm_version": "0.26.0; rm -rf /"}, "group.members[0].vllm_version"),
        ({"m0_vllm_version": "$(id)"}, "group.members[0].vllm_version"),
        ({"m0_vllm_version": "-0.26.0"}, "group.members[0].vllm_version"),
        ({"m0_vllm_version": "0" * 65}, "group.members[0].vllm_version"),
        ({"m0_vllm_version": 26}, "group.members[0].vllm_version"),
        ({"m0_gpu_count": 0}, "group.members[0].gpu_count"),
        ({"m0_gpu_count": 65}, "group.members[0].gpu_count"),
        ({"m0_gpu_profile": "tpu-v5"}, "group.members[0].gpu_profile"),
        ({"m0_gpus": {"available": False}}, "group.members[0].gpus"),
        ({"m0_gpus": {"available": True, "gpus": [{"index": 0, "memory_total_bytes": -1}]}}, "group.members[0].gpus"),
        ({"m0_password": "x"}, "group.members[0].password"),
    ],
)
def test_hostile_groups_are_refused_naming_the_key(changes, key):
    error = refused(gpu_profile="l40s", gpu_count=2, model=LLAMA_70B, max_model_len=TOKENS, group=hostile(**changes))
    assert error.param == "group"
    assert str(error).startswith(key + ": "), str(error)


def test_a_group_that_is_not_a_mapping():
    error = refused(gpu_profile="l40s", gpu_count=2, model=LLAMA_70B, group=["gpu1", "gpu2"])
    assert error.param == "group" and str(error).startswith("group: must be a mapping")


def test_addresses_and_hosts_that_are_fine():
    for address in ("10.0.0.1", "2001:db8::1", "fd00::12"):
        assert planner_group.address_ok(address), address
    # Names too: the members' units and group guards let peers in by address.
    for address in ("gpu1", "gpu1.fleet.example", "a-b.example", "gpu1.", "a..b", "-a", "1.2.3", "10.0.0.1 ", "[::1]", "fe80::1%eth0", None, 5):
        assert not planner_group.address_ok(address), address
    checked = planner_group.check_group(group("gpu1.fleet", [dict(members(1)[0], host="gpu1.fleet")], master_port=None))
    assert checked["master_port"] == vp.DEFAULT_MASTER_PORT and checked["position"] == 0


def test_the_group_is_not_changed():
    given = group("gpu2", members(4, "rtx-4090"))
    kept = copy.deepcopy(given)
    plan_on("rtx-4090", LLAMA_70B, 4, host="gpu2")
    vp.plan(gpu_profile="rtx-4090", gpu_count=2, model=LLAMA_70B, max_model_len=TOKENS, group=given)
    assert given == kept


# ---------------------------------------------------------------------------
# The table, and the assessment the group plan starts from


def test_the_table_shows_the_group():
    result = plan_on("l40s", LLAMA_70B, 4, host="gpu4")
    assert vp.topology_words(result) == "pp 2x2 big-1 rank 1"
    text = vp.format_plan_table([{"host": "gpu4", "plan": result}])
    assert "pp 2x2 big-1 rank 1" in text.splitlines()[2]


def test_the_assessment_leaves_a_model_too_big_for_one_server_to_the_group():
    a = planner_plan.assessment(check_fit=False, gpu_profile="l40s", gpu_count=2, model=LLAMA_70B, max_model_len=TOKENS)
    assert a["tp_min"] is None
    with pytest.raises(vp.PlanError):
        planner_plan.assessment(gpu_profile="l40s", gpu_count=2, model=LLAMA_70B, max_model_len=TOKENS)
    stages = vp.stage_fits(a, 2, 2)
    assert [stage["layers"] for stage in stages] == [40, 40] and all(stage["fits"] for stage in stages)


def test_measured_results_do_not_decide_a_group(tmp_path):
    result = plan_on("l40s", LLAMA_70B, 2, measured=str(tmp_path / "none.json"))
    assert result["topology"] == "pp"
    assert result["reasons"][0].startswith("measured: the bake-off measures one server")


# ---------------------------------------------------------------------------
# docs/planner.md, section 8: the table of servers needed is the planner's

DOCS = Path(__file__).resolve().parents[4] / "docs" / "planner.md"
TABLE_PROFILES = ("rtx-4090", "rtx-5090", "a100-40gb", "l40s", "a100-80gb", "h100-sxm", "h200")


def stage_words(parts):
    """Layers per stage: 20/20/20/20 for up to six stages, else runs such as "5 (stages 0-4), 6 (5-20), 5 (21)"."""
    if len(parts) <= 6:
        return "/".join(str(part) for part in parts)
    runs = []
    for rank, part in enumerate(parts):
        if runs and runs[-1][0] == part:
            runs[-1][2] = rank
        else:
            runs.append([part, rank, rank])
    words = ["%d (%s)" % (part, first if first == last else "%d-%d" % (first, last)) for part, first, last in runs]
    first, last = runs[0][1], runs[0][2]
    words[0] = "%d (%s)" % (runs[0][0], "stage %d" % first if first == last else "stages %d-%d" % (first, last))
    return ", ".join(words)


def table_row(name, path, profile):
    result = plan_on(profile, path, 64)
    if result["topology"] != "pp":
        weights, kv, need = independent(llama_config(path), profile, result["tensor_parallel_size"], 1)[0]
        assert result["memory"]["weights_bytes_per_gpu"] == pytest.approx(weights, abs=1)
        budget = int(0.9 * gpu_catalog.memory_bytes(gpu_catalog.PROFILES[profile]))
        cells = (name, profile, "1", "tp %d" % result["tensor_parallel_size"], weights, kv, need, budget, "group not needed")
    else:
        memory = result["memory"]
        cells = (
            name,
            profile,
            str(result["pipeline_parallel_size"]),
            "%d x %d" % (result["tensor_parallel_size"], result["pipeline_parallel_size"]),
            memory["weights_bytes_per_gpu"],
            memory["kv_bytes_per_gpu"],
            memory["need_bytes_per_gpu"],
            memory["usable_bytes_per_gpu"],
            stage_words(memory["stage_layers"]),
        )
    return "| %s | %s | %s | %s | %.1f | %.1f | %.1f | %.1f | %s |" % (*cells[:4], *(value / GIB for value in cells[4:8]), cells[8])


def test_the_docs_table_is_the_planners(llama_405b):
    text = DOCS.read_text()
    section = text[text.index("## 8. Models bigger than one server") :]
    documented = [line for line in section.splitlines() if line.startswith("| Llama-3.1-")]
    expected = [table_row(name, path, profile) for name, path in (("Llama-3.1-70B", LLAMA_70B), ("Llama-3.1-405B", llama_405b)) for profile in TABLE_PROFILES]
    assert documented == expected, "\n".join(expected)
    assert stage_words([5] * 5 + [6] * 16 + [5]) == "5 (stages 0-4), 6 (5-20), 5 (21)"
