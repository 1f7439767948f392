"""gateway_layout: the gateway role's site model, its hosts and its drained set, as plain functions."""

from __future__ import annotations

import json

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import gateway_layout as gl

HOST_VARS = {"gpu1": {}, "gpu2": {"gateway_address": "10.0.0.12", "gateway_server_port": "9000", "gateway_weight": 3}, "gw1": {}}
RESOLVED = {"gpu1": ["10.0.0.11", "fd00::11"], "10.0.0.12": ["10.0.0.12"], "gw1": ["10.0.0.2", "fd00::2"]}
PAGES = [
    {"code": 401, "tiers": ["fleet"], "type": "authentication_error", "message": "key"},
    {"code": 404, "tiers": ["server", "fleet"], "type": "not_found_error", "message": "path"},
    {"code": 502, "tiers": ["server", "fleet"], "type": "server_error", "message": "none", "unsent": {"tiers": ["server"], "code": 503, "message": "all down"}},
]
SETTINGS = {
    "gateway_server_port": 8000,
    "gateway_server_listen_address": "",
    "gateway_listen_ipv6": False,
    "gateway_http_port": 80,
    "gateway_https_port": 443,
    "gateway_tls_only": True,
    "gateway_balance": "least_conn",
    "gateway_hash_header": "X-Session-ID",
    "gateway_max_fails": 2,
    "gateway_fail_timeout": 10,
    "gateway_keepalive_connections": 32,
    "gateway_instance_keepalive_timeout": 4,
    "gateway_server_keepalive_timeout": 60,
    "gateway_server_allow": ["10.9.0.0/16", "10.0.0.2"],
    "gateway_server_name": "_",
    "gateway_rate_limit": "10r/s",
    "gateway_rate_limit_burst": 20,
    "gateway_rate_limit_by": "address",
    "gateway_rate_limit_zone_size": "10m",
    "gateway_auth_fail_rate": "1r/s",
    "gateway_auth_fail_burst": 10,
    "gateway_conn_limit_per_client": 64,
    "gateway_health_allow": ["192.0.2.7"],
    "gateway_access_log": "/var/log/nginx/a.log",
    "gateway_error_log": "/var/log/nginx/e.log",
    "gateway_connect_timeout": "5s",
    "gateway_read_timeout": "3600s",
    "gateway_send_timeout": "3600s",
    "gateway_next_upstream_tries": 3,
    "gateway_next_upstream_timeout": "30s",
    "gateway_client_max_body_size": "16m",
}
FILES = {"keys": "/k", "tls_certificate": "/c", "tls_key": "/p", "instance_auth": ""}


def context(host="gw1", is_server=False, is_fleet=True, tls=False, **extra):
    backends = gl.backends([], ["gpu1", "gpu2"], HOST_VARS, 8000)
    base = {
        "host": host,
        "is_server": is_server,
        "is_fleet": is_fleet,
        "tls": tls,
        "check_keys": True,
        "instances": [{"name": "0", "port": 8001}, {"name": "1", "port": 8002}],
        "backends": backends,
        "peers": gl.fleet_peers(["gw1"], HOST_VARS),
        "resolved": RESOLVED,
        "paths": ["/v1/models", "/v1/completions"],
        "error_pages": PAGES,
        "files": FILES,
    }
    base.update(extra)
    return base


def model(**kwargs):
    settings = dict(SETTINGS, **kwargs.pop("settings", {}))
    return gl.site_model(settings, context(**kwargs))


# --- hosts -------------------------------------------------------------------------
def test_backends_from_the_group_read_each_hosts_own_variables():
    assert gl.backends([], ["gpu1", "gpu2"], HOST_VARS, 8000) == [
        {"name": "gpu1", "address": "gpu1", "port": 8000, "weight": 1},
        {"name": "gpu2", "address": "10.0.0.12", "port": 9000, "weight": 3},
    ]


