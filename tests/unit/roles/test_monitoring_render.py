"""Render everything the monitoring role writes, for every kind of host of a test fleet, without a host.

The role's tasks are followed as Ansible runs them, with its own expressions: the preflight's set_fact
and vars (the plan, the names to resolve, who may scrape) on every host of the run, then the monitoring
host's slurp loop, its Prometheus targets and the content of prometheus.yml and alertmanager.yml, all
evaluated by Ansible's Templar from the role's defaults and vars, the collection's filters called as
functions (the test's Templar has no collection loader). The templates are rendered from the results as the
template module renders them, and checked: the nginx file's structure (no nginx in the unit tooling,
as in test_gateway_render.py; molecule/site runs the real one), the units with systemd-analyze verify,
the Prometheus and Alertmanager files with Debian 12's promtool and amtool, the mtail checker run with
the real mtail on the real program (`make promtool` unpacks the three; a missing one fails).

The role reads no distribution fact, so these renders are what a Debian 12 or Ubuntu 22.04/24.04 host
gets (roles/monitoring/meta/main.yml).
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import holds, import_controller_plugin, load_trusted, trust_as_template
from ansible_collections.gpufleet.serving.tests.unit.roles.test_gateway_render import blocks, server_block

# Importing a filter plugin marks the process as the controller on 2.19 (see
# tests/unit/plugins/filter/test_artifact_cache_allow.py); import_controller_plugin puts the flag back.
_FILTERS = "ansible_collections.gpufleet.serving.plugins.filter."
FILTERS = {
    "_gpufleet_" + name: getattr(import_controller_plugin(_FILTERS + name), name)
    for name in ("monitoring_prometheus", "monitoring_alertmanager", "monitoring_metrics_server")
}

AnsibleError = import_controller_plugin("ansible.errors").AnsibleError

ROOT = Path(__file__).resolve().parents[3]
ROLE = ROOT / "roles" / "monitoring"
TOOLS = ROOT / ".cache" / "promtool" / "bin"
LOADER = DataLoader()

# The test fleet: gw1 runs the fleet tier's nginx, Prometheus and Alertmanager; gpu1 (data parallel, two
# instances) and gpu2 (tensor parallel, one) run vLLM behind their server tier's nginx; cache1 is the
# artifact cache (node_exporter only).
ALL = ["gpu1", "gpu2", "gw1", "cache1"]
GROUPS = {"all": ALL, "ungrouped": [], "gpu_servers": ["gpu1", "gpu2"], "gateways": ["gw1"], "monitoring": ["gw1"], "cache": ["cache1"]}
INVENTORY = {"gpu1": {"gateway_address": "10.0.0.11"}, "gpu2": {}, "gw1": {"monitoring_address": "10.0.0.2"}, "cache1": {}}
LAUNCH = {"served_model_name": "tiny"}
PLANS = {
    "gpu1": {"device": "cpu", "instances": [{"name": "0", "port": 8001, "gpus": [0]}, {"name": "1", "port": 8002, "gpus": [1]}], "launch": LAUNCH},
    "gpu2": {"device": "cpu", "instances": [{"name": "main", "port": 8001, "gpus": [0, 1]}], "launch": LAUNCH},
}
CUDA_PLANS = {name: dict(plan, device="cuda") for name, plan in PLANS.items()}
# What resolve_names answers on every host for the monitoring host's address.
RESOLVED = {"10.0.0.2": ["10.0.0.2"], "gw1": ["10.0.0.2", "fd00::2"]}
ALLOW = ["10.0.0.2", "127.0.0.1", "::1"]


def load(rel):
    return load_trusted(LOADER, str(ROLE / rel))


def call_filters(text):
    """The role's expression with each collection filter called as a function: `X | gpufleet.serving.f(a)` -> `_gpufleet_f(X, a)`."""
    operand = r"(\((?:[^()]|\([^()]*\))*\)|[\w.\[\]']+)"
    text = re.sub(operand + r"\s*\|\s*gpufleet\.serving\.(\w+)\(", lambda m: "_gpufleet_%s(%s, " % (m.group(2), m.group(1)), text)
    text = re.sub(operand + r"\s*\|\s*gpufleet\.serving\.(\w+)\b", lambda m: "_gpufleet_%s(%s)" % (m.group(2), m.group(1)), text)
    assert "gpufleet.serving." not in text, text
    return text


