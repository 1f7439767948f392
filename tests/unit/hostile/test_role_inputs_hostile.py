# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Hostile inputs against every role's preflight (issue 19).

Three tables:
- BAD: one bad value of one role variable per row; the role_input_problems
  filter must return a problem that starts with that variable's name. The
  column `before` says what refused the value before the schema existed:
  "spec" (meta/argument_specs.yml, computed here), "preflight" (an older
  assert of tasks/preflight.yml), "module" (the planner module later in the
  plan role, still before any change; measured with ansible-playbook), or ""
  (accepted: the value went on to a template, unit, path or argument vector).
- the good side: every role's defaults, merged with the variables of every
  host of the repository's inventories (inventory/, the molecule scenarios),
  templated as Ansible would, give no problem at all.
- E2E: a few rows really run ansible-playbook on localhost (check mode, the
  role's preflight tags) and must fail at "Check the role's inputs" with the
  variable named, with nothing changed.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from ansible.module_utils import _internal as module_utils_internal
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.gpufleet.serving.plugins.module_utils import role_inputs

# Importing a filter plugin marks the process as the controller (see
# tests/unit/plugins/filter/test_plan_table.py); put the flag back.
_WAS_CONTROLLER = module_utils_internal.is_controller
filter_plugin = importlib.import_module("ansible_collections.gpufleet.serving.plugins.filter.role_input_problems")
module_utils_internal.is_controller = _WAS_CONTROLLER

ROOT = Path(__file__).resolve().parents[3]
ROLES = ["gateway", "vllm", "plan", "nvidia", "artifact_cache", "bakeoff", "watchdog", "monitoring"]
SHA = "sha256:" + "0" * 64
NAN = float("nan")

# (role, variable, bad value, what refused it before the schema)
BAD = [
    # --- gateway: nginx configuration ---------------------------------------
    ("gateway", "gateway_server_name", "x; location /metrics { return 200; }", ""),
    ("gateway", "gateway_server_name", "gw1\n    location / { }", ""),
    ("gateway", "gateway_server_name", "~^(?<a>.+)$", ""),
    ("gateway", "gateway_server_allow", ["all"], ""),
    ("gateway", "gateway_server_allow", ["0.0.0.0/0"], ""),
    ("gateway", "gateway_server_allow", ["::/0"], ""),
    ("gateway", "gateway_server_allow", ["10.0.0.0/8; allow all"], ""),
    ("gateway", "gateway_server_port", 70000, ""),
    ("gateway", "gateway_server_port", 0, ""),
    ("gateway", "gateway_http_port", -1, ""),
    ("gateway", "gateway_https_port", 65536, ""),
    ("gateway", "gateway_read_timeout", "3600s; proxy_pass http://203.0.113.9", ""),
    ("gateway", "gateway_connect_timeout", "forever", ""),
    ("gateway", "gateway_send_timeout", "9999999h", ""),
    ("gateway", "gateway_next_upstream_timeout", "30s; proxy_next_upstream off", ""),
    ("gateway", "gateway_next_upstream_timeout", 0, ""),
    ("gateway", "gateway_client_max_body_size", "16m\n", ""),
    ("gateway", "gateway_rate_limit_zone_size", "10x", ""),
    ("gateway", "gateway_access_log", "/etc/passwd", ""),
    ("gateway", "gateway_access_log", "/var/log/nginx/../../../etc/shadow", ""),
    ("gateway", "gateway_error_log", "/var/log/nginx/a b.log", ""),
    ("gateway", "gateway_extra_paths", ["/v1/embeddings { }"], "preflight"),
    ("gateway", "gateway_extra_paths", ["/v1/embeddings\n"], ""),
    ("gateway", "gateway_rate_limit", "10r/s\n", ""),
    ("gateway", "gateway_hash_header", "X-Session-ID\n", ""),
    ("gateway", "gateway_backends", [{"address": "10.0.0.1", "name": "gpu1\n    server 203.0.113.9:80"}], ""),
    ("gateway", "gateway_backends", [{"address": "10.0.0.1", "port": 70000}], "preflight"),
    ("gateway", "gateway_backends", [{"address": "10.0.0.1", "weight": 0}], "preflight"),
    ("gateway", "gateway_backends", [{"name": "gpu1"}], "spec"),
    ("gateway", "gateway_instances", [{"name": "0\n    server 203.0.113.9:80", "port": 8001}], ""),
    ("gateway", "gateway_instances", [{"name": "a", "port": 8001}, {"name": "a", "port": 8002}], ""),
    ("gateway", "gateway_api_keys", ["short"], "preflight"),
    ("gateway", "gateway_tls_only", "false", ""),
    ("gateway", "gateway_listen_ipv6", "no", ""),
    ("gateway", "gateway_rate_limit_burst", -1, "preflight"),
    ("gateway", "gateway_keepalive_connections", 0, ""),
    ("gateway", "gateway_max_fails", "2; x", "spec"),
    ("gateway", "gateway_fail_timeout", 10**9, ""),
    ("gateway", "gateway_plan_path", "/tmp/plan.json", ""),
    ("gateway", "gateway_server_listen_address", "0.0.0.0:80 default_server", ""),
    ("gateway", "gateway_nginx_package", "nginx; rm -rf /", ""),
    ("gateway", "gateway_tls_certificate", "not a certificate", "preflight"),
    ("gateway", "gateway_auth_fail_rate", "1r/s\n", ""),
    ("gateway", "gateway_health_allow", ["all"], ""),
    ("gateway", "gateway_conn_limit_per_client", 10**6, ""),
    ("gateway", "gateway_instance_key_file", "/root/../etc/shadow", ""),
    ("gateway", "gateway_instance_key_file", "/tmp/key", ""),
    # --- vllm: systemd units, paths, pip's argument vector --------------------
    ("vllm", "vllm_user", "root\nExecStartPre=/bin/sh", ""),
    ("vllm", "vllm_user", "Root User", ""),
    ("vllm", "vllm_group", "", ""),
    ("vllm", "vllm_home", "/var/lib/vllm home", ""),
    ("vllm", "vllm_home", "relative/dir", ""),
    ("vllm", "vllm_config_dir", "/etc/../root", ""),
    ("vllm", "vllm_install_dir", "/", ""),
    ("vllm", "vllm_pip_index_url", "http://cache:8080/simple\n--trusted-host evil", ""),
    ("vllm", "vllm_pip_index_url", "ftp://cache/simple", ""),
    ("vllm", "vllm_pip_trusted_hosts", ["cache:99999"], ""),
    ("vllm", "vllm_model_url", "http://cache/models/a b", ""),
    ("vllm", "vllm_model_repo_id", "../../etc", ""),
    ("vllm", "vllm_model_revision", "main\n", ""),
    ("vllm", "vllm_model_revision", "main/../../../etc", ""),
    ("vllm", "vllm_hf_token", "hf abc", ""),
    ("vllm", "vllm_limit_nofile", -1, ""),
    ("vllm", "vllm_ip_address_allow", ["any"], ""),
    ("vllm", "vllm_model_manifest_sha256", "abc\nrm", ""),
    ("plan", "plan_allreduce_multicast", "yes", ""),
    ("artifact_cache", "artifact_cache_client_groups", ["gpu servers"], ""),
    ("vllm", "vllm_ip_address_allow", ["0.0.0.0/0"], ""),
    ("vllm", "vllm_ip_address_allow", ["10.0.0.1 localhost"], ""),
    ("vllm", "vllm_start_limit_burst", 0, ""),
    ("vllm", "vllm_report_tolerance_pct", NAN, ""),
    ("vllm", "vllm_version", "0.33.0; rm", ""),
    ("vllm", "vllm_restart_stale", "false", ""),
    ("vllm", "vllm_cpu_remove_packages", ["torch vision"], ""),
    # --- plan: the launch every instance gets -------------------------------------
    ("plan", "plan_host", "0.0.0.0", ""),
    ("plan", "plan_host", "10.0.0.5", ""),
    ("plan", "plan_served_model_name", "tiny model", "module"),
    ("plan", "plan_served_model_name", "a/../../etc", "module"),
    ("plan", "plan_max_model_len", -5, ""),
    ("plan", "plan_gpu_count", 1000, ""),
    ("plan", "plan_base_port", 80, "module"),
    ("plan", "plan_gpu_memory_utilization", float("inf"), "module"),
    ("plan", "plan_extra_args", ["--foo bar"], ""),
    ("plan", "plan_extra_env", {"A B": "x"}, "module"),
    ("plan", "plan_extra_env", {"HF_HOME": "x\ny"}, "module"),
    ("plan", "plan_model_path", "/var/lib/vllm/models/../../../etc", "module"),
    ("plan", "plan_model_config", "/models/tiny\n", "module"),
    ("plan", "plan_shutdown_timeout_sec", -1, "module"),
    ("plan", "plan_single_endpoint", "yes", ""),
    ("plan", "plan_dtype", "float64", "spec"),
    # --- nvidia: apt pins, sources, units -------------------------------------------
    ("nvidia", "nvidia_driver_branch", "580\n", ""),
    ("nvidia", "nvidia_driver_extra_packages", ["nvidia-fabricmanager-580=580.1"], ""),
    ("nvidia", "nvidia_driver_extra_packages", ["pkg; reboot"], ""),
    ("nvidia", "nvidia_repo_base_url", "https://mirror example/cuda", ""),
    ("nvidia", "nvidia_repo_key_fingerprint", "zz", ""),
    ("nvidia", "nvidia_cuda_driver_requirements_extra", {"13.4": "615"}, ""),
    ("nvidia", "nvidia_reboot_timeout", 0, ""),
    ("nvidia", "nvidia_cuda_toolkit_version", "12.8.1\n", ""),
    ("nvidia", "nvidia_driver_version", "580.95.05\n", ""),
    # --- artifact_cache: nginx, apt-cacher-ng, pip ----------------------------------
    ("artifact_cache", "artifact_cache_allow", ["all"], ""),
    ("artifact_cache", "artifact_cache_allow", ["10.0.0.0/33"], ""),
    ("artifact_cache", "artifact_cache_root", "/", ""),
    ("artifact_cache", "artifact_cache_root", "/srv/../etc", ""),
    ("artifact_cache", "artifact_cache_http_port", 99999, ""),
    ("artifact_cache", "artifact_cache_listen_address", "0.0.0.0:80", ""),
    ("artifact_cache", "artifact_cache_model_name", "../x", "preflight"),
    ("artifact_cache", "artifact_cache_model_name", "model\n", ""),
    ("artifact_cache", "artifact_cache_files", [{"url": "http://x/a", "name": "../a", "checksum": SHA}], "preflight"),
    ("artifact_cache", "artifact_cache_pip_requirements", ["vllm==0.33.0\n"], ""),
    ("artifact_cache", "artifact_cache_pip_download_args", ["--index-url http://x y"], ""),
    ("artifact_cache", "artifact_cache_model_patterns", ["../../*"], ""),
    ("artifact_cache", "artifact_cache_hf_endpoint", "file:///etc", ""),
    ("artifact_cache", "artifact_cache_host", "cache;evil", ""),
    ("artifact_cache", "artifact_cache_apt_port", 0, ""),
    # --- bakeoff: load generator, reports --------------------------------------------
    ("bakeoff", "bakeoff_concurrency", [100000], ""),
    ("bakeoff", "bakeoff_mix", "999999999:1", ""),
    ("bakeoff", "bakeoff_requests_per_level", 10**9, ""),
    ("bakeoff", "bakeoff_client_host", "gw1\n", "preflight"),
    ("bakeoff", "bakeoff_report_dir", "/tmp/a\nb", ""),
    ("bakeoff", "bakeoff_topologies", ["dp", "dp"], "preflight"),
    ("bakeoff", "bakeoff_restore", "no", ""),
    ("bakeoff", "bakeoff_request_timeout", 0, "preflight"),
    # --- watchdog: the daemon's configuration, its unit's paths ---------------------------
    # --- monitoring: Prometheus's and Alertmanager's files, nginx, units -------------------
    ("monitoring", "monitoring_scrape_interval", "15s\nscrape_configs: []", ""),
    ("monitoring", "monitoring_scrape_interval", "0s", ""),
    ("monitoring", "monitoring_retention", "15d --web.enable-admin-api", ""),
    ("monitoring", "monitoring_prometheus_listen", "0.0.0.0:9090 --web.enable-lifecycle", ""),
    ("monitoring", "monitoring_alertmanager_listen", "evil.example:9093", ""),
    ("monitoring", "monitoring_alert_webhooks", ["file:///etc/shadow"], ""),
    ("monitoring", "monitoring_allow", ["0.0.0.0/0"], ""),
    ("monitoring", "monitoring_allow", ["10.0.0.0/8; allow all"], ""),
    ("monitoring", "monitoring_group", "monitoring; rm -rf /", ""),
    ("monitoring", "monitoring_dcgm_packages", ["dcgm; curl evil"], ""),
    ("monitoring", "monitoring_access_log", "/etc/shadow", ""),
    ("monitoring", "monitoring_plan_path", "/tmp/plan.json", ""),
    ("watchdog", "watchdog_interval", 0, ""),
    ("watchdog", "watchdog_interval", "5; rm -rf /", "spec"),
    ("watchdog", "watchdog_probe_timeout", NAN, ""),
    ("watchdog", "watchdog_probe_timeout", 1e9, ""),
    ("watchdog", "watchdog_failures", -1, ""),
    ("watchdog", "watchdog_ready_successes", 0, ""),
    ("watchdog", "watchdog_start_timeout", 10**12, ""),
    ("watchdog", "watchdog_textfile_dir", "/var/lib/../../etc/cron.d", ""),
    ("watchdog", "watchdog_textfile_dir", "/tmp/metrics", ""),
    ("watchdog", "watchdog_textfile_dir", "/var/lib/node exporter\nExecStartPre=/bin/sh", ""),
    ("watchdog", "watchdog_instance_key_file", "/root/.ssh/id_rsa", ""),
    ("watchdog", "watchdog_plan_path", "/etc/vllm/plan.json\n", ""),
    ("watchdog", "watchdog_enabled", "false", ""),
]

# Rows that involve two variables: (role, variables, variable named)
CROSS = [
    ("gateway", {"gateway_http_port": 8080, "gateway_https_port": 8080}, "gateway_http_port"),
    ("gateway", {"gateway_server_port": 8001, "_gateway_instances": [{"name": "0", "port": 8001}]}, "gateway_server_port"),
    # A silent backend would be asked again: the retry window must end before the read timeout.
    ("gateway", {"gateway_next_upstream_timeout": "5m", "gateway_read_timeout": "300s"}, "gateway_next_upstream_timeout"),
    ("gateway", {"gateway_next_upstream_timeout": 60, "gateway_read_timeout": "1m"}, "gateway_next_upstream_timeout"),
    (
        "gateway",
        {"_gateway_backends": [{"name": "gpu1", "address": "gpu1\n    server 203.0.113.9:80", "port": 8000, "weight": 1}]},
        "gateway_backends",
    ),
    ("gateway", {"_gateway_backends": [{"name": "gpu1", "address": "10.0.0.1", "port": 0, "weight": 1}]}, "gateway_backends"),
    ("plan", {"plan_base_port": 65535, "plan_gpu_count": 8}, "plan_base_port"),
    ("artifact_cache", {"artifact_cache_http_port": 3142, "artifact_cache_apt_port": 3142, "artifact_cache_apt_proxy": True}, "artifact_cache_http_port"),
    ("vllm", {"vllm_pip_no_index": True, "vllm_pip_find_links": "", "vllm_pip_index_url": ""}, "vllm_pip_no_index"),
]


def _case_id(row):
    return "%s-%s" % (row[1], re.sub(r"[^A-Za-z0-9]+", "_", repr(row[2]))[:24])


def _spec_options(role):
    return yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]