def test_given_backends_win_and_take_their_defaults():
    given = [{"address": "10.0.0.5"}, {"name": "b", "address": "gpu1", "port": "8100", "weight": "2"}]
    assert gl.backends(given, ["gpu1"], HOST_VARS, 8000) == [
        {"name": "10.0.0.5", "address": "10.0.0.5", "port": 8000, "weight": 1},
        {"name": "b", "address": "gpu1", "port": 8100, "weight": 2},
    ]


def test_a_value_that_is_no_number_is_passed_on_for_the_input_check_to_name():
    (backend,) = gl.backends([{"address": "a", "port": "80x", "weight": True}], [], {}, 8000)
    assert backend["port"] == "80x" and backend["weight"] is True


def test_names_to_resolve_by_tier():
    backends = gl.backends([], ["gpu1", "gpu2"], HOST_VARS, 8000)
    peers = gl.fleet_peers(["gw1", "gpu1"], HOST_VARS)
    assert peers == ["gw1", "gpu1"]
    assert gl.names_to_resolve(backends, peers, is_server=False, is_fleet=True) == ["gpu1", "10.0.0.12", "gw1"]
    assert gl.names_to_resolve(backends, peers, is_server=True, is_fleet=False) == ["gw1", "gpu1"]
    assert gl.names_to_resolve(backends, peers, is_server=False, is_fleet=False) == []


# --- the model -----------------------------------------------------------------------
def test_fleet_upstream_by_first_address_with_ipv6_in_brackets():
    servers = gl.fleet_servers([{"name": "a", "address": "a", "port": 1, "weight": 1}, {"name": "b", "address": "b.x", "port": 2, "weight": 5}],
                               {"a": ["fd00::1", "10.0.0.1"]})  # fmt: skip
    assert [(s["host"], s["comment"], s["label"]) for s in servers] == [("[fd00::1]", "a", "a"), ("b.x", "b (b.x)", "b")]
    assert not any(s["down"] for s in servers)


def test_allow_lists_start_with_loopback_and_hold_each_address_once():
    assert gl.allow_list(["gw1", "gw1", "nowhere"], RESOLVED, ["10.0.0.2", "10.9.0.0/16"]) == ["127.0.0.1", "::1", "10.0.0.2", "fd00::2", "10.9.0.0/16"]


@pytest.mark.parametrize(
    ("address", "ipv6", "expected"),
    [
        ("", False, [("", 8000)]),
        ("", True, [("", 8000), ("[::]", 8000)]),
        ("10.0.0.11", True, [("10.0.0.11", 8000), ("127.0.0.1", 8000)]),
        ("127.0.0.1", False, [("127.0.0.1", 8000)]),
    ],
)
def test_server_listen_keeps_loopback(address, ipv6, expected):
    listen = gl.server_listen(dict(SETTINGS, gateway_server_listen_address=address, gateway_listen_ipv6=ipv6))
    assert [(x["address"], x["port"]) for x in listen] == expected


@pytest.mark.parametrize(
    ("tls", "tls_only", "ipv6", "expected"),
    [
        (False, True, False, [(80, "")]),
        (True, True, False, [(443, "ssl http2")]),
        (True, False, True, [(80, ""), (80, ""), (443, "ssl http2"), (443, "ssl http2")]),
    ],
)
def test_fleet_listen(tls, tls_only, ipv6, expected):
    listen = gl.fleet_listen(dict(SETTINGS, gateway_tls_only=tls_only, gateway_listen_ipv6=ipv6), tls)
    assert [(x["port"], x["extra"]) for x in listen] == expected