def evaluate(variables, expression):
    return Templar(loader=LOADER, variables=variables).template(trust_as_template(call_filters(expression)))


def condition(variables, when):
    return holds(Templar(loader=LOADER, variables=variables), trust_as_template(call_filters(when)))


def tasks(entries):
    """The tasks of a task file, those of its blocks included."""
    for entry in entries:
        yield from tasks(entry["block"]) if "block" in entry else [entry]


def task(rel, test):
    """The one task of tasks/`rel` for which test(task) holds."""
    (found,) = [t for t in tasks(load("tasks/" + rel)) if test(t)]
    return found


def registering(rel, name):
    return task(rel, lambda t: t.get("register") == name)


def setting(rel, name):
    return task(rel, lambda t: name in (t.get("ansible.builtin.set_fact") or {}))


def including(name):
    return task("main.yml", lambda t: (t.get("ansible.builtin.include_tasks") or {}).get("file") == name)


def writing(rel, src):
    """The template (by its src) or copy (by its src, or its dest for content) task of tasks/`rel`."""
    return task(rel, lambda t: src in ((t.get("ansible.builtin.template") or {}).get("src", ""), (t.get("ansible.builtin.copy") or {}).get("dest", "")))


def slurp(text):
    """A slurp result as Ansible registers it: the file's content, or the failure failed_when turns off."""
    if text is None:
        return {"failed": False, "msg": "file not found: /etc/vllm/plan.json", "changed": False}
    return {"content": base64.b64encode(text.encode()).decode(), "encoding": "base64", "source": "/etc/vllm/plan.json", "changed": False}


def role_vars(host, play_hosts, facts, **params):
    """What the role sees on `host`: defaults < inventory < role vars < role params (site.yml's), with the magic variables."""
    variables = dict(load("defaults/main.yml"))
    variables.update(INVENTORY[host])
    variables.update(load("vars/main.yml"))
    variables.update(params)
    variables.update(facts.get(host, {}))
    variables.update(
        FILTERS,
        inventory_hostname=host,
        groups=GROUPS,
        hostvars={name: dict(INVENTORY[name], inventory_hostname=name, **facts.get(name, {})) for name in ALL},
        ansible_play_hosts_all=list(play_hosts),
        ansible_managed="Ansible managed",
    )
    return variables


def preflight(variables, plan_file):
    """tasks/preflight.yml after its input check: the facts it sets."""
    read = registering("preflight.yml", "__monitoring_plan_file")
    variables["__monitoring_plan_file"] = slurp(plan_file) if condition(variables, read["when"]) else {"skipped": True, "changed": False}
    keep = setting("preflight.yml", "_monitoring_plan")
    if condition(variables, keep["when"]):
        variables["_monitoring_plan"] = evaluate(variables, keep["ansible.builtin.set_fact"]["_monitoring_plan"])
    resolve = registering("preflight.yml", "__monitoring_resolve")
    local = dict(variables, **resolve["vars"])
    if condition(local, resolve["when"]):
        names = evaluate(local, resolve["gpufleet.serving.resolve_names"]["names"])
        variables["__monitoring_resolve"] = {"addresses": {name: RESOLVED.get(name, []) for name in names}, "changed": False}
    else:
        variables["__monitoring_resolve"] = {"skipped": True, "changed": False}
    access = setting("preflight.yml", "_monitoring_access")
    variables["_monitoring_access"] = evaluate(variables, access["ansible.builtin.set_fact"]["_monitoring_access"])
    return {key: variables[key] for key in ("_monitoring_plan", "_monitoring_access") if key in variables}


