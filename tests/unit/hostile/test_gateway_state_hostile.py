# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Hostile content in the state files a GPU server keeps for its nginx tier.

/etc/nginx/gpufleet/drained.json (written by the gateway role's drain entry
point) and /etc/nginx/gpufleet/fenced.json (written by the watchdog only) are
read by every run of the gateway role (tasks/configure.yml) and by the drain
entry point (tasks/drain.yml), with slurp, then through the role's filters.
Whatever a file holds, the filters must answer within a bound with problems
(which the role's assert turns into a failure naming the file and the way
out) and never with a traceback, and nothing of the file may reach an nginx
line: local-servers.conf is printed from the site model, and the names only
choose which lines say `down`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.gpufleet.serving.plugins.module_utils import gateway_layout as gl
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import import_controller_plugin, load_trusted

_FILTERS = "ansible_collections.gpufleet.serving.plugins.filter."
gateway_drained = import_controller_plugin(_FILTERS + "gateway_drained").gateway_drained
gateway_fenced = import_controller_plugin(_FILTERS + "gateway_fenced").gateway_fenced
gateway_drain = import_controller_plugin(_FILTERS + "gateway_drain").gateway_drain
gateway_local_servers = import_controller_plugin(_FILTERS + "gateway_local_servers").gateway_local_servers

ROLE = Path(__file__).resolve().parents[3] / "roles" / "gateway"
LIMIT_S = 2.0
INJECT = "0;\n    server 203.0.113.9:80"
DEEP = "[" * 200000 + "]" * 200000

# A site model of a GPU server with two instances, as site.json keeps it.
SETTINGS = {
    "gateway_balance": "least_conn",
    "gateway_max_fails": 2,
    "gateway_fail_timeout": 10,
    "gateway_keepalive_connections": 32,
    "gateway_instance_keepalive_timeout": 4,
}
MODEL = {
    "version": gl.MODEL_VERSION,
    "fleet": None,
    "server": {"upstream": gl._upstream("gpufleet_local", gl.local_servers([{"name": "0", "port": 8001}, {"name": "1", "port": 8002}]), 4, SETTINGS)},
}
CLEAN = gl.local_servers_conf(MODEL, gl.empty_drained(), [])


def entry(reason="probe failed", since=1764590000.5):
    return {"since": since, "reason": reason}


# (what the fenced file holds, words of the problem)
FENCED = [
    ("", "is not JSON"),
    ("\x00\x01\x02", "is not JSON"),
    ("\ufeff" + json.dumps({"version": 1, "fenced": {}}), "is not JSON"),
    ("null", "must be a JSON object"),
    ('"0"', "must be a JSON object"),
    ("[]", "must be a JSON object"),
    (DEEP, "too deeply"),
    ('{"version": 1, "fenced": ' + DEEP + "}", "too deeply"),
    ("{" + " " * gl.MAX_STATE_BYTES + "}", "larger than"),
    ({"version": "1", "fenced": {}}, "version '1'"),
    ({"version": 1, "fenced": {}, "server": ["0"]}, "does not write: server"),
    ({"version": 1, "fenced": "0"}, "must map at most"),
    ({"version": 1, "fenced": {INJECT: entry()}}, "not an instance name"),
    ({"version": 1, "fenced": {"0 down": entry()}}, "not an instance name"),
    ({"version": 1, "fenced": {"../0": entry()}}, "not an instance name"),
    ({"version": 1, "fenced": {"": entry()}}, "not an instance name"),
    ({"version": 1, "fenced": {"x" * 64: entry()}}, "not an instance name"),
    ({"version": 1, "fenced": {"0": "since yesterday"}}, "other fields"),
    ({"version": 1, "fenced": {"0": dict(entry(), down=True)}}, "other fields"),
    ('{"version": 1, "fenced": {"0": {"since": NaN, "reason": ""}}}', "not a time"),
    ('{"version": 1, "fenced": {"0": {"since": 1e999, "reason": ""}}}', "not a time"),
    ({"version": 1, "fenced": {"0": entry(since="1764590000")}}, "not a time"),
    ({"version": 1, "fenced": {"0": entry(since=None)}}, "not a time"),
    ({"version": 1, "fenced": {"0": entry(reason="\x1b[31mred\x1b[0m")}}, "printable"),
    ({"version": 1, "fenced": {"0": entry(reason="a\nWARNING: all good")}}, "printable"),
    ({"version": 1, "fenced": {"0": entry(reason="\u202eevil")}}, "printable"),
    ({"version": 1, "fenced": {"0": entry(reason="r" * 5000)}}, "printable"),
    ({"version": 1, "fenced": {"0": entry(reason=["list"])}}, "printable"),
    ({"version": 1, "fenced": {"i%d" % i: entry() for i in range(gl.MAX_DRAINED + 1)}}, "at most"),
]

