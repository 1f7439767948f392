# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""gpufleet_models: each GPU server in exactly one model's group, and the fleet tier's pools."""

from __future__ import annotations

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import fleet_models
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import import_controller_plugin

fleet_models_filter = import_controller_plugin("ansible_collections.gpufleet.serving.plugins.filter.fleet_models").fleet_models_filter

MODELS = [{"name": "small", "group": "model_small"}, {"name": "meta-llama/Llama-3.1-70B", "group": "model_large"}]
GROUPS = {
    "all": ["gpu1", "gpu2", "gpu3", "gw1"],
    "gpu_servers": ["gpu1", "gpu2", "gpu3"],
    "gateways": ["gw1"],
    "model_small": ["gpu1", "gpu2"],
    "model_large": ["gpu3"],
}


def backend(name, **extra):
    return dict({"name": name, "address": name, "port": 8000, "weight": 1}, **extra)


def test_no_models_is_one_pool_of_every_server_and_no_problem():
    assert fleet_models.host_problems("gpu1", [], GROUPS) == []
    assert fleet_models.fleet_problems(None, GROUPS, GROUPS["gpu_servers"]) == []
    assert fleet_models.model_name("gpu1", [], GROUPS) == ""
    backends = [backend("gpu1"), backend("gpu2")]
    assert fleet_models.pools(backends, [], GROUPS) == [{"model": "", "backends": backends}]


def test_each_server_serves_its_groups_model():
    assert [fleet_models.model_name(h, MODELS, GROUPS) for h in ("gpu1", "gpu2", "gpu3")] == ["small", "small", "meta-llama/Llama-3.1-70B"]
    assert fleet_models.host_problems("gpu3", MODELS, GROUPS) == []
    assert fleet_models.host_problems("gpu3", MODELS, GROUPS, served_name="meta-llama/Llama-3.1-70B") == []
    assert fleet_models.fleet_problems(MODELS, GROUPS, GROUPS["gpu_servers"]) == []


def test_pools_follow_the_groups_in_the_models_order_and_a_backends_own_model():
    backends = [backend("gpu3"), backend("gpu1"), backend("gpu2"), backend("extra", model="small")]
    found = fleet_models.pools(backends, MODELS, GROUPS)
    assert [(p["model"], [b["name"] for b in p["backends"]]) for p in found] == [
        ("small", ["gpu1", "gpu2", "extra"]),
        ("meta-llama/Llama-3.1-70B", ["gpu3"]),
    ]


def test_a_server_added_to_a_models_group_joins_that_pool_only():
    groups = dict(GROUPS, gpu_servers=GROUPS["gpu_servers"] + ["gpu4"], model_large=["gpu3", "gpu4"])
    found = fleet_models.pools([backend(h) for h in groups["gpu_servers"]], MODELS, groups)
    assert [[b["name"] for b in p["backends"]] for p in found] == [["gpu1", "gpu2"], ["gpu3", "gpu4"]]


def test_a_backend_without_a_model_cannot_be_pooled():
    with pytest.raises(ValueError, match="gpu9 has no model"):
        fleet_models.pools([backend("gpu9")], MODELS, GROUPS)
    with pytest.raises(ValueError, match="'other'"):
        fleet_models.pools([backend("gpu1", model="other")], MODELS, GROUPS)


@pytest.mark.parametrize(
    ("models", "words"),
    [
        ("small", "must be a list of {name, group}"),
        ([{"name": "small"}], "gpufleet_models[0].group is None"),
        ([{"name": "a b", "group": "g"}], "gpufleet_models[0].name is 'a b'"),
        ([{"name": "../x", "group": "g"}], "gpufleet_models[0].name"),
        ([{"name": "x", "group": "g-1"}], "gpufleet_models[0].group is 'g-1'"),
        ([{"name": "x", "group": "model_small", "port": 1}], "fields this collection does not read: port"),
        ([{"name": "x", "group": "model_small", "balance": "least_conn; server 203.0.113.9:80"}], "gpufleet_models[0].balance is"),
        ([{"name": "x", "group": "model_small", "balance": "random"}], "set one of least_conn, round_robin, hash_header, cache_aware"),
        ([{"name": "x", "group": "model_small", "balance": ["cache_aware"]}], "gpufleet_models[0].balance is"),
        (["x"], "gpufleet_models[0] must be a mapping"),
        ([{"name": "small", "group": "model_small"}, {"name": "small", "group": "model_large"}], "two models the served name 'small'"),
        ([{"name": "a", "group": "model_small"}, {"name": "b", "group": "model_small"}], "two models the group 'model_small'"),
        ([{"name": "a", "group": "nowhere"}], "the group nowhere, which the inventory does not have"),
        ([{"name": "m%d" % i, "group": "g%d" % i} for i in range(65)], "at most 64"),
    ],
)
def test_a_bad_list_is_refused_with_what_to_change(models, words):
    for problems in (fleet_models.host_problems("gpu1", models, GROUPS), fleet_models.fleet_problems(models, GROUPS, GROUPS["gpu_servers"])):
        assert any(words in p for p in problems), problems
    assert fleet_models.model_name("gpu1", models, GROUPS) == ""