def server(variables, plan_files):
    """tasks/server.yml up to the files: the slurp loop over the servers outside the run, then the targets."""
    read = registering("server.yml", "__monitoring_remote_plans")
    variables["__monitoring_remote_plans"] = {"results": [dict(slurp(plan_files.get(item)), item=item) for item in evaluate(variables, read["loop"])]}
    targets = setting("server.yml", "_monitoring_prometheus")
    variables["_monitoring_prometheus"] = evaluate(variables, targets["ansible.builtin.set_fact"]["_monitoring_prometheus"])
    return variables


def run(play_hosts=None, site=True, plans=None, plan_files=None, **params):
    """The role on the hosts of a run: host -> the variables its templates see after preflight (and server.yml on gw1).

    site: monitoring_plan as site.yml passes it (the plan role's gpufleet_plan); else the role's default ({}),
    and each server's plan is read from the plan file the vllm role left (plan_files: host -> text or None).
    play_hosts and plans default to ALL and PLANS.
    """
    play_hosts = ALL if play_hosts is None else play_hosts
    plans = PLANS if plans is None else plans
    plan_files = {name: json.dumps(plan) for name, plan in plans.items()} if plan_files is None else plan_files
    facts, out = {}, {}
    for host in play_hosts:
        own = dict(params)
        if site:
            own["monitoring_plan"] = plans.get(host, {}) if host in GROUPS["gpu_servers"] else {}
        facts[host] = preflight(role_vars(host, play_hosts, facts, **own), plan_files.get(host))
    for host in play_hosts:
        own = dict(params)
        if site:
            own["monitoring_plan"] = plans.get(host, {}) if host in GROUPS["gpu_servers"] else {}
        variables = role_vars(host, play_hosts, facts, **own)
        if condition(variables, including("server.yml")["when"]):
            server(variables, plan_files)
        out[host] = variables
    return out


def render(name, variables):
    """templates/`name` as the template module renders it: trim_blocks on, a `#jinja2:` first line's overrides applied."""
    text = (ROLE / "templates" / name).read_text()
    overrides = {"trim_blocks": True, "lstrip_blocks": False}
    if text.startswith("#jinja2:"):
        header, text = text.split("\n", 1)
        for pair in header[len("#jinja2:") :].split(","):
            key, value = pair.split(":", 1)
            overrides[key.strip()] = {"True": True, "False": False}[value.strip()]
    engine = Templar(loader=LOADER, variables=variables).copy_with_new_env(searchpath=[str(ROLE / "templates")])
    return engine.template(trust_as_template(text), escape_backslashes=False, overrides=overrides)


def content(variables, rel, dest_var):
    """The content a copy task of tasks/`rel` writes to {{ dest_var }}."""
    copy = writing(rel, "{{ %s }}" % dest_var)["ansible.builtin.copy"]
    return evaluate(variables, copy["content"])


def tool(name, *args):
    binary = TOOLS / name
    if not binary.is_file():
        pytest.fail("%s is missing: run `make promtool` (the unit targets of the Makefile do)" % binary.relative_to(ROOT))
    return subprocess.run([str(binary), *args], capture_output=True, text=True, check=False, timeout=120, cwd=str(ROOT))