def refused_by_spec(role, variable, value):
    """Whether the role's argument spec (checked when the role starts) refuses the value."""
    options = _spec_options(role)
    if variable not in options:
        return False
    return bool(ArgumentSpecValidator({variable: options[variable]}).validate({variable: value}).error_messages)


def test_the_table_covers_every_role_and_is_large():
    assert len(BAD) + len(CROSS) >= 60
    assert {row[0] for row in BAD} == set(ROLES)
    for role in ROLES:
        assert sum(1 for row in BAD if row[0] == role) >= 6, role


@pytest.mark.parametrize("row", BAD, ids=[_case_id(r) for r in BAD])
def test_bad_value_is_refused_with_the_variable_named(row):
    role, variable, value, before = row
    problems = filter_plugin.role_input_problems(role, {variable: value})
    assert problems, "%s=%r was accepted" % (variable, value)
    assert all(p.startswith(variable + " ") for p in problems), problems
    # The message says what to change: "must ..." or "may not ...".
    assert re.search(r"\b(must|may not)\b", problems[0]), problems[0]
    assert (before == "spec") == refused_by_spec(role, variable, value), "update the before column of %s" % variable


@pytest.mark.parametrize("row", CROSS, ids=[r[2] for r in CROSS])
def test_variables_that_disagree_are_refused(row):
    role, values, variable = row
    problems = role_inputs.role_input_problems(role, values)
    assert any(p.startswith(variable) for p in problems), problems


