"""The planner's group input from the inventory and the facts (plugins/module_utils/server_groups.py)."""

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import server_groups as sg

GPUS = {"count": 1, "gpus": []}


def host_vars(n, **changes):
    own = {
        "gpufleet_server_group": "big",
        "ansible_facts": {"nvidia_gpus": GPUS, "default_ipv4": {"interface": "ens1"}, "ens1": {"ipv4": {"address": "10.0.0.%d" % n}}},
        "vllm_version": "0.26.0",
    }
    own.update(changes)
    return own


def members(count=2, **changes):
    return [("gpu%d" % n, host_vars(n, **changes)) for n in range(1, count + 1)]


def test_members_in_inventory_order_with_their_addresses_cards_and_versions():
    out = sg.group_input("gpu2", members(3), ["gpu1", "gpu2", "gpu3"])
    assert out["problems"] == []
    group = out["group"]
    assert (group["name"], group["host"], group["master_port"], group["interface"]) == ("big", "gpu2", 29500, "ens1")
    assert [(m["host"], m["address"], m["vllm_version"]) for m in group["members"]] == [
        ("gpu1", "10.0.0.1", "0.26.0"),
        ("gpu2", "10.0.0.2", "0.26.0"),
        ("gpu3", "10.0.0.3", "0.26.0"),
    ]
    assert all(m["gpus"] is GPUS for m in group["members"])


def test_the_inventory_names_interface_address_port_and_profile():
    given = [
        ("a", host_vars(1, gpufleet_group_interface="eth1", gpufleet_group_port=30000, plan_gpu_profile="h100-sxm", plan_gpu_count=2,
                        ansible_facts={"eth1": {"ipv4": {"address": "192.168.5.1"}}})),
        ("b", host_vars(2, gpufleet_group_address="192.168.5.2", gpufleet_group_interface="eth1")),
    ]
    out = sg.group_input("a", given, ["a", "b"])
    assert out["problems"] == [], out
    assert out["group"]["interface"] == "eth1" and out["group"]["master_port"] == 30000
    first, second = out["group"]["members"]
    assert (first["address"], first["gpu_profile"], first["gpu_count"]) == ("192.168.5.1", "h100-sxm", 2)
    assert second["address"] == "192.168.5.2" and "gpus" in second


def test_a_cpu_plan_compares_the_cpu_builds_version():
    out = sg.group_input("gpu1", members(2, plan_device="cpu", vllm_cpu_version="0.32.0"), ["gpu1", "gpu2"])
    assert {m["vllm_version"] for m in out["group"]["members"]} == {"0.32.0"}


def test_no_server_group_no_input():
    assert sg.group_input("gpu1", [("gpu1", {"ansible_facts": {}})], ["gpu1"]) == {"group": None, "problems": []}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"gpufleet_server_group": "Big Group"}, "gpufleet_server_group 'Big Group'"),
        ({"gpufleet_group_port": 80}, "gpufleet_group_port 80"),
        ({"gpufleet_group_port": 65535}, "gpufleet_group_port 65535"),
        ({"gpufleet_group_port": True}, "gpufleet_group_port True"),
        ({"gpufleet_group_interface": "eth0; rm -rf /"}, "gpufleet_group_interface 'eth0; rm -rf /' is not a network interface name"),
        ({"gpufleet_group_address": "10.0.0.1 10.0.0.2"}, "set gpufleet_group_address"),
        ({"gpufleet_group_address": "host.example"}, "set gpufleet_group_address"),
        ({"ansible_facts": {"nvidia_gpus": GPUS}}, "gpufleet_group_interface is unset"),
        ({"ansible_facts": {"default_ipv4": {"interface": "ens1"}, "ens1": {"ipv4": {"address": "10.0.0.1"}}}}, "its cards are unknown"),
    ],
)
def test_refusals_name_the_variable(change, words):
    given = [("gpu1", host_vars(1, **change)), ("gpu2", host_vars(2))]
    out = sg.group_input("gpu1", given, ["gpu1", "gpu2"])
    assert out["group"] is None and any(words in p for p in out["problems"]), out["problems"]


def test_a_member_outside_the_run_is_named():
    out = sg.group_input("gpu1", members(3), ["gpu1", "gpu2"])
    assert out["group"] is None
    assert "gpu3 not in this run" in out["problems"][0] and "--limit all of gpu1, gpu2, gpu3" in out["problems"][0]


def test_too_many_members():
    out = sg.group_input("gpu1", members(65), ["gpu%d" % n for n in range(1, 66)])
    assert "at most 64" in out["problems"][0]
