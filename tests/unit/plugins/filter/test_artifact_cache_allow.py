"""The artifact_cache_allow filter: who the cache serves when artifact_cache_allow is empty or given."""

from __future__ import annotations

import pytest
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import import_controller_plugin

# Importing a filter plugin (ansible.errors) marks the process as the controller, after which
# AnsibleModule.warn() in other test files goes to the controller's display instead of the
# module result (see test_plan_table.py); import_controller_plugin puts the flag back.
artifact_cache_allow = import_controller_plugin("ansible_collections.gpufleet.serving.plugins.filter.artifact_cache_allow").artifact_cache_allow


def test_the_allow_filter_gives_loopback_and_the_fleet():
    hostvars = {
        "g1": {"ansible_facts": {"all_ipv4_addresses": ["10.89.1.4"], "all_ipv6_addresses": ["fe80::1", "fd00::4"]}},
        "g2": {"ansible_host": "10.89.1.5"},
        "g3": {"ansible_host": "g3.example"},
    }
    access = artifact_cache_allow([], hostvars, ["g1", "g2", "g3"])
    assert access["nginx"] == ["10.89.1.4", "10.89.1.5", "127.0.0.1", "::1", "fd00::4"]
    assert access["tcpd"] == ["10.89.1.4", "10.89.1.5", "127.0.0.1", "[::1]", "[fd00::4]"]
    assert access["missing"] == ["g3"]
    explicit = artifact_cache_allow(["10.0.0.0/24", "fd00::/64"], hostvars, ["g1"])
    assert explicit["nginx"] == ["10.0.0.0/24", "127.0.0.1", "::1", "fd00::/64"]
    assert explicit["tcpd"] == ["10.0.0.0/255.255.255.0", "127.0.0.1", "[::1]", "[fd00::]/64"]


@pytest.mark.parametrize("entry", ["all", "0.0.0.0/0", "::/0", "10.0.0.1; allow all", "10.0.0.0/33", "", 7])
def test_the_allow_filter_reports_what_is_not_an_address(entry):
    access = artifact_cache_allow([entry])
    assert access["nginx"] == [] and len(access["problems"]) == 1 and "artifact_cache_allow" in access["problems"][0]
