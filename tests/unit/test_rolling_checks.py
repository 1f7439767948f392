# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""playbooks/tasks/rolling_server.yml's first check: a server leaves the fleet gateways only while another
server of its model serves (with gpufleet_models), or of the fleet (without)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import holds, load_trusted

ROOT = Path(__file__).resolve().parents[2]
LOADER = DataLoader()
MODELS = [{"name": "small", "group": "model_small"}, {"name": "large", "group": "model_large"}]
GROUPS = {"gpu_servers": ["gpu1", "gpu2", "gpu3"], "gateways": ["gw1"], "model_small": ["gpu1", "gpu2"], "model_large": ["gpu3"]}


def check():
    return load_trusted(LOADER, str(ROOT / "playbooks" / "tasks" / "rolling_server.yml"))[0]


def outcome(host, models, allow=False, gateways=("gw1",)):
    task = check()
    variables = {
        "inventory_hostname": host,
        "group_names": sorted(g for g, members in GROUPS.items() if host in members),
        "groups": GROUPS,
        "_rolling_gateways": list(gateways),
        "gpufleet_rolling_allow_downtime": allow,
    }
    if models is not None:
        variables["gpufleet_models"] = models
    engine = Templar(loader=LOADER, variables=dict(variables, **task["vars"]))
    args = task["ansible.builtin.assert"]
    passed = holds(engine, args["that"])
    return passed, " ".join(engine.template(args["fail_msg"]).split())


@pytest.mark.parametrize(("host", "models", "passed"), [("gpu1", MODELS, True), ("gpu3", MODELS, False), ("gpu3", None, True), ("gpu3", [], True)])
def test_another_server_of_the_same_model_must_serve(host, models, passed):
    assert outcome(host, models)[0] is passed


def test_the_refusal_names_the_model_and_the_way_out():
    passed, message = outcome("gpu3", MODELS)
    assert not passed
    assert message == (
        "gpu3 must leave the fleet gateways' upstream to be changed, and no other GPU server of the model large would serve "
        "meanwhile. Set gpufleet_rolling_allow_downtime=true to accept the downtime."
    )
    assert outcome("gpu3", MODELS, allow=True)[0] is True


def test_without_a_gateway_nothing_serves():
    passed, message = outcome("gpu1", MODELS, gateways=())
    assert not passed and "or no fleet gateway would serve" in message
