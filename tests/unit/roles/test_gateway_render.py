"""Render the gateway role's nginx configuration without a host.

The site file is a print of one dict, the site model
(plugins/module_utils/gateway_layout.py, through the role's filters
gateway_hosts, gateway_site_model and gateway_drained): these tests build the
model with the filters from the role's defaults and a small inventory (a
fleet gateway, GPU servers, a host in both groups) and render the role's
templates from it with Ansible's Templar. The preflight asserts are evaluated
with the same values. molecule/site proves the rendered files with a real
nginx; this covers the variations one scenario cannot (balance modes, TLS, no
keys, drain marks, the refusals).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import holds, import_controller_plugin, load_trusted, trust_as_template

# Importing a filter plugin marks the process as the controller on 2.19 (see
# tests/unit/plugins/filter/test_artifact_cache_allow.py); import_controller_plugin puts the flag back.
_FILTERS = "ansible_collections.gpufleet.serving.plugins.filter."
gateway_drained = import_controller_plugin(_FILTERS + "gateway_drained").gateway_drained
gateway_fenced = import_controller_plugin(_FILTERS + "gateway_fenced").gateway_fenced
gateway_local_servers = import_controller_plugin(_FILTERS + "gateway_local_servers").gateway_local_servers
gateway_hosts = import_controller_plugin(_FILTERS + "gateway_hosts").gateway_hosts
gateway_site_model = import_controller_plugin(_FILTERS + "gateway_site_model").gateway_site_model
fleet_models_filter = import_controller_plugin(_FILTERS + "fleet_models").fleet_models_filter
ROUTER = "/etc/nginx/gpufleet/gpufleet-router.js"

ROLE = Path(__file__).resolve().parents[3] / "roles" / "gateway"
LOADER = DataLoader()
KEYS = ["key-one-0123456789", "key-two-abcdefghij"]
PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"

# The inventory: two GPU servers, one gateway. gpu2 has its own address and
# port for the gateways, and a weight.
INVENTORY = {
    "gpu1": {},
    "gpu2": {"gateway_address": "10.0.0.12", "gateway_server_port": 9000, "gateway_weight": 3},
    "gw1": {},
}
GROUPS = {"gpu_servers": ["gpu1", "gpu2"], "gateways": ["gw1"]}
HOSTVARS = {name: dict(hv, inventory_hostname=name) for name, hv in INVENTORY.items()}
# What tasks/inputs.yml resolves on each kind of host.
RESOLVED = {"gpu1": ["10.0.0.11"], "10.0.0.12": ["10.0.0.12"], "gw1": ["10.0.0.2", "fd00::2"]}
INSTANCES = {"dp": [{"name": "0", "port": 8001}, {"name": "1", "port": 8002}], "tp": [{"name": "main", "port": 8001}]}


def load(rel):
    return load_trusted(LOADER, str(ROLE / rel))


CONSTANTS = load("vars/main.yml")


def settings(host, **overrides):
    """The role's gateway_* variables on `host`: its defaults, what the host sets, what the test sets."""
    values = dict(load("defaults/main.yml"))
    values.update(INVENTORY[host])
    values.update(overrides)
    return values


def host_lists(host, values, groups):
    is_server, is_fleet = host in groups["gpu_servers"], host in groups["gateways"]
    hosts = gateway_hosts(
        values["gateway_backends"], HOSTVARS, groups["gpu_servers"], groups["gateways"], values["gateway_server_port"], is_server=is_server, is_fleet=is_fleet
    )
    return is_server, is_fleet, hosts


def model(host, groups=None, instances="dp", drained=None, instance_key="", models=(), backend_instances=None, **overrides):
    """gateway_drained(gateway_site_model(...)) as tasks/configure.yml gets it on `host` (models: gpufleet_models)."""
    groups = groups or GROUPS
    values = settings(host, **overrides)
    is_server, is_fleet, hosts = host_lists(host, values, groups)
    files = {"keys": "/etc/nginx/gpufleet/api-keys.map", "tls_certificate": "/etc/nginx/gpufleet/tls/gateway.crt", "router": ROUTER}
    files.update(tls_key="/etc/nginx/gpufleet/tls/gateway.key", instance_auth="/etc/nginx/gpufleet/instance-auth.conf" if instance_key else "")
    paths = list(dict.fromkeys(CONSTANTS["_gateway_base_paths"] + list(values["gateway_extra_paths"])))
    context = {
        "host": host,
        "is_server": is_server,
        "is_fleet": is_fleet,
        "tls": bool(values["gateway_tls_certificate"] and values["gateway_tls_certificate_key"]),
        "check_keys": len(values["gateway_api_keys"]) > 0,
        "instances": INSTANCES[instances],
        "backends": hosts["backends"],
        "pools": fleet_models_filter(list(models), groups, backends=hosts["backends"], want="pools") if is_fleet else [],
        "backend_instances": backend_instances or {},
        "peers": hosts["peers"],
        "resolved": RESOLVED,
        "paths": paths,
        "error_pages": CONSTANTS["_gateway_error_pages"],
        "files": files,
    }
    return gateway_drained(drained, gateway_site_model(values, context))


def render_file(variables, name):
    text = (ROLE / "templates" / name).read_text()
    engine = Templar(loader=LOADER, variables=variables).copy_with_new_env(searchpath=[str(ROLE / "templates")])
    return engine.template(trust_as_template(text), escape_backslashes=False, overrides={"trim_blocks": True})


def render_model(site_model):
    """The site file from the model alone: the template reads nothing else."""
    return render_file({"_gateway_render": site_model, "ansible_managed": "Ansible managed"}, "gpufleet.conf.j2")