def test_secrets_are_never_quoted():
    secret = "s3cret key with spaces"
    for role, variable in [("gateway", "gateway_api_keys"), ("vllm", "vllm_hf_token"), ("artifact_cache", "artifact_cache_hf_token")]:
        value = [secret] if variable.endswith("keys") else secret
        problems = role_inputs.role_input_problems(role, {variable: value})
        assert problems and all(secret not in p for p in problems), problems
    problems = role_inputs.role_input_problems("gateway", {"gateway_tls_certificate_key": secret})
    assert problems and secret not in problems[0]


def test_unknown_role_and_wrong_shapes_are_errors_not_tracebacks():
    assert "knows the roles" in role_inputs.role_input_problems("nginx", {})[0]
    assert "must be a mapping" in role_inputs.role_input_problems("gateway", ["gateway_server_port"])[0]
    # Values of the wrong shape anywhere give messages, never exceptions.
    odd = [None, 3.5, True, {"a": 1}, ["x"] * 10000, "x" * 100000, float("nan"), b"bytes", object()]
    for role in ROLES:
        for key in role_inputs.SCHEMAS[role]:
            for value in odd:
                role_inputs.role_input_problems(role, {key: value})
    assert role_inputs.role_input_problems("gateway", {"_gateway_instances": [{"name": "a", "port": []}]})
    assert role_inputs.role_input_problems("gateway", {"gateway_backends": [1, 2]})