# The drained set's rows, for the same reader paths.
DRAINED = [
    ("\x00", "is not JSON"),
    (DEEP, "too deeply"),
    ('{"version": 1, "server": ' + DEEP + "}", "too deeply"),
    ({"version": 1, "server": [INJECT]}, "not instance or server names"),
    ({"version": 1, "server": "0"}, "must be a list"),
    ({"version": 1, "fleet": [{"name": "gpu1"}]}, "not instance or server names"),
]


def _text(value):
    return value if isinstance(value, str) else json.dumps(value)


def _timed(call, *args):
    start = time.monotonic()
    out = call(*args)
    assert time.monotonic() - start < LIMIT_S, "took %.1f s" % (time.monotonic() - start)
    return out


@pytest.mark.parametrize(("content", "words"), FENCED, ids=["fenced-%d" % i for i in range(len(FENCED))])
def test_hostile_fenced_set_is_a_problem_not_a_traceback(content, words):
    out = _timed(gateway_fenced, _text(content), MODEL)
    assert out["fenced"] == [] and out["kept"] == [], out
    assert any(words in p for p in out["problems"]), out["problems"]
    # Problems are short sentences: no file content is echoed at length.
    assert all(len(p) < 400 for p in out["problems"])


@pytest.mark.parametrize(("content", "words"), DRAINED, ids=["drained-%d" % i for i in range(len(DRAINED))])
def test_hostile_drained_set_is_a_problem_not_a_traceback(content, words):
    out = _timed(gateway_drained, _text(content), MODEL)
    assert any(words in p for p in out["problems"]), out["problems"]
    # The drain entry point reads the same file and stops before writing anything.
    request = _timed(gateway_drain, json.dumps(MODEL), _text(content), "server", ["0"], "drained")
    assert request["drained"] is None and any(words in p for p in request["problems"]), request


def test_names_of_a_good_set_only_choose_down_marks():
    """A good fenced set with names the model lacks changes nothing; nothing of the file reaches a line."""
    good = json.dumps({"version": 1, "fenced": {"9": entry("x; } server 203.0.113.9:80 {"), "1": entry()}})
    found = gateway_fenced(good, MODEL)
    assert found["problems"] == [] and found["fenced"] == ["1", "9"]
    text = gateway_local_servers(MODEL, gl.empty_drained(), found["fenced"])
    assert "203.0.113.9" not in text and "9" not in text.replace("127.0.0.1", "")
    assert [line.replace(" down ", " ") for line in text.splitlines()] == CLEAN.splitlines()
    assert [line for line in text.splitlines() if " down " in line] == ["    server 127.0.0.1:8002 down max_fails=2 fail_timeout=10s;  # vllm@1"] * 2


def test_the_roles_failure_names_the_file_and_the_way_out():
    """The assert of tasks/configure.yml and tasks/drain.yml: which file, who writes it, how to start again."""
    constants = load_trusted(DataLoader(), str(ROLE / "vars" / "main.yml"))
    fenced = gateway_fenced(_text(FENCED[12][0]), MODEL)
    engine = Templar(loader=DataLoader(), variables=dict(constants, inventory_hostname="gpu1", _gateway_fenced=fenced))
    message = " ".join(engine.template(constants["_gateway_fenced_fail_msg"]).split())
    assert message.startswith("/etc/nginx/gpufleet/fenced.json on gpu1 holds a name that is not an instance name")
    for words in ("Only the watchdog", "systemctl stop gpufleet-watchdog", "remove the file", "run site.yml again"):
        assert words in message, message
    # The bad name is quoted (repr), so its line break cannot start a line of the play's output.
    assert repr(INJECT)[:70] in engine.template(constants["_gateway_fenced_fail_msg"])