def conf(host, **kwargs):
    return render_model(model(host, **kwargs)["model"])


LOCAL_SERVERS = "/etc/nginx/gpufleet/local-servers.conf"


def local_servers(host, fenced=None, **kwargs):
    """local-servers.conf as tasks/site_file.yml writes it on `host`, from the fenced set's JSON (or None)."""
    state = model(host, **kwargs)
    found = gateway_fenced(fenced, state["model"])
    assert found["problems"] == []
    return gateway_local_servers(state["model"], state["drained"], found["fenced"])


def expanded(host, fenced=None, **kwargs):
    """The site file with the server tier's include replaced by the file it names, as nginx reads it."""
    text = conf(host, **kwargs)
    if "include %s;" % LOCAL_SERVERS not in text:
        return text
    return text.replace("include %s;\n" % LOCAL_SERVERS, local_servers(host, fenced, **kwargs))


def macro_upstream(upstream):
    """What the upstream macro prints for `upstream` with its server lines in the block (as it did for the server tier)."""
    engine = Templar(loader=LOADER, variables={"u": dict(upstream, servers_file="")}).copy_with_new_env(searchpath=[str(ROLE / "templates")])
    source = "{% import 'nginx-macros.j2' as nx %}{{ nx.upstream(u) }}"
    return engine.template(trust_as_template(source), escape_backslashes=False, overrides={"trim_blocks": True})


def role_vars(host, groups=None, instances="dp", **overrides):
    """What the preflight's asserts see on `host`: the role's values, with the filters' results in place of their calls."""
    groups = groups or GROUPS
    values = settings(host, **overrides)
    variables = dict(values, **CONSTANTS)
    variables["_gateway_hosts"] = host_lists(host, values, groups)[2]
    variables.update(
        inventory_hostname=host,
        groups=groups,
        hostvars=HOSTVARS,
        _gateway_instances=INSTANCES[instances],
        _gateway_plan_source="gateway_plan",
        _gateway_resolved=RESOLVED,
        # fleet_models' pools (one, of every server, without gpufleet_models); no cache-aware model.
        _gateway_pools=[{"model": "", "backends": [], "balance": ""}],
        role_path=str(ROLE),
        ansible_managed="Ansible managed",
        ansible_check_mode=False,
    )
    return variables


def blocks(text, header):
    """The bodies of the top-level blocks whose first line starts with `header`."""
    found, depth, current = [], 0, None
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip() if not line.strip().startswith("return") else line.strip()
        if depth == 0 and stripped.startswith(header) and stripped.endswith("{"):
            current = []
        if current is not None:
            current.append(line)
        depth += stripped.count("{") - stripped.count("}") if not stripped.startswith("return") else 0
        if current is not None and depth == 0:
            found.append("\n".join(current))
            current = None
    return found


def server_block(text, port):
    return next(b for b in blocks(text, "server") if re.search(r"listen (\S+:)?%d\b" % port, b))


def assert_results(variables):
    """(name, passed, fail_msg) of each assert of the preflight, with its own when."""
    engine = Templar(loader=LOADER, variables=variables)
    results = []
    for entry in load("tasks/preflight.yml"):
        args = entry.get("ansible.builtin.assert")
        # The checks through the collection's filters (role_input_problems, fleet_models) need Ansible's
        # plugin loader: tests/unit/hostile/test_role_inputs_hostile.py runs the schema check for real,
        # test_fleet_models.py the models' (and the tests below the pools they make).
        if args is None or "gpufleet.serving." in json.dumps(entry.get("vars", {})):
            continue
        local = dict(variables, **entry.get("vars", {}))
        engine = Templar(loader=LOADER, variables=local)
        when = entry.get("when")
        if when is not None and not holds(engine, when):
            continue
        that = args["that"] if isinstance(args["that"], list) else [args["that"]]
        passed = all(holds(engine, condition) for condition in that)
        results.append((entry["name"], passed, None if passed else " ".join(engine.template(args["fail_msg"]).split())))
    return results


def failures(variables):
    return [(name, msg) for name, passed, msg in assert_results(variables) if not passed]


# --- the rendered configuration ------------------------------------------------------
@pytest.mark.parametrize("host", ["gpu1", "gw1"])
def test_managed_header_first_and_braces_balance(host):
    text = conf(host, gateway_api_keys=KEYS)
    assert text.startswith("#\n# Ansible managed\n#\n")
    code = "\n".join(line for line in text.splitlines() if not line.strip().startswith(("#", "return")))
    assert code.count("{") == code.count("}")
    assert "{{" not in text and "{%" not in text


def test_server_tier_over_loopback_instances_open_to_gateways_only():
    text = conf("gpu1", gateway_api_keys=KEYS)
    # The upstreams are the include's (at http level), which the role and the watchdog write.
    assert not blocks(text, "upstream gpufleet_local")
    assert "\ninclude /etc/nginx/gpufleet/local-servers.conf;\n" in text
    (upstream,) = blocks(expanded("gpu1", gateway_api_keys=KEYS), "upstream gpufleet_local")
    assert re.findall(r"server (\S+) ", upstream) == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert "least_conn;" in upstream and "keepalive 32;" in upstream
    assert "keepalive_timeout 4s;" in upstream  # under vLLM's own 5 s
    assert "max_fails=2 fail_timeout=10s;" in upstream
    server = server_block(text, 8000)
    allows = re.findall(r"allow (\S+);", server)
    assert allows == ["127.0.0.1", "::1", "10.0.0.2", "fd00::2"]
    assert "deny all;" in server
    assert "keepalive_timeout 75s;" in server  # longer than the gateways keep theirs (60 s)
    # Keys and rate limits belong to the fleet tier.
    assert "gpufleet_api_key_ok" not in text and "limit_req" not in text
    assert "upstream gpufleet_fleet" not in text