def test_fleet_model():
    m = model()
    assert m["version"] == gl.MODEL_VERSION and m["server"] is None and m["hash_variable"] == "$http_x_session_id"
    fleet = m["fleet"]
    assert [s["host"] for s in fleet["upstreams"][0]["servers"]] == ["10.0.0.11", "10.0.0.12"]
    assert fleet["health_allow"] == ["127.0.0.1", "::1", "10.0.0.11", "fd00::11", "10.0.0.12", "10.0.0.2", "fd00::2", "192.0.2.7"]
    assert fleet["rate_limit"]["key"] == "$binary_remote_addr" and fleet["tls"] is None
    assert [p["code"] for p in fleet["error_pages"]] == [401, 404, 502]
    assert fleet["error_pages"][2]["unsent"] is None  # the fleet tier keeps its 502
    assert fleet["next_upstream"] == "error timeout http_503 non_idempotent" and fleet["request_buffering"] is True
    assert fleet["upstreams"][0]["servers_file"] == "" and m["proxy"]["next_upstream_timeout"] == "30s"
    assert all(x["check_key"] and x["rate_limit"] and x["upstream"] == "gpufleet_fleet" for x in fleet["locations"])
    json.dumps(m)  # it is kept on the host as JSON


def test_fleet_model_without_limits_keys_by_api_key_and_with_tls():
    m = model(settings={"gateway_rate_limit": "", "gateway_conn_limit_per_client": "0"}, tls=True)
    assert m["fleet"]["rate_limit"] is None and m["fleet"]["conn_limit"] == 0
    assert m["fleet"]["tls"] == {"certificate": "/c", "key": "/p"}
    assert not any(x["rate_limit"] for x in m["fleet"]["locations"])
    keyed = model(settings={"gateway_rate_limit_by": "api_key"})
    assert keyed["fleet"]["rate_limit"]["key"] == "$http_authorization"


def test_server_model():
    m = model(host="gpu1", is_server=True, is_fleet=False, files=dict(FILES, instance_auth="/a"))
    server = m["server"]
    assert m["fleet"] is None
    assert [(s["host"], s["port"], s["label"], s["comment"]) for s in server["upstream"]["servers"]] == [
        ("127.0.0.1", 8001, "0", "vllm@0"),
        ("127.0.0.1", 8002, "1", "vllm@1"),
    ]
    assert server["keepalive_timeout"] == 75 and server["upstream"]["keepalive_timeout"] == 4
    assert server["allow"] == ["127.0.0.1", "::1", "10.0.0.2", "fd00::2", "10.9.0.0/16"]
    assert server["auth_file"] == "/a" and [p["code"] for p in server["error_pages"]] == [404, 502]
    assert server["error_pages"][1]["unsent"] == {"code": 503, "type": "server_error", "message": "all down"}
    assert server["next_upstream"] == "error timeout" and server["request_buffering"] is False
    assert server["upstream"]["servers_file"] == gl.LOCAL_SERVERS_FILE == "/etc/nginx/gpufleet/local-servers.conf"
    assert not any(x["check_key"] or x["rate_limit"] for x in server["locations"])


def test_missing_inputs_are_named():
    with pytest.raises(gl.GatewayLayoutError, match="gateway_balance"):
        gl.site_model({k: v for k, v in SETTINGS.items() if k != "gateway_balance"}, context())
    with pytest.raises(gl.GatewayLayoutError, match="preflight"):
        gl.site_model(dict(SETTINGS, gateway_server_keepalive_timeout="x"), context(is_server=True))


# --- the drained set -------------------------------------------------------------------
def test_parse_drained_accepts_what_drain_writes():
    assert gl.parse_drained(None) == (gl.empty_drained(), [])
    text = json.dumps({"version": 1, "server": ["1", "0", "1"], "fleet": []})
    assert gl.parse_drained(text) == ({"version": 1, "server": ["0", "1"], "fleet": []}, [])


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("not json", "is not JSON"),
        ("[1]", "must be a JSON object"),
        ({"version": 2, "server": []}, "version 2"),
        ({"version": 1, "server": "0"}, "server must be a list"),
        ({"version": 1, "fleet": ["gpu1\n    server 203.0.113.9:80"]}, "not instance or server names"),
        ({"version": 1, "fleet": ["x"] * (gl.MAX_DRAINED + 1)}, "at most"),
        ("[" + " " * gl.MAX_STATE_BYTES + "]", "larger than"),
    ],
)
def test_parse_drained_refuses_what_drain_does_not_write(value, words):
    drained, problems = gl.parse_drained(value)
    assert drained == gl.empty_drained() or problems
    assert any(words in p for p in problems), problems