def values(text, key):
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def environment_file(text):
    """KEY -> value of an EnvironmentFile= file, as systemd reads it (one level of double quotes removed)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _sep, value = line.partition("=")
            out[key] = value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value
    return out


def verify_units(directory, unit):
    env = {"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(directory / unit)], capture_output=True, text=True, check=False, cwd=directory, env=env, timeout=60
    )
    return out.returncode, out.stderr.strip()


# --- what the role works out ---------------------------------------------------------------------


def test_the_hosts_and_their_parts():
    fleet = run()
    assert evaluate(fleet["gw1"], "{{ _monitoring_hosts }}") == ["gpu1", "gpu2", "gw1", "cache1"]
    assert evaluate(fleet["gw1"], "{{ _monitoring_nginx_hosts }}") == ["gpu1", "gpu2", "gw1"]
    parts = {
        host: [name for name in ("exporters.yml", "nginx.yml", "dcgm.yml", "server.yml") if condition(fleet[host], including(name).get("when", "true"))]
        for host in ALL
    }
    assert parts == {
        "gpu1": ["exporters.yml", "nginx.yml"],
        "gpu2": ["exporters.yml", "nginx.yml"],
        "gw1": ["exporters.yml", "nginx.yml", "server.yml"],
        "cache1": ["exporters.yml"],
    }
    services = {host: evaluate(fleet[host], "{{ _monitoring_exporter_services }}") for host in ALL}
    assert services["cache1"] == ["prometheus-node-exporter"]
    assert services["gpu1"] == services["gw1"] == ["prometheus-node-exporter", "prometheus-nginx-exporter", "mtail"]


def test_without_a_cache_group_the_other_hosts_are_left_out():
    variables = run(play_hosts=["gpu1", "gpu2", "gw1"])["gw1"]
    variables["groups"] = {key: value for key, value in GROUPS.items() if key != "cache"}
    assert evaluate(variables, "{{ _monitoring_hosts }}") == ["gpu1", "gpu2", "gw1"]


@pytest.mark.parametrize("site", [True, False])
def test_the_dcgm_exporter_goes_where_prometheus_scrapes_it(site):
    """A CUDA plan, from site.yml's gpufleet_plan or the plan file the vllm role left (JSON text): the same answer on
    the server (dcgm.yml included) and on the monitoring host (the dcgm job)."""
    fleet = run(site=site, plans=CUDA_PLANS)
    dcgm = including("dcgm.yml")["when"]
    assert [host for host in ALL if condition(fleet[host], dcgm)] == ["gpu1", "gpu2"]
    jobs = {job["job_name"]: job for job in fleet["gw1"]["_monitoring_prometheus"]["config"]["scrape_configs"]}
    assert [group["labels"]["server"] for group in jobs["dcgm"]["static_configs"]] == ["gpu1", "gpu2"]
    # monitoring_dcgm false: not installed.
    assert not condition(dict(fleet["gpu1"], monitoring_dcgm=False), dcgm)
    # A CPU plan: neither.
    cpu = run(site=site)
    assert [host for host in ALL if condition(cpu[host], dcgm)] == []


def test_the_monitoring_hosts_address_is_resolved_on_every_host():
    resolve = registering("preflight.yml", "__monitoring_resolve")
    fleet = run()
    for host in ALL:
        assert evaluate(dict(fleet[host], **resolve["vars"]), resolve["gpufleet.serving.resolve_names"]["names"]) == ["10.0.0.2"]
        assert fleet[host]["_monitoring_access"]["allow"] == ALLOW
    # Without monitoring_address, its gateway_address; without either, its name.
    inventory = dict(INVENTORY, gw1={"gateway_address": "10.0.0.3"})
    variables = dict(fleet["gpu1"], hostvars={name: dict(own, inventory_hostname=name) for name, own in inventory.items()})
    assert evaluate(dict(variables, **resolve["vars"]), resolve["gpufleet.serving.resolve_names"]["names"]) == ["10.0.0.3"]
    variables["hostvars"]["gw1"] = {"inventory_hostname": "gw1"}
    assert evaluate(dict(variables, **resolve["vars"]), resolve["gpufleet.serving.resolve_names"]["names"]) == ["gw1"]
    # No monitoring host: the exporters take loopback only.
    variables["groups"] = dict(GROUPS, monitoring=[])
    assert evaluate(dict(variables, **resolve["vars"]), resolve["gpufleet.serving.resolve_names"]["names"]) == []


def test_a_monitoring_host_that_does_not_resolve_stops_the_preflight():
    variables = run()["gpu1"]
    variables["__monitoring_resolve"] = {"addresses": {"10.0.0.2": [], "gw1": []}}
    access = setting("preflight.yml", "_monitoring_access")["ansible.builtin.set_fact"]["_monitoring_access"]
    with pytest.raises(AnsibleError, match=r"the monitoring host 10\.0\.0\.2 does not resolve on this host"):
        evaluate(variables, access)


# --- nginx --------------------------------------------------------------------------------------


def nginx_conf(host, **kwargs):
    return render("gpufleet-monitoring.conf.j2", run(**kwargs)[host])


@pytest.mark.parametrize("host", ["gpu1", "gpu2", "gw1"])
def test_nginx_file_header_and_braces(host):
    text = nginx_conf(host)
    assert text.startswith("#\n# Ansible managed\n#\n# gpufleet.serving monitoring on %s " % host)
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert code.count("{") == code.count("}")
    assert "{{" not in text and "{%" not in text and "jinja2" not in text
    # Every directive ends with ';' or opens or closes a block.
    for line in code.splitlines():
        assert not line.strip() or line.rstrip().endswith((";", "{", "}")), line


@pytest.mark.parametrize("host", ["gpu1", "gpu2", "gw1"])
def test_stub_status_on_loopback_always(host):
    text = nginx_conf(host)
    stub = server_block(text, 8090)
    assert re.findall(r"listen (.*);", stub) == ["127.0.0.1:8090"]
    assert re.search(r"location = /stub_status \{\s+stub_status;\s+\}", stub)
    assert re.search(r"location / \{\s+return 404;\s+\}", stub)
    assert "access_log off;" in stub and "server_tokens off;" in stub


def test_the_gateway_has_no_metrics_server():
    text = nginx_conf("gw1")
    assert len(blocks(text, "server")) == 1
    assert "9180" not in text and "allow" not in text and "proxy_pass" not in text


@pytest.mark.parametrize(("host", "instances"), [("gpu1", [("0", 8001), ("1", 8002)]), ("gpu2", [("main", 8001)])])
def test_each_instances_metrics_for_the_monitoring_hosts_only(host, instances):
    text = nginx_conf(host, monitoring_allow=["10.9.0.0/16"])
    assert len(blocks(text, "server")) == 2
    metrics = server_block(text, 9180)
    assert re.findall(r"listen (.*);", metrics) == ["9180"]
    lines = [line.strip() for line in metrics.splitlines()]
    allows = [line for line in lines if line.startswith(("allow ", "deny "))]
    assert allows == ["allow 10.0.0.2;", "allow 10.9.0.0/16;", "allow 127.0.0.1;", "allow ::1;", "deny all;"]
    assert lines.index("deny all;") < min(i for i, line in enumerate(lines) if line.startswith("location"))
    found = re.findall(r"location = /metrics/(\S+) \{\s+proxy_pass http://127\.0\.0\.1:(\d+)/metrics;", metrics)
    assert [(name, int(port)) for name, port in found] == instances
    assert metrics.count("location = ") == len(instances)
    assert re.search(r"location / \{\s+return 404;\s+\}", metrics)
    assert "access_log off;" in metrics


def test_a_server_without_a_plan_serves_no_metrics():
    """The plan file unreadable (the vllm role never ran): stub_status only, and the server's vLLM targets are unknown."""
    fleet = run(site=False, plan_files={"gpu1": json.dumps(PLANS["gpu1"]), "gpu2": None})
    # The preflight's `none`: None on ansible-core 2.19, '' before (its templating renders None as '').
    assert fleet["gpu2"]["_monitoring_plan"] in (None, "") and fleet["gpu2"]["_monitoring_access"]["server"] is None
    assert "9180" not in render("gpufleet-monitoring.conf.j2", fleet["gpu2"])
    assert fleet["gw1"]["_monitoring_prometheus"]["unknown_plans"] == ["gpu2"]