def test_a_server_in_two_models_or_none_is_refused():
    groups = dict(GROUPS, model_large=["gpu2", "gpu3"], gpu_servers=GROUPS["gpu_servers"] + ["gpu4"])
    (two,) = fleet_models.host_problems("gpu2", MODELS, groups)
    assert "gpu2 is in the groups of 2 models (small: model_small, meta-llama/Llama-3.1-70B: model_large)" in two
    (none,) = fleet_models.host_problems("gpu4", MODELS, groups)
    assert none == "gpu4 is in no model's group (gpufleet_models: model_small, model_large): add it to one"
    problems = fleet_models.fleet_problems(MODELS, groups, groups["gpu_servers"])
    assert "gpu2 is in the groups of two or more models: a GPU server serves one model" in problems
    assert "gpu4 of gpu_servers is in no model's group (gpufleet_models: model_small, model_large): add each to one" in problems
    assert fleet_models.model_name("gpu2", MODELS, groups) == ""


def test_a_fleet_message_names_five_hosts_and_counts_the_rest():
    servers = ["gpu%02d" % i for i in range(12)]
    (problem,) = fleet_models.fleet_problems([{"name": "a", "group": "m"}], {"m": servers[:1], "gpu_servers": servers}, servers)
    assert problem.startswith("gpu01, gpu02, gpu03, gpu04, gpu05 and 6 more of gpu_servers are in no model's group")


def test_a_model_without_a_server_and_a_member_outside_the_server_group_are_refused():
    groups = dict(GROUPS, model_large=["gw1"])
    problems = fleet_models.fleet_problems(MODELS, groups, ["gpu1", "gpu2"])
    assert "gw1 of group model_large (model meta-llama/Llama-3.1-70B) is not in gpu_servers" in problems
    assert any(p.startswith("model meta-llama/Llama-3.1-70B has no GPU server") for p in problems)


def test_a_served_name_set_apart_from_the_model_is_refused():
    (problem,) = fleet_models.host_problems("gpu1", MODELS, GROUPS, served_name="tiny")
    assert problem.startswith("plan_served_model_name is 'tiny' for gpu1, but its model in gpufleet_models is 'small'")


def test_filter_modes():
    assert fleet_models_filter(MODELS, GROUPS, host="gpu3", want="name") == "meta-llama/Llama-3.1-70B"
    assert fleet_models_filter(MODELS, GROUPS, host="gpu1") == []
    assert fleet_models_filter(MODELS, GROUPS, server_hosts=["gpu1", "gpu2", "gpu3"]) == []
    assert fleet_models_filter([], GROUPS, host="gpu1", want="name") == ""


HOSTILE_NAMES = ['tiny"; }', "tiny\n    server 10.0.0.9:80;", "$host", "a b", "tiny;", "t{1}", "-tiny", "../../etc", "a/b/c", "x" * 300, "", 7, None]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_name_that_could_reach_nginx_or_javascript_is_refused_before_use(name):
    models = [{"name": name, "group": "model_small"}, {"name": "large", "group": "model_large"}]
    assert fleet_models.host_problems("gpu1", models, GROUPS)
    assert fleet_models.fleet_problems(models, GROUPS, GROUPS["gpu_servers"])
    assert fleet_models.model_name("gpu1", models, GROUPS) == ""
    with pytest.raises(ValueError):
        fleet_models.pools([backend("gpu1")], models, GROUPS)


@pytest.mark.parametrize("group", ["all; rm", "model-small", "", "x" * 70, {"a": 1}])
def test_a_group_that_is_no_group_name_is_refused(group):
    (problem,) = fleet_models.host_problems("gpu1", [{"name": "small", "group": group}], GROUPS)
    assert problem.startswith("gpufleet_models[0].group is ")


def test_a_models_balance_goes_with_its_pool_and_its_servers():
    models = [{"name": "small", "group": "model_small", "balance": "cache_aware"}, {"name": "large", "group": "model_large"}]
    groups = {"model_small": ["gpu1"], "model_large": ["gpu2"]}
    backends = [{"name": "gpu1"}, {"name": "gpu2"}]
    assert [(p["model"], p["balance"]) for p in fleet_models.pools(backends, models, groups)] == [("small", "cache_aware"), ("large", "")]
    assert fleet_models.model_balance("gpu1", models, groups) == "cache_aware" and fleet_models.model_balance("gpu2", models, groups) == ""
    assert fleet_models.model_balance("gpu9", models, groups) == ""