def test_tp_server_has_one_instance():
    (upstream,) = blocks(expanded("gpu1", instances="tp", gateway_api_keys=KEYS), "upstream gpufleet_local")
    assert re.findall(r"server (\S+) ", upstream) == ["127.0.0.1:8001"]


def test_fleet_tier_over_every_gpu_server_by_address():
    text = conf("gw1", gateway_api_keys=KEYS)
    (upstream,) = blocks(text, "upstream gpufleet_fleet")
    lines = re.findall(r"server .*", upstream)
    assert lines == [
        "server 10.0.0.11:8000 max_fails=2 fail_timeout=10s;  # gpu1",
        "server 10.0.0.12:9000 weight=3 max_fails=2 fail_timeout=10s;  # gpu2 (10.0.0.12)",
    ]
    assert "keepalive_timeout 60s;" in upstream
    assert "upstream gpufleet_local" not in text


COMMON_PROXY = (
    "proxy_http_version 1.1;",
    'proxy_set_header Connection "";',
    "proxy_buffering off;",
    "proxy_read_timeout 300s;",
    "proxy_send_timeout 60s;",
    "proxy_connect_timeout 5s;",
    "proxy_next_upstream_tries 3;",
    "proxy_next_upstream_timeout 30s;",
    'proxy_set_header Authorization "";',
    "client_max_body_size 16m;",
    "gzip off;",
    "server_tokens off;",
)


def test_fleet_tier_streaming_and_retry_settings():
    server = server_block(conf("gw1", gateway_api_keys=KEYS), 80)
    for directive in COMMON_PROXY:
        assert directive in server, directive
    # A server tier's 503 (no instance took the request) moves the request on, POSTs
    # included; their bodies are read whole first so that they can be sent again.
    assert "proxy_next_upstream error timeout http_503 non_idempotent;" in server
    assert "proxy_request_buffering on;" in server and "client_body_buffer_size 1m;" in server
    assert "access_log /var/log/nginx/gpufleet-access.log gpufleet_upstream;" in server


def test_server_tier_retries_only_what_no_instance_received():
    server = server_block(conf("gpu1", gateway_api_keys=KEYS), 8000)
    for directive in COMMON_PROXY:
        assert directive in server, directive
    assert "proxy_next_upstream error timeout;" in server and "non_idempotent" not in server
    assert "proxy_request_buffering off;" in server and "client_body_buffer_size" not in server


def test_timeouts_follow_the_variables():
    text = conf("gw1", gateway_api_keys=KEYS, gateway_read_timeout="15m", gateway_send_timeout="2m", gateway_next_upstream_timeout="45s")
    server = server_block(text, 80)
    assert "proxy_read_timeout 15m;" in server and "proxy_send_timeout 2m;" in server
    assert "proxy_next_upstream_timeout 45s;" in server


def test_log_format_has_upstream_timings():
    text = conf("gw1", gateway_api_keys=KEYS)
    fmt = text[text.index("log_format gpufleet_upstream") : text.index(";\n", text.index("log_format"))]
    for variable in ("$upstream_response_time", "$upstream_connect_time", "$upstream_header_time", "$request_time", "$upstream_addr"):
        assert variable in fmt