def test_the_nginx_file_is_checked_before_it_is_written():
    write = writing("nginx.yml", "gpufleet-monitoring.conf.j2")["ansible.builtin.template"]
    assert write["validate"] == "{{ _monitoring_nginx_validate }} %s {{ _monitoring_nginx_file }}"
    variables = load("vars/main.yml")
    assert variables["_monitoring_nginx_file"] == "/etc/nginx/conf.d/gpufleet-monitoring.conf"
    assert variables["_monitoring_nginx_validate"] == load_trusted(LOADER, str(ROOT / "roles" / "gateway" / "vars" / "main.yml"))["_gateway_validate"]


# --- the exporters' files ------------------------------------------------------------------------


@pytest.mark.parametrize("host", ALL)
def test_each_exporter_takes_the_monitoring_hosts_and_loopback_only(host, tmp_path):
    variables = run()[host]
    for service in evaluate(variables, "{{ _monitoring_exporter_services }}"):
        text = render("exporter-access.conf.j2", dict(variables, _monitoring_service=service))
        assert text.startswith("#\n# Ansible managed\n#\n# %s takes connections" % service)
        assert [line for line in text.splitlines() if not line.startswith("#")] == ["[Service]", "IPAddressDeny=any", "IPAddressAllow=" + " ".join(ALLOW)]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_reads_the_exporters_drop_in(tmp_path):
    """The drop-in on a stand-in for Debian's unit (its ExecStart= a binary that exists here)."""
    (tmp_path / "prometheus-node-exporter.service").write_text("[Unit]\nDescription=stand-in\n[Service]\nExecStart=%s\n" % shutil.which("true"))
    dropin = tmp_path / "prometheus-node-exporter.service.d"
    dropin.mkdir()
    text = render("exporter-access.conf.j2", dict(run()["gpu1"], _monitoring_service="prometheus-node-exporter"))
    (dropin / "gpufleet-access.conf").write_text(text)
    assert verify_units(tmp_path, "prometheus-node-exporter.service") == (0, "")
    # The check reads the drop-in: a misspelt key in it is reported.
    (dropin / "gpufleet-access.conf").write_text(text.replace("IPAddressDeny=", "IPAdressDeny="))
    assert "IPAdressDeny" in verify_units(tmp_path, "prometheus-node-exporter.service")[1]