def test_good_values_pass():
    good = {
        "gateway": {
            "gateway_server_name": "api.example.net *.example.org",
            "gateway_server_allow": ["10.0.0.0/8", "fd00::/64", "192.0.2.7"],
            "gateway_read_timeout": 600,
            "gateway_connect_timeout": "500ms",
            "gateway_client_max_body_size": "1g",
            "gateway_backends": [{"address": "gpu-a01.dc1.example.net", "port": 9000, "weight": 3}, {"address": "fd00::12", "name": "b"}],
            "gateway_access_log": "/var/log/nginx/fleet/access.log",
            "gateway_server_port": "8000",
            "gateway_auth_fail_rate": "1r/s",
            "gateway_health_allow": ["10.1.0.0/16"],
        },
        "vllm": {"vllm_pip_trusted_hosts": ["cache-01:8080", "10.0.0.5"], "vllm_pip_find_links": "/srv/wheelhouse", "vllm_ip_address_allow": ["10.0.0.0/24"]},
        "plan": {"plan_host": "::1", "plan_served_model_name": "meta-llama/Llama-3.1-8B-Instruct", "plan_extra_env": {"NCCL_DEBUG": "WARN"}},
        "nvidia": {"nvidia_repo_base_url": "http://HTTPS///developer.download.nvidia.com/compute/cuda/repos"},
        "artifact_cache": {"artifact_cache_pip_download_args": ["--platform", "manylinux2014_x86_64"]},
        "bakeoff": {"bakeoff_mix": "64:16,64:512"},
        "monitoring": {
            "monitoring_scrape_interval": "5s",
            "monitoring_prometheus_listen": ":9090",
            "monitoring_alertmanager_listen": "[::1]:9093",
            "monitoring_allow": ["10.0.0.0/8", "192.0.2.7"],
            "monitoring_alert_webhooks": ["https://hooks.example.net/alerts?team=gpu"],
            "monitoring_other_groups": [],
        },
    }
    for role, values in good.items():
        assert role_inputs.role_input_problems(role, values) == [], role