def test_apply_drained_marks_reports_and_leaves_the_input_alone():
    base = model()
    result = gl.apply_drained(base, {"fleet": ["gpu2", "gone"], "server": ["0"]})
    assert [s["down"] for s in result["model"]["fleet"]["upstreams"][0]["servers"]] == [False, True]
    assert result["kept"] == {"server": [], "fleet": ["gpu2"]}
    assert result["stale"] == {"server": ["0"], "fleet": ["gone"]}
    assert not any(s["down"] for s in base["fleet"]["upstreams"][0]["servers"])


def test_drain_and_undrain():
    base = model(host="both", is_server=True, is_fleet=True)
    first = gl.drain(base, gl.empty_drained(), "server", ["1"], "drained")
    assert first == {"drained": {"version": 1, "server": ["1"], "fleet": []}, "unknown": []}
    second = gl.drain(base, first["drained"], "fleet", ["gpu1", "gpu9"], "drained")
    assert second["unknown"] == ["gpu9"] and second["drained"]["fleet"] == ["gpu1"] and second["drained"]["server"] == ["1"]
    back = gl.drain(base, second["drained"], "server", ["1", "0"], "serving")
    assert back["drained"] == {"version": 1, "server": [], "fleet": ["gpu1"]} and back["unknown"] == []
    # A name the model no longer has drops out of its tier's set as it is written.
    assert gl.drain(base, {"server": ["7"], "fleet": []}, "server", ["0"], "drained")["drained"]["server"] == ["0"]
    with pytest.raises(gl.GatewayLayoutError):
        gl.drain(base, gl.empty_drained(), "edge", ["0"], "drained")


def test_load_model_takes_only_a_model_of_this_version():
    base = model()
    assert gl.load_model(json.dumps(base)) == (json.loads(json.dumps(base)), [])
    assert gl.load_model("{}")[1] and gl.load_model("nope")[1]
    broken = dict(base, fleet={"upstreams": [{"servers": [{"host": "x"}]}]})
    assert "without a name" in gl.load_model(broken)[1][0]


# --- the fenced set ----------------------------------------------------------------------
def fenced(**entries):
    return {"version": 1, "fenced": entries}


def test_parse_fenced_accepts_what_the_watchdog_writes():
    assert gl.parse_fenced(None) == ([], [])
    text = json.dumps(fenced(**{"1": {"since": 1764590000.5, "reason": "3 probes failed"}, "0": {"since": 0, "reason": ""}}))
    assert gl.parse_fenced(text) == (["0", "1"], [])
    assert gl.parse_fenced(json.loads(text)) == (["0", "1"], [])
    assert gl.parse_fenced(fenced()) == ([], [])
    assert gl.fenced_details(text) == {"0": "", "1": "3 probes failed"}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("not json", "is not JSON"),
        ("[]", "must be a JSON object"),
        ({"version": 2, "fenced": {}}, "version 2"),
        ({"fenced": {}}, "version None"),
        ({"version": 1}, "must map at most"),
        ({"version": 1, "fenced": ["0"]}, "must map at most"),
        ({"version": 1, "fenced": {}, "drained": []}, "fields the watchdog does not write: drained"),
        (fenced(**{"0\n    server 203.0.113.9:80": {"since": 1, "reason": ""}}), "not an instance name"),
        (fenced(**{"0": {"since": 1}}), "other fields than since and reason"),
        (fenced(**{"0": {"since": 1, "reason": "", "pid": 7}}), "other fields than since and reason"),
        (fenced(**{"0": {"since": float("nan"), "reason": ""}}), "not a time in seconds"),
        (fenced(**{"0": {"since": -1, "reason": ""}}), "not a time in seconds"),
        (fenced(**{"0": {"since": True, "reason": ""}}), "not a time in seconds"),
        (fenced(**{"0": {"since": 1, "reason": "a\nb"}}), "printable"),
        (fenced(**{"0": {"since": 1, "reason": "x" * (gl.MAX_REASON + 1)}}), "printable"),
        (fenced(**{"0": {"since": 1, "reason": 5}}), "printable"),
        (fenced(**{str(i): {"since": 1, "reason": ""} for i in range(gl.MAX_DRAINED + 1)}), "at most"),
        ('{"version": 1, "fenced": {' + " " * gl.MAX_STATE_BYTES + "}}", "larger than"),
    ],
)
def test_parse_fenced_refuses_what_the_watchdog_does_not_write(value, words):
    names, problems = gl.parse_fenced(value)
    assert names == [] and any(words in p for p in problems), problems
    assert gl.fenced_details(value) == {}