def test_the_nginx_exporter_reads_the_stub_status():
    env = environment_file(render("prometheus-nginx-exporter.default.j2", run()["gpu1"]))
    assert env == {"ARGS": "-nginx.scrape-uri=http://127.0.0.1:8090/stub_status -web.listen-address=:9113"}


def test_mtail_reads_the_gateways_access_log():
    text = render("mtail.default.j2", run()["gw1"])
    assert environment_file(text) == {"HOST": "", "PORT": "3903", "LOGS": "/var/log/nginx/gpufleet-access.log", "EXTRA_ARGS": ""}
    gateway = load_trusted(LOADER, str(ROOT / "roles" / "gateway" / "defaults" / "main.yml"))
    assert load("defaults/main.yml")["monitoring_access_log"] == gateway["gateway_access_log"]
    other = render("mtail.default.j2", run(monitoring_access_log="/var/log/nginx/other.log")["gw1"])
    assert environment_file(other)["LOGS"] == "/var/log/nginx/other.log"


# --- mtail's program checker ----------------------------------------------------------------------


@pytest.fixture
def mtail_check(tmp_path):
    mtail = TOOLS / "mtail"
    if not mtail.is_file():
        pytest.fail("%s is missing: run `make promtool` (the unit targets of the Makefile do)" % mtail.relative_to(ROOT))
    script = tmp_path / "gpufleet-mtail-check"
    script.write_text(render("mtail-check.sh.j2", dict(run()["gpu1"], _monitoring_mtail_binary=str(mtail))))
    script.chmod(0o755)
    return script


def check(script, *args, scratch=None):
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(scratch or script.parent)}
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, check=False, timeout=120, env=env)


def test_mtail_check_renders_the_installed_binary():
    text = render("mtail-check.sh.j2", run()["gpu1"])
    assert text.startswith("#!/bin/sh\n#\n# Ansible managed\n#\n")
    assert "timeout 60 /usr/bin/mtail --compile_only " in text
    assert "{{" not in text


def test_mtail_check_passes_the_roles_program(mtail_check, tmp_path):
    # The file as the copy module stages it: any name, not *.mtail.
    staged = tmp_path / "tmpabc123"
    staged.write_text((ROLE / "files" / "mtail" / "gpufleet-nginx.mtail").read_text())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = check(mtail_check, staged, scratch=scratch)
    assert out.returncode == 0, out.stderr
    assert list(scratch.iterdir()) == []  # its staged copy removed


