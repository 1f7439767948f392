"""The gateway role's filters: what they take from Ansible and what they refuse."""

from __future__ import annotations

import base64
import json

import pytest
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import import_controller_plugin

# Importing a filter plugin marks the process as the controller on 2.19 (see
# test_artifact_cache_allow.py); import_controller_plugin puts the flag back.
_FILTERS = "ansible_collections.gpufleet.serving.plugins.filter."
gateway_hosts = import_controller_plugin(_FILTERS + "gateway_hosts").gateway_hosts
gateway_drain = import_controller_plugin(_FILTERS + "gateway_drain").gateway_drain
gateway_drained = import_controller_plugin(_FILTERS + "gateway_drained").gateway_drained
gateway_site_model = import_controller_plugin(_FILTERS + "gateway_site_model").gateway_site_model
gateway_fenced = import_controller_plugin(_FILTERS + "gateway_fenced").gateway_fenced
gateway_local_servers = import_controller_plugin(_FILTERS + "gateway_local_servers").gateway_local_servers
AnsibleFilterError = import_controller_plugin("ansible.errors").AnsibleFilterError

HOSTVARS = {"gpu1": {"gateway_weight": 2, "ansible_host": "x", "secret": "not read"}, "gw1": {"gateway_address": "10.0.0.2"}}
MODEL = {
    "version": 3,
    "server": None,
    "fleet": {"upstreams": [{"servers": [{"host": "10.0.0.11", "label": "gpu1", "down": False}, {"host": "10.0.0.12", "label": "gpu2", "down": False}]}]},
}


def test_gateway_hosts_reads_three_host_variables():
    out = gateway_hosts([], HOSTVARS, ["gpu1"], ["gw1"], 8000, is_fleet=True)
    assert out["backends"] == out["from_group"] == [{"name": "gpu1", "address": "gpu1", "port": 8000, "weight": 2}]
    assert out["peers"] == ["10.0.0.2"] and out["names"] == ["gpu1", "10.0.0.2"]
    given = gateway_hosts([{"address": "10.0.0.9"}], HOSTVARS, ["gpu1"], ["gw1"], 8000, is_fleet=True)
    assert given["backends"][0]["name"] == "10.0.0.9" and given["from_group"][0]["name"] == "gpu1"


def test_gateway_hosts_refuses_what_it_cannot_read():
    with pytest.raises(AnsibleFilterError, match="gpu9 is not in the inventory"):
        gateway_hosts([], HOSTVARS, ["gpu9"], [], 8000)
    with pytest.raises(AnsibleFilterError, match="gateway_backends must be a list"):
        gateway_hosts("10.0.0.1", HOSTVARS, [], [], 8000)


def _read(host, plan):
    """One result of the role's slurp loop over the servers outside the run."""
    if plan is None:
        return {"item": host, "failed": True, "msg": "file not found"}
    return {"item": host, "content": base64.b64encode(json.dumps(plan).encode()).decode()}


def test_gateway_hosts_leaves_a_groups_follower_out_whichever_way_its_plan_is_known():
    """A follower (plan group.node_rank above 0) is no backend: known from this run's plan, or read from the server
    when the run is limited to the gateways (add_servers.yml); a server with no known plan stays a backend."""
    member = {"group": {"name": "pair-0", "node_rank": 1}}
    hostvars = {"lead": {}, "fol": {}, "solo": {}, "new": {}, "gw1": {}}
    servers = ["lead", "fol", "solo", "new"]
    remote = [_read("lead", {"group": {"node_rank": 0}}), _read("fol", member), _read("solo", {"instances": []}), _read("new", None)]
    out = gateway_hosts([], hostvars, servers, ["gw1"], 8000, is_fleet=True, remote=remote)
    assert [b["name"] for b in out["backends"]] == ["lead", "solo", "new"]
    # This run's plan comes first, and a file that is not a plan counts as none.
    hostvars["fol"] = {"gpufleet_plan": member}
    broken = [{"item": "fol", "content": "bm90IGpzb24="}, _read("lead", {"group": {"node_rank": True}})]
    out = gateway_hosts([], hostvars, servers, ["gw1"], 8000, is_fleet=True, remote=broken)
    assert [b["name"] for b in out["backends"]] == ["lead", "solo", "new"]
    assert [b["name"] for b in gateway_hosts([], {**hostvars, "fol": {}}, servers, [], 8000, remote=broken)["backends"]] == servers
    with pytest.raises(AnsibleFilterError, match="remote must be the results"):
        gateway_hosts([], hostvars, servers, [], 8000, remote="x")