# --- the server tier's include file ----------------------------------------------------
def server_model(**settings):
    return model(host="gpu1", is_server=True, is_fleet=False, settings=settings)


def blocks(text):
    """{upstream name: [lines inside its block]} of an include file."""
    out, name = {}, None
    for line in text.splitlines():
        if line.startswith("upstream ") and line.endswith(" {"):
            name = line.split()[1]
            out[name] = []
        elif line == "}":
            name = None
        elif name:
            out[name].append(line)
    return out


def server_lines(text, upstream="gpufleet_local"):
    return [line for line in blocks(text)[upstream] if line.startswith("    server ")]


def test_local_servers_conf_is_whole_upstreams_one_per_instance_besides():
    text = gl.local_servers_conf(server_model(), {"version": 1, "server": ["1"], "fleet": []}, [])
    found = blocks(text)
    assert list(found) == ["gpufleet_local", "gpufleet_instance_0", "gpufleet_instance_1"]
    assert found["gpufleet_local"][0] == "    least_conn;"
    assert found["gpufleet_local"][-2:] == ["    keepalive 32;", "    keepalive_timeout 4s;"]
    # Each instance alone, down when it is down in gpufleet_local.
    assert server_lines(text, "gpufleet_instance_0") == ["    server 127.0.0.1:8001 max_fails=2 fail_timeout=10s;  # vllm@0"]
    assert server_lines(text, "gpufleet_instance_1") == ["    server 127.0.0.1:8002 down max_fails=2 fail_timeout=10s;  # vllm@1"]
    assert found["gpufleet_instance_1"][0].startswith("    server ")  # no balancing of one server
    hashed = gl.local_servers_conf(server_model(gateway_balance="hash_header"), gl.empty_drained(), [])
    assert blocks(hashed)["gpufleet_local"][0] == "    hash $gpufleet_affinity consistent;"
    assert blocks(gl.local_servers_conf(server_model(gateway_balance="round_robin"), gl.empty_drained(), []))["gpufleet_local"][0].startswith("    server ")


def test_local_servers_conf_marks_drained_and_fenced_down():
    m = server_model()
    assert server_lines(gl.local_servers_conf(m, gl.empty_drained(), [])) == [
        "    server 127.0.0.1:8001 max_fails=2 fail_timeout=10s;  # vllm@0",
        "    server 127.0.0.1:8002 max_fails=2 fail_timeout=10s;  # vllm@1",
    ]
    drained = {"version": 1, "server": ["0"], "fleet": ["gpu1"]}
    assert [" down " in x for x in server_lines(gl.local_servers_conf(m, drained, []))] == [True, False]
    assert [" down " in x for x in server_lines(gl.local_servers_conf(m, gl.empty_drained(), ("1",)))] == [False, True]
    assert [" down " in x for x in server_lines(gl.local_servers_conf(m, drained, {"1", "7"}))] == [True, True]
    # The model's own marks do not count: the drained set and the fenced set say what is down.
    marked = gl.apply_drained(m, {"server": ["0", "1"], "fleet": []})["model"]
    assert gl.local_servers_conf(marked, gl.empty_drained(), []) == gl.local_servers_conf(m, gl.empty_drained(), [])
    # What the watchdog reads back from the host gives the same text.
    kept = gl.load_model(json.dumps(m))[0]
    assert gl.local_servers_conf(kept, drained, ["1"]) == gl.local_servers_conf(m, drained, ["1"])