def test_mtail_check_refuses_a_broken_program(mtail_check, tmp_path):
    broken = tmp_path / "tmpbroken"
    broken.write_text((ROLE / "files" / "mtail" / "gpufleet-nginx.mtail").read_text() + "\nthis is not mtail {\n")
    out = check(mtail_check, broken)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip() and "check.mtail" in out.stderr


def test_mtail_check_usage(mtail_check, tmp_path):
    assert check(mtail_check).returncode == 2
    assert check(mtail_check, tmp_path / "missing").returncode == 2
    assert check(mtail_check, "a", "b").returncode == 2


def test_the_program_is_installed_through_the_checker():
    copy = writing("exporters.yml", "{{ _monitoring_mtail_dir }}/{{ _monitoring_mtail_program }}")["ansible.builtin.copy"]
    assert copy["validate"] == "{{ _monitoring_mtail_check }} %s"
    assert (ROLE / "files" / "mtail" / load("vars/main.yml")["_monitoring_mtail_program"]).is_file()


# --- DCGM ------------------------------------------------------------------------------------------


def dcgm_unit(**overrides):
    return render("gpufleet-dcgm-exporter.service.j2", dict(run(plans=CUDA_PLANS)["gpu1"], **overrides))


def test_the_dcgm_unit():
    unit = dcgm_unit()
    assert values(unit, "ExecStart") == ["/usr/bin/dcgm-exporter --collectors /etc/gpufleet/dcgm-exporter/counters.csv --address :9400"]
    assert values(unit, "IPAddressDeny") == ["any"] and values(unit, "IPAddressAllow") == [" ".join(ALLOW)]
    for key, value in [("Restart", "on-failure"), ("NoNewPrivileges", "true"), ("ProtectSystem", "strict"), ("ProtectHome", "true"), ("PrivateTmp", "true")]:
        assert values(unit, key) == [value], key
    assert values(unit, "WantedBy") == ["multi-user.target"]
    assert "{{" not in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_dcgm_unit(tmp_path):
    # The exporter's binary is NVIDIA's (not here): one that exists stands in for it.
    (tmp_path / "gpufleet-dcgm-exporter.service").write_text(dcgm_unit(_monitoring_dcgm_binary=shutil.which("true")))
    assert verify_units(tmp_path, "gpufleet-dcgm-exporter.service") == (0, "")


def test_the_dcgm_counters_file_is_the_units():
    copy = writing("dcgm.yml", "{{ _monitoring_dcgm_dir }}/counters.csv")["ansible.builtin.copy"]
    assert copy["src"] == "dcgm-counters.csv" and (ROLE / "files" / "dcgm-counters.csv").is_file()
    assert "--collectors /etc/gpufleet/dcgm-exporter/counters.csv" in dcgm_unit()


# --- Prometheus and Alertmanager -------------------------------------------------------------------


def test_prometheus_and_alertmanager_command_lines():
    variables = run()["gw1"]
    prometheus = environment_file(render("prometheus.default.j2", variables))
    assert shlex.split(prometheus["ARGS"]) == ["--web.listen-address=127.0.0.1:9090", "--storage.tsdb.retention.time=15d"]
    alertmanager = environment_file(render("prometheus-alertmanager.default.j2", variables))
    assert shlex.split(alertmanager["ARGS"]) == ["--web.listen-address=127.0.0.1:9093", "--cluster.listen-address="]
    other = run(monitoring_prometheus_listen=":9091", monitoring_alertmanager_listen="[::1]:9094", monitoring_retention="30d")["gw1"]
    assert shlex.split(environment_file(render("prometheus.default.j2", other))["ARGS"]) == ["--web.listen-address=:9091", "--storage.tsdb.retention.time=30d"]
    assert shlex.split(environment_file(render("prometheus-alertmanager.default.j2", other))["ARGS"])[0] == "--web.listen-address=[::1]:9094"
    # The readiness check dials where Prometheus listens.
    ready = task("server.yml", lambda t: "ansible.builtin.uri" in t)["ansible.builtin.uri"]["url"]
    assert evaluate(variables, ready) == "http://127.0.0.1:9090/-/ready"
    assert evaluate(other, ready) == "http://127.0.0.1:9091/-/ready"