def test_gateway_site_model_names_a_missing_input():
    with pytest.raises(AnsibleFilterError, match="did not pass"):
        gateway_site_model({}, {"host": "gw1"})


def test_gateway_drain_from_the_files_a_host_keeps():
    out = gateway_drain(json.dumps(MODEL), None, "fleet", ["gpu2"], "drained")
    assert out["problems"] == [] and out["unknown"] == [] and out["drained"]["fleet"] == ["gpu2"]
    assert out["model"] == MODEL
    refused = gateway_drain(json.dumps(MODEL), json.dumps(out["drained"]), "fleet", ["gpu3"], "serving")
    assert refused["unknown"] == ["gpu3"]


@pytest.mark.parametrize(
    ("model", "drained", "words"),
    [
        (None, None, "has not run on this host"),
        ("{", None, "the site model is not JSON"),
        (json.dumps(dict(MODEL, version=1)), None, "site model of version 3"),
        (json.dumps(MODEL), "garbage", "the drained set is not JSON"),
    ],
)
def test_gateway_drain_reports_files_it_cannot_use(model, drained, words):
    out = gateway_drain(model, drained, "fleet", ["gpu1"], "drained")
    assert out["drained"] is None and any(words in p for p in out["problems"]), out


def test_gateway_drained_keeps_marks_until_reset():
    state = json.dumps({"version": 1, "server": [], "fleet": ["gpu1"]})
    kept = gateway_drained(state, MODEL)
    assert kept["kept"]["fleet"] == ["gpu1"] and kept["released"]["fleet"] == []
    assert [s["down"] for s in kept["model"]["fleet"]["upstreams"][0]["servers"]] == [True, False]
    reset = gateway_drained(state, MODEL, True)
    assert reset["kept"]["fleet"] == [] and reset["released"]["fleet"] == ["gpu1"] and reset["drained"]["fleet"] == []
    assert not any(s["down"] for s in reset["model"]["fleet"]["upstreams"][0]["servers"])


def test_gateway_drained_a_broken_set_stops_a_normal_run_not_a_reset():
    assert gateway_drained("garbage", MODEL)["problems"]
    assert gateway_drained("garbage", MODEL, True)["problems"] == []


SERVER_MODEL = {
    "version": 3,
    "fleet": None,
    "server": {
        "upstream": {
            "balance": "least_conn",
            "max_fails": 2,
            "fail_timeout": 10,
            "keepalive": 32,
            "keepalive_timeout": 4,
            "servers": [
                {"host": "127.0.0.1", "port": 8001, "weight": 1, "comment": "vllm@0", "label": "0", "down": False},
                {"host": "127.0.0.1", "port": 8002, "weight": 1, "comment": "vllm@1", "label": "1", "down": False},
            ],
        }
    },
}


def test_gateway_fenced_names_the_instances_the_model_has():
    state = json.dumps({"version": 1, "fenced": {"1": {"since": 1764590000.25, "reason": "probe timed out"}, "9": {"since": 1, "reason": ""}}})
    out = gateway_fenced(state, SERVER_MODEL)
    assert out == {"fenced": ["1", "9"], "kept": ["vllm@1 (probe timed out)"], "problems": []}
    assert gateway_fenced(None, SERVER_MODEL) == {"fenced": [], "kept": [], "problems": []}
    # A gateway without a server tier keeps nothing fenced.
    assert gateway_fenced(state, MODEL)["kept"] == []


def test_gateway_fenced_reports_a_set_it_cannot_use():
    out = gateway_fenced('{"version": 1, "fenced": {"1": {"since": "yesterday", "reason": "x"}}}', SERVER_MODEL)
    assert out["fenced"] == [] and "since" in out["problems"][0]
    with pytest.raises(AnsibleFilterError, match="site model"):
        gateway_fenced(None, "not a model")


def test_gateway_local_servers_marks_and_refuses():
    text = gateway_local_servers(SERVER_MODEL, {"version": 1, "server": ["0"], "fleet": []}, ["1"])
    # In gpufleet_local, then each alone in its own upstream.
    assert [line for line in text.splitlines() if line.startswith("    server")] == [
        "    server 127.0.0.1:8001 down max_fails=2 fail_timeout=10s;  # vllm@0",
        "    server 127.0.0.1:8002 down max_fails=2 fail_timeout=10s;  # vllm@1",
    ] * 2
    with pytest.raises(AnsibleFilterError, match="gateway_local_servers: the site model has no server tier"):
        gateway_local_servers(MODEL, {"server": []}, [])
    with pytest.raises(AnsibleFilterError, match="the fenced set holds"):
        gateway_local_servers(SERVER_MODEL, {"server": []}, ["1; server 203.0.113.9:80"])