# --- no false positives: defaults and the repository's inventories -------------
def _molecule_inventories(tmp):
    """(name, hosts.yml path) for each scenario that declares its inventory in molecule.yml."""
    out = []
    for scenario in sorted((ROOT / "molecule").glob("*/molecule.yml")):
        config = yaml.safe_load(scenario.read_text())
        inventory = (config.get("provisioner") or {}).get("inventory") or {}
        platforms = config.get("platforms") or []
        if not platforms:
            continue
        name = scenario.parent.name
        groups = {}
        for p in platforms:
            for g in p.get("groups") or []:
                groups.setdefault(g, {"hosts": {}})["hosts"][p["name"]] = None
        data = {"all": {"children": groups, "vars": (inventory.get("group_vars") or {}).get("all", {})}}
        for group, values in (inventory.get("group_vars") or {}).items():
            if group != "all":
                groups.setdefault(group, {"hosts": {}})["vars"] = values
        for host, values in (inventory.get("host_vars") or {}).items():
            for g in groups.values():
                if host in g["hosts"]:
                    g["hosts"][host] = values or None
        folder = Path(tmp) / name
        folder.mkdir()
        links = inventory.get("links") or {}
        for kind in ("group_vars", "host_vars"):
            if kind in links:
                (folder / kind).symlink_to((scenario.parent / links[kind]).resolve())
        text = yaml.safe_dump(data).replace("${MOLECULE_PROJECT_DIRECTORY}", str(ROOT))
        text = text.replace("${MOLECULE_EPHEMERAL_DIRECTORY}", str(tmp))
        (folder / "hosts.yml").write_text(text)
        out.append((name, str(folder / "hosts.yml")))
    return out