def test_the_prometheus_file_of_the_test_fleet(tmp_path):
    variables = run()["gw1"]
    text = content(variables, "server.yml", "_monitoring_prometheus_config")
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    out = tool("promtool", "check", "config", "--syntax-only", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    vllm = re.findall(r"server: (\S+)\n\s+vllm_instance: (\S+)\n\s+__metrics_path__: (\S+)", text)
    assert vllm == [("gpu1", "'0'", "/metrics/0"), ("gpu1", "'1'", "/metrics/1"), ("gpu2", "main", "/metrics/main")]
    assert "- 10.0.0.11:9180" in text and "- gpu2:9180" in text and "- 10.0.0.2:9100" in text and "- cache1:9100" in text
    assert "rule_files:\n- /etc/prometheus/rules/*.yml\n" in text


def test_a_limited_run_reads_the_plans_of_the_servers_outside_it():
    """--limit gw1 (or add_servers.yml without the old servers): the same targets, from the plan files on the servers."""
    whole = run()["gw1"]["_monitoring_prometheus"]
    limited = run(play_hosts=["gw1", "cache1"])["gw1"]
    assert sorted(r["item"] for r in limited["__monitoring_remote_plans"]["results"]) == ["gpu1", "gpu2"]
    assert limited["_monitoring_prometheus"] == whole
    # One of them cannot be read (or reached): its vLLM targets only are left out, and the play says so.
    partial = run(play_hosts=["gw1", "cache1"], plan_files={"gpu1": json.dumps(PLANS["gpu1"])})["gw1"]
    assert partial["_monitoring_prometheus"]["unknown_plans"] == ["gpu2"]
    say = task("server.yml", lambda t: "ansible.builtin.debug" in t)
    assert condition(partial, say["when"]) and not condition(dict(limited), say["when"])
    assert evaluate(partial, say["ansible.builtin.debug"]["msg"]).startswith("No plan could be read from gpu2: their vLLM instances are left out")


def test_an_unreachable_server_outside_the_run_does_not_stop_the_monitoring_host():
    """A delegated loop item that is unreachable makes the whole task unreachable for the monitoring host unless
    the task ignores it; the role promises the server's vLLM targets are left out, not that Prometheus is left alone."""
    read = registering("server.yml", "__monitoring_remote_plans")
    assert read["delegate_to"] == "{{ item }}" and read["failed_when"] is False and read["ignore_unreachable"] is True


@pytest.mark.parametrize("hooks", [[], ["https://hooks.example.net/alerts"]])
def test_the_alertmanager_file(tmp_path, hooks):
    variables = run(monitoring_alert_webhooks=hooks)["gw1"]
    text = content(variables, "server.yml", "_monitoring_alertmanager_config")
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    out = tool("amtool", "check-config", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert ("url: https://hooks.example.net/alerts" in text) == bool(hooks)


def test_the_files_are_checked_by_the_packaged_tools():
    checks = {
        "{{ _monitoring_prometheus_config }}": "{{ _monitoring_promtool }} check config %s",
        "{{ _monitoring_alertmanager_config }}": "{{ _monitoring_amtool }} check-config %s",
        "{{ _monitoring_rules_dir }}/gpufleet.rules.yml": "{{ _monitoring_promtool }} check rules %s",
    }
    for dest, validate in checks.items():
        assert writing("server.yml", dest)["ansible.builtin.copy"]["validate"] == validate, dest


def test_every_template_is_rendered_here():
    """A template added to the role without a render test here fails."""
    rendered = {
        "gpufleet-monitoring.conf.j2",
        "exporter-access.conf.j2",
        "mtail.default.j2",
        "prometheus-nginx-exporter.default.j2",
        "prometheus.default.j2",
        "prometheus-alertmanager.default.j2",
        "gpufleet-dcgm-exporter.service.j2",
        "mtail-check.sh.j2",
    }
    assert {path.name for path in (ROLE / "templates").iterdir()} == rendered
    text = Path(__file__).read_text()
    for name in rendered:
        assert 'render("%s"' % name in text, name