def test_only_listed_paths_are_forwarded_with_keys_and_limits():
    server = server_block(conf("gw1", gateway_api_keys=KEYS, gateway_extra_paths=["/v1/embeddings"]), 80)
    paths = re.findall(r"location = (\S+) \{", server)
    assert paths == ["/health", "/_gpufleet_key_check", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings"]
    check = server[server.index("location = /_gpufleet_key_check {") :]
    check = check[: check.index("\n    }\n")]
    assert "internal;" in check and "if ($gpufleet_api_key_ok = 0)" in check and "return 401;" in check
    for path in paths[2:]:
        body = server[server.index("location = %s {" % path) :]
        body = body[: body.index("\n    }")]
        # Limits (preaccess) come before the key check (access): wrong keys are counted.
        assert "limit_req zone=gpufleet_auth_fail burst=10 nodelay;" in body
        assert "limit_req zone=gpufleet_clients burst=20 nodelay;" in body
        assert "auth_request /_gpufleet_key_check;" in body
        assert "return 401" not in body
        assert "proxy_pass http://gpufleet_fleet;" in body
    assert "limit_req_zone $gpufleet_auth_fail_client zone=gpufleet_auth_fail:10m rate=1r/s;" in conf("gw1", gateway_api_keys=KEYS)
    assert "limit_conn gpufleet_conn 64;" in server
    assert re.search(r"location / \{\s+return 404;\s+\}", server)
    assert "limit_req_status 429;" in server


def test_api_key_map_and_keys_file():
    variables = role_vars("gw1", gateway_api_keys=KEYS)
    text = conf("gw1", gateway_api_keys=KEYS)
    assert "map $http_authorization $gpufleet_api_key_ok {\n    default 0;\n    include /etc/nginx/gpufleet/api-keys.map;\n}" in text
    assert not any(key in text for key in KEYS)
    keys = render_file(variables, "api-keys.map.j2")
    # Case-sensitive regular expressions: a plain map string matches in any case.
    assert [line for line in keys.splitlines() if not line.startswith("#")] == ['"~^Bearer %s$" 1;' % re.escape(k) for k in KEYS]


def test_open_gateway_checks_no_keys():
    text = conf("gw1", gateway_require_api_key=False)
    assert "gpufleet_api_key_ok" not in text


def test_health_answered_from_the_upstreams():
    server = server_block(conf("gw1", gateway_api_keys=KEYS), 80)
    health = server[server.index("location = /health {") :]
    health = health[: health.index("\n    }")]
    assert "proxy_next_upstream error timeout http_500 http_502 http_503 http_504;" in health
    assert "proxy_next_upstream_tries 0;" in health
    assert "error_page 500 502 503 504 = @gpufleet_unhealthy;" in health
    assert "gpufleet_api_key_ok" not in health and "limit_req" not in health
    assert "return 503" in server[server.index("location @gpufleet_unhealthy") :]


@pytest.mark.parametrize(
    ("balance", "expected", "absent"),
    [
        ("least_conn", "least_conn;", "hash "),
        ("round_robin", None, "least_conn;"),
        ("hash_header", "hash $gpufleet_affinity consistent;", "least_conn;"),
    ],
)
def test_balance_modes(balance, expected, absent):
    text = conf("gw1", gateway_api_keys=KEYS, gateway_balance=balance, gateway_hash_header="X-Session-ID")
    (upstream,) = blocks(text, "upstream gpufleet_fleet")
    if expected:
        assert expected in upstream
        assert upstream.index(expected) < upstream.index("keepalive 32;")  # balancing comes before keepalive
    assert absent not in upstream
    if balance == "hash_header":
        assert "map $http_x_session_id $gpufleet_affinity {" in text
        assert "least_conn" not in text and "hash" not in text.split("upstream gpufleet_fleet")[0].split("map $http_x_session_id")[0]


def test_tls_listens_with_the_certificate():
    text = conf("gw1", gateway_api_keys=KEYS, gateway_tls_certificate=PEM_CERT, gateway_tls_certificate_key=PEM_KEY)
    server = server_block(text, 443)
    assert "listen 443 ssl http2;" in server
    assert "listen 80;" not in server  # TLS only by default
    assert "ssl_certificate /etc/nginx/gpufleet/tls/gateway.crt;" in server
    assert "ssl_certificate_key /etc/nginx/gpufleet/tls/gateway.key;" in server
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in server
    both = server_block(
        conf(
            "gw1",
            gateway_api_keys=KEYS,
            gateway_tls_certificate=PEM_CERT,
            gateway_tls_certificate_key=PEM_KEY,
            gateway_tls_only=False,
            gateway_listen_ipv6=True,
        ),
        443,
    )
    assert re.findall(r"listen (.*);", both) == ["80", "[::]:80", "443 ssl http2", "[::]:443 ssl http2"]


def test_host_in_both_groups_runs_both_tiers():
    groups = {"gpu_servers": ["gpu1"], "gateways": ["gpu1"]}
    text = expanded("gpu1", groups=groups, gateway_api_keys=KEYS)
    assert len(blocks(text, "upstream gpufleet_local")) == 1 and len(blocks(text, "upstream gpufleet_fleet")) == 1
    assert server_block(text, 8000) and server_block(text, 80)


def test_server_listen_address_keeps_loopback():
    server = server_block(conf("gpu1", gateway_server_listen_address="10.0.0.11"), 8000)
    assert re.findall(r"listen (.*);", server) == ["10.0.0.11:8000", "127.0.0.1:8000"]


# --- preflight ---------------------------------------------------------------------------
def test_preflight_passes_for_a_good_fleet():
    for host in ("gpu1", "gw1"):
        assert failures(role_vars(host, gateway_api_keys=KEYS)) == []


@pytest.mark.parametrize(
    ("host", "overrides", "assert_name", "words"),
    [
        ("gw1", {"groups": {"gpu_servers": [], "gateways": ["gw1"]}}, "Check that the gateway has GPU servers behind it", "add the GPU servers to gpu_servers"),
        ("gw1", {"gateway_api_keys": ["good-key-0123456789", ""]}, "Check the API keys", "remove empty entries"),
        ("gw1", {"gateway_api_keys": ['bad"key-0123456789']}, "Check the API keys", "openssl rand -hex 24"),
        ("gw1", {"gateway_api_keys": []}, "Check that a gateway is not left open by accident", "gateway_require_api_key to false"),
        ("gw1", {"gateway_tls_certificate": PEM_CERT}, "Check the TLS certificate and key come together", "set both, or neither"),
        (
            "gw1",
            {"gateway_balance": "hash_header", "gateway_hash_header": "X Session"},
            "Check the paths, the hash header and the rate limit",
            "gateway_hash_header a header name",
        ),
        ("gw1", {"gateway_rate_limit": "10/s"}, "Check the paths, the hash header and the rate limit", "a rate like 10r/s"),
        ("gw1", {"gateway_extra_paths": ["v1/embeddings"]}, "Check the paths, the hash header and the rate limit", "absolute paths"),
        ("gw1", {"gateway_https_port": 80}, "Check the listening ports of the fleet tier", "must differ"),
        ("gpu1", {"instances": "tp", "gateway_server_port": 8001}, "Check the instances' names and ports", "Change gateway_server_port"),
    ],
)
def test_preflight_refusals_say_what_to_change(host, overrides, assert_name, words):
    overrides = dict({"gateway_api_keys": KEYS}, **overrides)
    variables = role_vars(host, **overrides)
    failed = failures(variables)
    assert [name for name, _rest in failed] == [assert_name], failed
    assert words in failed[0][1]


def test_preflight_names_an_unresolved_gpu_server():
    variables = role_vars("gw1", gateway_api_keys=KEYS)
    variables["_gateway_resolved"] = dict(RESOLVED, gpu1=[])
    (failed,) = failures(variables)
    assert failed[0] == "Check the backends' addresses and ports"
    assert "cannot resolve gpu1" in failed[1] and "gateway_address" in failed[1]


def test_preflight_server_without_instances():
    variables = role_vars("gpu1", gateway_api_keys=KEYS)
    variables["_gateway_instances"] = []
    names = [name for name, _rest in failures(variables)]
    assert "Check that the server tier has instances to serve" in names


def test_host_in_no_tier_is_refused():
    variables = role_vars("gw1", groups={"gpu_servers": ["gpu1"], "gateways": []}, gateway_api_keys=KEYS)
    assert [name for name, _rest in failures(variables)] == ["Check that the host belongs to a tier"]


@pytest.mark.parametrize(
    ("host", "tier", "name", "expected_line"),
    [
        ("gpu1", "server", "1", "server 127.0.0.1:8002 down max_fails"),
        ("gw1", "fleet", "gpu2", "server 10.0.0.12:9000 down weight=3"),
        ("gw1", "fleet", "gpu1", "server 10.0.0.11:8000 down max_fails"),
    ],
)
def test_a_drained_server_is_the_one_line_marked_down(host, tier, name, expected_line):
    """The drained set the host keeps marks exactly that upstream line down; without it the files are as before."""
    serving = expanded(host)
    drained_set = {"version": 1, "server": [], "fleet": [], tier: [name]}
    result = model(host, drained=drained_set)
    assert result["problems"] == [] and result["kept"][tier] == [name]
    drained = expanded(host, drained=drained_set)
    changed = [line.strip() for a, line in zip(serving.splitlines(), drained.splitlines()) if a != line]
    # A server tier's instance is marked in gpufleet_local and in its own upstream (the routers' route to it).
    assert len(changed) == (2 if tier == "server" else 1) and all(c.startswith(expected_line) for c in changed), changed
    assert len(serving.splitlines()) == len(drained.splitlines())
    # Reset (gateway_undrain_all) gives back the file without marks.
    reset = gateway_drained(drained_set, model(host)["model"], True)
    assert render_model(reset["model"]) == conf(host)
    if tier == "server":
        assert render_model(result["model"]) == conf(host)  # the marks live in local-servers.conf only
        assert gateway_local_servers(reset["model"], reset["drained"], []) == local_servers(host)


FENCED = json.dumps({"version": 1, "fenced": {"0": {"since": 1764590000.5, "reason": "3 probes failed: timed out after 5 s"}}})


def test_fenced_and_drained_instances_are_down_in_the_include_only():
    """A fenced instance is down like a drained one; the site file does not change with either."""
    plain = local_servers("gpu1")
    # Each instance in gpufleet_local, then alone in its own upstream.
    assert re.findall(r"^    server (\S+) (down )?", plain, re.M) == [("127.0.0.1:8001", ""), ("127.0.0.1:8002", "")] * 2
    fenced = local_servers("gpu1", FENCED)
    assert [line for line in fenced.splitlines() if " down " in line] == ["    server 127.0.0.1:8001 down max_fails=2 fail_timeout=10s;  # vllm@0"] * 2
    both = local_servers("gpu1", FENCED, drained={"version": 1, "server": ["1"], "fleet": []})
    assert len([line for line in both.splitlines() if " down " in line]) == 4
    assert conf("gpu1", drained={"version": 1, "server": ["1"], "fleet": []}) == conf("gpu1")
    # Drained and fenced at once is still one mark.
    assert local_servers("gpu1", FENCED, drained={"version": 1, "server": ["0"], "fleet": []}) == fenced
    assert gateway_fenced(FENCED, model("gpu1")["model"])["kept"] == ["vllm@0 (3 probes failed: timed out after 5 s)"]
    assert gateway_fenced(FENCED, model("gw1")["model"])["kept"] == []


@pytest.mark.parametrize("instances", ["dp", "tp"])
@pytest.mark.parametrize("drained", [[], ["1"], ["0", "1"]])
@pytest.mark.parametrize("balance", ["least_conn", "hash_header"])
def test_include_prints_what_the_upstream_macro_printed(instances, drained, balance):
    """local_servers_conf's server lines are the text the upstream macro prints for the same model."""
    state = model("gpu1", instances=instances, drained={"version": 1, "server": drained, "fleet": []}, gateway_balance=balance, gateway_max_fails=5)
    upstream = dict(state["model"]["server"]["upstream"], servers_file="")
    by_macro = [line for line in macro_upstream(upstream).splitlines() if line.strip() and not line.startswith("#")]
    text = gateway_local_servers(state["model"], state["drained"], [])
    by_python = [*text[text.index("upstream gpufleet_local {") :].split("\n}\n")[0].splitlines(), "}"]
    assert by_macro and by_python == by_macro


def test_all_down_answers_503_at_the_server_tier_only():
    """nginx's own 502 of the server tier becomes a 503 when no byte reached an instance; the fleet tier keeps its 502."""
    text = conf("gpu1", groups={"gpu_servers": ["gpu1"], "gateways": ["gpu1"]}, gateway_api_keys=KEYS)
    assert text.count("map $upstream_bytes_sent $gpufleet_upstream_unsent {") == 1
    server, fleet = server_block(text, 8000), server_block(text, 80)
    page = server[server.index("location @gpufleet_502 {") :]
    page = page[: page.index("\n    }\n")]
    assert "if ($gpufleet_upstream_unsent) {" in page
    # "=": the status is the page's own (without it nginx keeps 502 and sends the 503 page's body with it).
    assert "error_page 502 = @gpufleet_502;" in server and "error_page 502 @gpufleet_502;" in fleet
    assert page.index("return 503 ") < page.index("return 502 ")
    assert '"message": "no vLLM instance of this GPU server is in service", "type": "server_error", "code": 503' in page
    assert "gpufleet_upstream_unsent" not in fleet and 'return 503 \'{"error"' in fleet  # its own 503 page only
    # vLLM's own answers pass as they are: no tier intercepts them.
    assert "proxy_intercept_errors on;" not in server.replace(server[server.index("location = /health") : server.index("location @gpufleet_unhealthy")], "")
    assert "gpufleet_upstream_unsent" not in conf("gw1", gateway_api_keys=KEYS)


def test_a_drained_set_the_role_did_not_write_is_not_used():
    result = model("gw1", drained={"version": 1, "fleet": ["gpu1; server 203.0.113.9:80"]})
    assert result["problems"] and "not instance or server names" in result["problems"][0]
    assert " down" not in render_model(result["model"])


def test_template_reads_only_the_model():
    """Every value the site file prints comes through _gateway_render (no role variable read in the templates)."""
    for name in ("gpufleet.conf.j2", "nginx-macros.j2"):
        text = (ROLE / "templates" / name).read_text()
        assert not re.search(r"\b_?gateway_(?!render\b)\w+", text.replace("gateway_layout.py", "")), name


def test_vars_hold_no_jinja_statements():
    text = (ROLE / "vars" / "main.yml").read_text()
    assert "{%" not in text


def test_drain_entry_point_names_its_inputs():
    spec = load("meta/argument_specs.yml")["argument_specs"]["drain"]["options"]
    assert sorted(spec) == ["gateway_drain_names", "gateway_drain_state", "gateway_drain_tier"]
    assert all(o["required"] for o in spec.values())


def test_server_tier_sends_the_instances_key_from_its_include():
    server = server_block(conf("gpu1", instance_key="yes"), 8000)
    assert "include /etc/nginx/gpufleet/instance-auth.conf;" in server
    assert 'proxy_set_header Authorization "";' not in server
    assert 'proxy_set_header Authorization "";' in server_block(conf("gpu1"), 8000)


def _task_names(rel):
    return [task["name"] for task in load(rel)]


def test_site_file_writes_the_servers_include_first_and_tests_it():
    """local-servers.conf and the router's module are written (the first with nginx -t on a staged copy) before the
    site file whose test includes or imports them."""
    tasks = load("tasks/site_file.yml")
    first, router, second = tasks[0], tasks[1], tasks[2]
    assert first["name"] == "Write the server tier's upstream servers" and second["ansible.builtin.template"]["src"] == "gpufleet.conf.j2"
    copied = {"src": "gpufleet-router.js", "dest": "{{ _gateway_router_file }}", "owner": "root", "group": "root", "mode": "0644"}
    assert router["ansible.builtin.copy"] == copied
    assert CONSTANTS["_gateway_router_file"] == "{{ _gateway_conf_dir }}/gpufleet-router.js"
    copy = first["ansible.builtin.copy"]
    assert "gpufleet.serving.gateway_local_servers" in copy["content"] and "_gateway_fenced['fenced']" in copy["content"]
    assert copy["dest"] == "{{ _gateway_local_servers_file }}" and copy["validate"].startswith("{{ _gateway_validate }} %s ")
    assert CONSTANTS["_gateway_local_servers_file"].endswith("/local-servers.conf")
    assert first["register"] == "__gateway_local_servers_file"


RELOADS = [("tasks/configure.yml", "Have nginx reload the new site file"), ("tasks/drain.yml", "Reload nginx with the new marks")]


@pytest.mark.parametrize(("rel", "reload_task"), RELOADS)
def test_normal_runs_and_drains_read_the_fenced_set_and_reload_for_either_file(rel, reload_task):
    tasks = load(rel)
    names = _task_names(rel)
    site = names.index("Write the site file and its model" if rel.endswith("configure.yml") else "Write the site file with the new marks")
    check = names.index("Check the fenced set")
    assert check < site and names.index("Work out the fenced instances") < check
    if rel.endswith("drain.yml"):
        assert check < names.index("Keep the drained set")  # nothing written before the set is known good
        read = next(t for t in tasks if t["name"].startswith("Read the model"))
        assert "{{ _gateway_fenced_file }}" in read["loop"] and read["failed_when"] is False
    else:
        read = next(t for t in tasks if t["name"] == "Read the fenced set the watchdog keeps")
        assert read["ansible.builtin.slurp"]["src"] == "{{ _gateway_fenced_file }}" and read["failed_when"] is False
    reload = next(t for t in tasks if t["name"] == reload_task)
    assert "__gateway_local_servers_file is changed" in reload["when"] and "__gateway_site_file is changed" in reload["when"]
    assert CONSTANTS["_gateway_fenced_file"].endswith("/fenced.json")
    # The role never writes the fenced set.
    for task_file in (ROLE / "tasks").glob("*.yml"):
        assert 'dest: "{{ _gateway_fenced_file }}"' not in task_file.read_text(), task_file


# --- several models (gpufleet_models) ----------------------------------------------------
MODELS = [{"name": "small", "group": "model_small"}, {"name": "org/large-1", "group": "model_large"}]
MODEL_GROUPS = dict(GROUPS, model_small=["gpu1"], model_large=["gpu2"])


def routed(**overrides):
    return conf("gw1", groups=MODEL_GROUPS, models=MODELS, gateway_api_keys=KEYS, **overrides)


def test_one_model_keeps_one_upstream_and_no_router():
    one = conf("gw1", groups=dict(GROUPS, model_small=["gpu1", "gpu2"]), models=MODELS[:1], gateway_api_keys=KEYS)
    assert one.replace("# model small\nupstream gpufleet_fleet {", "upstream gpufleet_fleet {") == conf("gw1", gateway_api_keys=KEYS)
    assert "js_" not in one


def test_several_models_get_an_upstream_each_in_the_lists_order():
    text = routed()
    (first,) = blocks(text, "upstream gpufleet_fleet_1")
    (second,) = blocks(text, "upstream gpufleet_fleet_2")
    assert re.findall(r"# (gpu\S+)", first) == ["gpu1"] and re.findall(r"# (gpu\S+)", second) == ["gpu2"]
    assert "# model small\nupstream gpufleet_fleet_1 {" in text and "# model org/large-1\nupstream gpufleet_fleet_2 {" in text
    assert not blocks(text, "upstream gpufleet_fleet {")
    assert "2 GPU server(s), 2 models routed by name." in text


def test_the_router_table_is_data_and_the_module_is_imported():
    text = routed()
    assert "js_import gpufleet from /etc/nginx/gpufleet/gpufleet-router.js;" in text
    assert 'js_var $gpufleet_served "small, org/large-1";' in text
    assert 'js_var $gpufleet_pools "gpufleet_fleet_1=small gpufleet_fleet_2=org/large-1";' in text
    (table,) = blocks(text, "map $gpufleet_model $gpufleet_pool")
    assert re.findall(r"^\s+(\S.*);$", table, re.M) == ["volatile", 'default ""', '"small" gpufleet_fleet_1', '"org/large-1" gpufleet_fleet_2']


def test_routed_paths_keep_keys_and_limits_and_read_the_whole_body():
    server = server_block(routed(gateway_client_max_body_size="8m"), 80)
    for path, handler in (("/v1/models", "models"), ("/v1/completions", "route"), ("/v1/chat/completions", "route")):
        body = server[server.index("location = %s {" % path) :]
        body = body[: body.index("\n    }")]
        assert "limit_req zone=gpufleet_auth_fail burst=10 nodelay;" in body and "auth_request /_gpufleet_key_check;" in body
        assert "js_content gpufleet.%s;" % handler in body and "proxy_pass" not in body
        assert "client_body_buffer_size 8m;" in body and "client_body_in_single_buffer on;" in body
    # Where the route handler sends a request: no key check or limit again, the tier's proxy settings.
    for index in (1, 2):
        named = server[server.index("location @gpufleet_fleet_%d {" % index) :]
        assert named[: named.index("}")].split("\n")[1:-1] == ["        proxy_pass http://gpufleet_fleet_%d;" % index]
        for what, path in (("models", "/v1/models"), ("health", "/health")):
            inner = server[server.index("location = /_gpufleet/%s/gpufleet_fleet_%d {" % (what, index)) :]
            inner = inner[: inner.index("}")]
            assert "internal;" in inner and "proxy_pass http://gpufleet_fleet_%d%s;" % (index, path) in inner
            assert "subrequest_output_buffer_size 64k;" in inner
    health = server[server.index("location = /health {") :]
    health = health[: health.index("}")]
    assert "js_content gpufleet.health;" in health and "deny all;" in health and "allow 127.0.0.1;" in health
    for directive in COMMON_PROXY:
        assert directive in server.replace("client_max_body_size 8m;", "client_max_body_size 16m;"), directive


def test_a_drained_server_is_down_in_its_models_upstream():
    text = routed(drained=json.dumps({"version": 1, "server": [], "fleet": ["gpu2"]}))
    (first,) = blocks(text, "upstream gpufleet_fleet_1")
    (second,) = blocks(text, "upstream gpufleet_fleet_2")
    assert " down " not in first and "server 10.0.0.12:9000 down weight=3" in second


def test_a_given_backend_names_its_model():
    given = [{"address": "10.0.0.30", "model": "org/large-1"}, {"address": "10.0.0.31", "model": "small"}]
    text = routed(gateway_backends=given)
    assert "10.0.0.31" in blocks(text, "upstream gpufleet_fleet_1")[0] and "10.0.0.30" in blocks(text, "upstream gpufleet_fleet_2")[0]


@pytest.mark.parametrize(
    ("answer", "routed", "ready"),
    [
        ({"status": 200}, False, True),
        ({"status": 503, "json": {"status": "unavailable", "upstream": "gpufleet_fleet"}}, False, False),
        ({"status": 503, "json": {"status": "unavailable", "models": {"small": "ok", "org/large-1": "unavailable"}}}, True, True),
        ({"status": 503, "json": {"status": "unavailable", "models": {"small": "unavailable"}}}, True, False),
        ({"status": 503}, True, False),
        ({"status": 200, "json": {"status": "ok", "models": {"small": "ok"}}}, True, True),
    ],
)
def test_a_fleet_gateway_of_several_models_is_ready_with_one_model_in_service(answer, routed, ready):
    """A new fleet's models come up batch by batch: one model in service is enough for the role's readiness wait."""
    task = next(t for t in load("tasks/ready.yml") if t["register"] == "__gateway_fleet_health")
    assert task["ansible.builtin.uri"]["status_code"] == [200, 503]
    engine = Templar(loader=LOADER, variables={"__gateway_fleet_health": answer, "_gateway_routed": routed})
    assert holds(engine, task["until"]) is ready


# --- cache-aware models (vLLM's router) ------------------------------------------------------
CACHE_MODELS = [{"name": "small", "group": "model_small", "balance": "cache_aware"}, {"name": "org/large-1", "group": "model_large"}]
PLANNED = {"gpu1": ["0", "1"], "gpu2": ["main"]}


def cache_state(**overrides):
    return model("gw1", groups=MODEL_GROUPS, models=CACHE_MODELS, backend_instances=PLANNED, gateway_api_keys=KEYS, **overrides)


def test_a_cache_aware_model_goes_through_its_router_to_each_instance():
    state = cache_state()
    text = render_model(state["model"])
    (pool,) = blocks(text, "upstream gpufleet_fleet_1")
    # The model's upstream is its router on loopback; the other model keeps its servers.
    assert re.findall(r"server (\S+) ", pool) == ["127.0.0.1:8200"]
    (other,) = blocks(text, "upstream gpufleet_fleet_2")
    assert "least_conn;" in other and re.findall(r"server (\S+) ", other) == ["10.0.0.12:9000"]
    # One worker upstream per instance of the model's servers, each the GPU server's server tier.
    for index, instance in enumerate(["0", "1"], 1):
        (worker,) = blocks(text, "upstream gpufleet_worker_1_%d" % index)
        assert re.findall(r"server (\S+) ", worker) == ["10.0.0.11:8000"] and "# gpu1 vllm@%s" % instance in worker
        assert "location /_gpufleet/worker/gpufleet_worker_1_%d/ {" % index in text
        assert "proxy_pass http://gpufleet_worker_1_%d/_gpufleet/instance/%s/;" % (index, instance) in text
    assert not blocks(text, "upstream gpufleet_worker_2_")
    worker_server = server_block(text, 8199)
    assert "listen 127.0.0.1:8199;" in worker_server and "allow 127.0.0.1;" in worker_server and "deny all;" in worker_server
    assert "gpufleet_api_key_ok" not in worker_server and "limit_req" not in worker_server
    (router,) = state["model"]["fleet"]["cache_routers"]
    assert router["unit"] == "gpufleet-router-1" and router["model"] == "small" and router["metrics_port"] == 8201
    assert router["workers"] == ["http://127.0.0.1:8199/_gpufleet/worker/gpufleet_worker_1_%d" % i for i in (1, 2)]
    # Keys and limits stay at the fleet tier's own server.
    assert "auth_request /_gpufleet_key_check;" in server_block(text, 80)


def test_a_drained_server_is_down_for_the_router_too():
    state = cache_state(drained={"version": 1, "server": [], "fleet": ["gpu1"]})
    assert state["kept"]["fleet"] == ["gpu1"] and state["problems"] == []
    text = render_model(state["model"])
    for index in (1, 2):
        (worker,) = blocks(text, "upstream gpufleet_worker_1_%d" % index)
        assert "server 10.0.0.11:8000 down " in worker
    # The router's own line is never a drain's name.
    assert "127.0.0.1:8200 down" not in text
    from ansible_collections.gpufleet.serving.plugins.module_utils import gateway_layout  # noqa: PLC0415

    found = gateway_layout.drain(state["model"], state["drained"], "fleet", ["router:gpufleet_fleet_1", "gpu2"], "drained")
    assert found["unknown"] == ["router:gpufleet_fleet_1"] and found["drained"]["fleet"] == ["gpu1", "gpu2"]


def test_the_server_tier_routes_to_each_instance_alone():
    text = conf("gpu1", gateway_api_keys=KEYS)
    server = server_block(text, 8000)
    for instance in ("0", "1"):
        for path in ("/health", "/v1/models", "/v1/completions", "/v1/completions/render", "/v1/chat/completions", "/v1/chat/completions/render"):
            assert "location = /_gpufleet/instance/%s%s {" % (instance, path) in server
            route = "set $gpufleet_instance_upstream gpufleet_instance_%s;\n        proxy_pass http://$gpufleet_instance_upstream%s;"
            assert route % (instance, path) in server
    # Nothing else of vLLM (its token endpoints, /metrics) is reachable through them.
    assert "/_gpufleet/instance/0/inference" not in server and "/_gpufleet/instance/0/metrics" not in server
    assert not re.search(r"location /_gpufleet/instance", server)


def test_the_routers_launch_is_the_model_entry():
    from ansible_collections.gpufleet.serving.plugins.module_utils import cache_router  # noqa: PLC0415

    (router,) = cache_state()["model"]["fleet"]["cache_routers"]
    line = cache_router.router_exec_start("/opt/gpufleet-router/venv/bin/vllm-router", router)
    words = line.split()
    assert words[0] == "/opt/gpufleet-router/venv/bin/vllm-router"
    assert words[words.index("--policy") + 1] == "cache_aware" and words[words.index("--host") + 1] == "127.0.0.1"
    assert words[words.index("--port") + 1] == "8200" and words[words.index("--prometheus-port") + 1] == "8201"
    assert words[words.index("--request-timeout-secs") + 1] == "300"
    start = words.index("--worker-urls") + 1
    assert words[start : start + 2] == router["workers"]
    for bad in ({"workers": []}, {"workers": ["http://203.0.113.9/x"]}, {"port": 0}, {"policy": "random"}, {"unit": "sshd"}):
        with pytest.raises(cache_router.CacheRouterError):
            cache_router.router_argv(dict(router, **bad))


def test_a_cache_aware_model_without_known_instances_has_no_worker():
    state = model("gw1", groups=MODEL_GROUPS, models=CACHE_MODELS, gateway_api_keys=KEYS)
    (router,) = state["model"]["fleet"]["cache_routers"]
    assert router["workers"] == [] and state["model"]["fleet"]["workers"] == []