def _host_variables(inventory_path):
    """{host: templated variables of the roles}, as Ansible sees them on each host.

    In a process of its own (this file run as a script): templating lookups
    needs Ansible's collection loader, which this test process must not install.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT / "collections"))
    done = subprocess.run([sys.executable, __file__, inventory_path], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _dump_inventory(inventory_path):
    # Controller code, imported only in the script's own process (see above).
    from ansible.inventory.manager import InventoryManager  # noqa: PLC0415
    from ansible.parsing.dataloader import DataLoader  # noqa: PLC0415
    from ansible.template import Templar  # noqa: PLC0415
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder  # noqa: PLC0415
    from ansible.vars.manager import VariableManager  # noqa: PLC0415

    _AnsibleCollectionFinder(paths=[str(ROOT / "collections")])._install()
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[inventory_path])
    manager = VariableManager(loader=loader, inventory=inventory)
    prefixes = tuple(role + "_" for role in ROLES)
    out = {}
    for host in inventory.get_hosts():
        variables = manager.get_vars(host=host, include_hostvars=True)
        templar = Templar(loader=loader, variables=variables)
        out[host.name] = {k: templar.template(v) for k, v in variables.items() if k.startswith(prefixes)}
    print(json.dumps(out, default=str))


@pytest.fixture(scope="module")
def inventories(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inventories")
    (tmp / "gateway-tls.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (tmp / "gateway-tls.key").write_text("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    (tmp / "nvidia-repo-fingerprint").write_text("EB693B3035CD5710E231E123A4B469963BF863CC")
    saved = {k: os.environ.get(k) for k in ("MOLECULE_EPHEMERAL_DIRECTORY", "MOLECULE_PROJECT_DIRECTORY", "GPUFLEET_REPO_DIR")}
    os.environ.update(MOLECULE_EPHEMERAL_DIRECTORY=str(tmp), MOLECULE_PROJECT_DIRECTORY=str(ROOT), GPUFLEET_REPO_DIR=str(ROOT))
    try:
        sources = [(p.name, str(p)) for p in sorted((ROOT / "inventory").iterdir()) if p.is_dir()] + _molecule_inventories(tmp)
        yield {name: _host_variables(path) for name, path in sources}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _defaults(role):
    return yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}


@pytest.mark.parametrize("role", ROLES)
def test_defaults_have_no_problem(role):
    assert role_inputs.role_input_problems(role, _defaults(role)) == []


def test_the_inventories_are_all_read(inventories):
    assert {"demo", "example", "site", "vllm", "nvidia"} <= set(inventories)
    assert inventories["demo"]["gpu1"]["plan_served_model_name"] == "tiny"
    assert inventories["vllm"]["t-vllm-cache"]["artifact_cache_model_name"] == "tiny"
    assert inventories["site"]["t-site-gw1"]["gateway_tls_certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert inventories["example"]["gpu-a01.dc1.example.net"]["plan_model_config"].endswith("/models/llama-3.1-8b-instruct")


@pytest.mark.parametrize("role", ROLES)
def test_inventories_have_no_problem(inventories, role):
    for source, hosts in inventories.items():
        for host, variables in hosts.items():
            values = dict(_defaults(role))
            values.update({k: v for k, v in variables.items() if k.startswith(role + "_")})
            assert role_inputs.role_input_problems(role, values) == [], "%s/%s" % (source, host)


# --- end to end: ansible-playbook on localhost -------------------------------------
# (role, how the play runs it, tags, extra vars, variable named)
E2E = [
    ("gateway", "main", "gateway_preflight", {"gateway_server_name": "gw; location /metrics { return 200; }"}, "gateway_server_name"),
    ("gateway", "main", "gateway_preflight", {"gateway_server_allow": ["all"]}, "gateway_server_allow"),
    ("gateway", "main", "gateway_preflight", {"gateway_read_timeout": "3600s; proxy_pass http://203.0.113.9"}, "gateway_read_timeout"),
    ("gateway", "main", "gateway_preflight", {"gateway_access_log": "/etc/cron.d/gpufleet"}, "gateway_access_log"),
    ("gateway", "main", "gateway_preflight", {"gateway_backends": [{"address": "127.0.0.1", "name": "a\n    server 203.0.113.9:80"}]}, "gateway_backends"),
    ("gateway", "main", "gateway_preflight", {"gateway_https_port": 70000}, "gateway_https_port"),
    ("plan", "main", "plan", {"plan_host": "0.0.0.0"}, "plan_host"),
    ("plan", "main", "plan", {"plan_max_model_len": -5}, "plan_max_model_len"),
    ("plan", "main", "plan", {"plan_gpu_count": 1000}, "plan_gpu_count"),
    ("artifact_cache", "main", "artifact_cache_preflight", {"artifact_cache_allow": ["0.0.0.0/0"]}, "artifact_cache_allow"),
    ("artifact_cache", "main", "artifact_cache_preflight", {"artifact_cache_root": "/srv/../etc"}, "artifact_cache_root"),
    ("artifact_cache", "main", "artifact_cache_preflight", {"artifact_cache_model_name": "model\n"}, "artifact_cache_model_name"),
    ("nvidia", "main", "nvidia_preflight", {"nvidia_driver_extra_packages": ["pkg; reboot"]}, "nvidia_driver_extra_packages"),
    ("nvidia", "main", "nvidia_preflight", {"nvidia_driver_branch": "580\n"}, "nvidia_driver_branch"),
    ("bakeoff", "preflight", "", {"bakeoff_mix": "999999999:1"}, "bakeoff_mix"),
    ("watchdog", "main", "watchdog_preflight", {"watchdog_textfile_dir": "/etc/cron.d"}, "watchdog_textfile_dir"),
    ("watchdog", "main", "watchdog_preflight", {"watchdog_failures": 0}, "watchdog_failures"),
]
# What each role would write first on a host: none of it may appear.
FIRST_WRITES = [
    "/etc/nginx/conf.d/gpufleet.conf",
    "/etc/nginx/gpufleet",
    "/srv/gpufleet-cache",
    "/etc/nginx/conf.d/gpufleet-cache.conf",
    "/etc/apt/keyrings/gpufleet-nvidia-cuda.asc",
    "/etc/apt/preferences.d/gpufleet-nvidia.pref",
    "/var/lib/gpufleet",
    "/etc/gpufleet",
    "/usr/local/lib/gpufleet-watchdog",
]
PLAY = """\
- name: One role with one bad variable
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Run the role
      ansible.builtin.include_role:
        name: gpufleet.serving.{role}
        tasks_from: {tasks_from}
      tags: [always]