def test_local_servers_conf_prints_weight_and_the_upstreams_limits():
    m = server_model(gateway_max_fails=0, gateway_fail_timeout=30)
    m["server"]["upstream"]["servers"][1]["weight"] = 4
    assert server_lines(gl.local_servers_conf(m, gl.empty_drained(), ["1"]))[1] == (
        "    server 127.0.0.1:8002 down weight=4 max_fails=0 fail_timeout=30s;  # vllm@1"
    )


def _broken(path, value):
    m = json.loads(json.dumps(server_model()))
    target = m
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return m


SERVER = ("server", "upstream", "servers", 0)


@pytest.mark.parametrize(
    ("m", "drained", "fenced_names", "words"),
    [
        (model(), gl.empty_drained(), [], "has no server tier"),
        (None, gl.empty_drained(), [], "has no server tier"),
        (_broken(("server", "upstream", "servers"), "x"), gl.empty_drained(), [], "has no server tier"),
        (_broken((*SERVER, "host"), "127.0.0.1:9 ; server 203.0.113.9"), gl.empty_drained(), [], "not an IP address"),
        (_broken((*SERVER, "host"), "gpu1"), gl.empty_drained(), [], "not an IP address"),
        (_broken((*SERVER, "port"), "8001"), gl.empty_drained(), [], "the port"),
        (_broken((*SERVER, "port"), 70000), gl.empty_drained(), [], "the port"),
        (_broken((*SERVER, "weight"), True), gl.empty_drained(), [], "the weight"),
        (_broken((*SERVER, "comment"), "vllm@0\n    server 203.0.113.9:80;"), gl.empty_drained(), [], "the comment"),
        (_broken((*SERVER, "label"), "../0"), gl.empty_drained(), [], "instance name"),
        (_broken(("server", "upstream", "max_fails"), -1), gl.empty_drained(), [], "max_fails"),
        (_broken(("server", "upstream", "fail_timeout"), 0), gl.empty_drained(), [], "fail_timeout"),
        (_broken(("server", "upstream", "servers"), [{"label": "0"}] * (gl.MAX_DRAINED + 1)), gl.empty_drained(), [], "more than"),
        (server_model(), None, [], "drained set must be a mapping"),
        (server_model(), {"server": ["0 down"]}, [], "drained set's server tier holds"),
        (server_model(), gl.empty_drained(), "0", "must be a list of instance names"),
        (server_model(), gl.empty_drained(), None, "must be a list of instance names"),
        (server_model(), gl.empty_drained(), ["0", 1], "which is not an instance name"),
        (server_model(), gl.empty_drained(), [str(i) for i in range(gl.MAX_DRAINED + 1)], "more than"),
        (_broken(("server", "upstream", "balance"), "least_conn; server 203.0.113.9:80"), gl.empty_drained(), [], "balances with"),
        (_broken(("server", "upstream", "keepalive"), "32; server 203.0.113.9:80"), gl.empty_drained(), [], "keepalive"),
        (_broken(("server", "upstream", "keepalive_timeout"), 0), gl.empty_drained(), [], "keepalive_timeout"),
    ],
)
def test_local_servers_conf_refuses_what_no_nginx_line_may_hold(m, drained, fenced_names, words):
    with pytest.raises(gl.GatewayLayoutError, match=words):
        gl.local_servers_conf(m, drained, fenced_names)