"""
INVENTORY = """\
all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: {python}
  children:
    gateways: {{hosts: {{localhost: }}}}
    gpu_servers: {{hosts: {{localhost: }}}}
    cache: {{hosts: {{localhost: }}}}
"""
BASE_VARS = {
    "plan_model_config": str(ROOT / "inventory" / "example" / "models" / "llama-3.1-8b-instruct"),
    "plan_gpu_profile": "h200",
    "plan_gpu_count": 2,
    "gateway_api_keys": ["e2e-key-0123456789"],
    "gateway_instances": [{"name": "0", "port": 8001}],
    "gateway_backends": [{"address": "127.0.0.1", "name": "local"}],
}


def _run_case(workdir, index, case):
    role, tasks_from, tags, extra, _variable = case
    folder = Path(workdir) / ("case%02d" % index)
    folder.mkdir()
    (folder / "play.yml").write_text(PLAY.format(role=role, tasks_from=tasks_from))
    (folder / "vars.yml").write_text(yaml.safe_dump({**BASE_VARS, **extra}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    env.update(ANSIBLE_CACHE_PLUGIN="memory", ANSIBLE_LOCAL_TEMP=str(folder / "tmp"), ANSIBLE_HOME=str(folder / "home"))
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(Path(workdir) / "hosts.yml"), str(folder / "play.yml")]
    argv += ["--check", "-e", "@" + str(folder / "vars.yml")] + (["--tags", tags] if tags else [])
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as exc:
        return 124, str(exc.stdout or "") + str(exc.stderr or "")
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def e2e_results():
    before = {p: os.path.lexists(p) for p in FIRST_WRITES}
    with tempfile.TemporaryDirectory(prefix="gpufleet-preflight-") as workdir:
        python = Path(sys.executable)
        (Path(workdir) / "hosts.yml").write_text(INVENTORY.format(python=python))
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda pair: _run_case(workdir, *pair), enumerate(E2E)))
    after = {p: os.path.lexists(p) for p in FIRST_WRITES}
    return results, before, after


def test_e2e_table_spans_roles():
    assert len(E2E) >= 8
    assert len({case[0] for case in E2E}) >= 3


@pytest.mark.parametrize("index", range(len(E2E)), ids=["%s-%s" % (c[0], c[4]) for c in E2E])
def test_e2e_play_fails_at_the_preflight_with_the_variable_named(e2e_results, index):
    results, before, after = e2e_results
    rc, output = results[index]
    variable = E2E[index][4]
    assert rc == 2, output[-3000:]
    failed = re.search(r"TASK \[([^\]]+)\][^\n]*\n(?:(?!TASK \[).*\n)*?(?:\[ERROR\]|fatal:)", output)
    assert failed and failed.group(1).endswith("Check the role's inputs"), output[-3000:]
    assert re.search(r"\b%s (must|may not|entry)" % variable, output), output[-3000:]
    recap = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=1", output)
    assert recap and recap.group(1) == "0", output[-2000:]
    assert after == before


def test_a_plan_the_planner_refuses_fails_with_its_reason(tmp_path):
    """Past the schema, the planner's own refusal reaches the play output (not a templating error)."""
    (tmp_path / "hosts.yml").write_text(INVENTORY.format(python=sys.executable))
    rc, output = _run_case(str(tmp_path), 0, ("plan", "main", "plan", {"plan_max_model_len": 9_000_000}, "plan_max_model_len"))
    assert rc == 2, output[-3000:]
    assert "Fail a host whose plan was refused" in output
    assert re.search(r"max_position_embeddings 131072 .*\(set plan_max_model_len\)", " ".join(output.split())), output[-3000:]


if __name__ == "__main__":
    _dump_inventory(sys.argv[1])
