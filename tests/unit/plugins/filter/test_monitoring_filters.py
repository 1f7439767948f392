"""The monitoring role's filters: what they read from hostvars and the slurped plans, and what they refuse."""

from __future__ import annotations

import base64
import json

import pytest
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import import_controller_plugin

# Importing a filter plugin marks the process as the controller on 2.19 (see
# test_artifact_cache_allow.py); import_controller_plugin puts the flag back.
_FILTERS = "ansible_collections.gpufleet.serving.plugins.filter."
monitoring_prometheus = import_controller_plugin(_FILTERS + "monitoring_prometheus").monitoring_prometheus
monitoring_alertmanager = import_controller_plugin(_FILTERS + "monitoring_alertmanager").monitoring_alertmanager
monitoring_metrics_server = import_controller_plugin(_FILTERS + "monitoring_metrics_server").monitoring_metrics_server
AnsibleFilterError = import_controller_plugin("ansible.errors").AnsibleFilterError

SETTINGS = {
    "scrape_interval": "15s",
    "rules_glob": "/etc/prometheus/rules/*.yml",
    "prometheus_listen": "127.0.0.1:9090",
    "alertmanager_listen": "127.0.0.1:9093",
}
HOSTS = ["gpu1", "gpu2", "gw1", "cache1"]
SERVERS = ["gpu1", "gpu2"]
NGINX = ["gpu1", "gpu2", "gw1"]
DP = {"device": "cpu", "instances": [{"name": "0", "port": 8001}, {"name": "1", "port": 8002}], "launch": {"served_model_name": "tiny"}}
TP = {"device": "cuda", "instances": [{"name": "main", "port": 8001}], "launch": {"served_model_name": "tiny"}}


def hostvars(**extra):
    """A fake hostvars (a dict of dicts): the role's fact on gpu1 (in the run), none on gpu2 (outside it)."""
    out = {
        "gpu1": {"_monitoring_plan": DP, "ansible_host": "192.0.2.1", "gateway_api_keys": ["secret"]},
        "gpu2": {"gateway_address": "10.0.0.12"},
        "gw1": {"monitoring_address": "10.0.0.2", "gateway_address": "10.0.0.3"},
        "cache1": {"gateway_address": ""},
    }
    for name, values in extra.items():
        out[name] = dict(out[name], **values)
    return out


def slurped(host, text):
    """One result of the role's slurp loop, as Ansible registers it."""
    content = base64.b64encode(text.encode() if isinstance(text, str) else text).decode()
    return {"item": host, "content": content, "encoding": "base64", "source": "/etc/vllm/plan.json", "changed": False, "failed": False}


FAILED = {"item": "gpu2", "failed": False, "msg": "file not found: /etc/vllm/plan.json", "changed": False}


def run(hv=None, plans_read=(), hosts=None, servers=None, settings=None):
    hosts = HOSTS if hosts is None else hosts
    servers = SERVERS if servers is None else servers
    return monitoring_prometheus(list(hosts), hv or hostvars(), NGINX, list(servers), list(plans_read), "gw1", settings or SETTINGS)


def targets(result, job):
    """(target, server, vllm_instance) of a job's targets."""
    found = next((j for j in result["config"]["scrape_configs"] if j["job_name"] == job), {"static_configs": []})
    return [(t, g["labels"]["server"], g["labels"].get("vllm_instance")) for g in found["static_configs"] for t in g["targets"]]


def test_the_fact_in_hostvars_wins_over_a_slurped_plan():
    other = dict(DP, instances=[{"name": "x", "port": 8009}])
    result = run(plans_read=[slurped("gpu1", json.dumps(other)), slurped("gpu2", json.dumps(TP))])
    assert result["unknown_plans"] == []
    assert targets(result, "vllm") == [("gpu1:9180", "gpu1", "0"), ("gpu1:9180", "gpu1", "1"), ("10.0.0.12:9180", "gpu2", "main")]


def test_a_slurped_plan_serves_a_server_outside_the_run():
    result = run(plans_read=[slurped("gpu2", json.dumps(TP))])
    assert ("10.0.0.12:9180", "gpu2", "main") in targets(result, "vllm")
    # Its plan runs on CUDA: its DCGM exporter is scraped; gpu1's CPU plan has none.
    assert targets(result, "dcgm") == [("10.0.0.12:9400", "gpu2", None)]


def test_a_failed_slurp_leaves_the_servers_plan_unknown():
    result = run(plans_read=[FAILED])
    assert result["unknown_plans"] == ["gpu2"]
    assert [server for _t, server, _i in targets(result, "vllm")] == ["gpu1", "gpu1"]
    assert ("10.0.0.12:9100", "gpu2", None) in targets(result, "node")
    # A server that could not be reached (the slurp ignores it: tasks/server.yml) is the same.
    unreachable = {"item": "gpu2", "unreachable": True, "msg": "Failed to connect to the host via ssh", "changed": False}
    assert run(plans_read=[unreachable])["unknown_plans"] == ["gpu2"]
    # No slurp result at all (the loop had no item for it) is the same.
    assert run()["unknown_plans"] == ["gpu2"]
    # Nor a plan fact of none (the role could not read the file on a server of the run).
    assert run(hostvars(gpu1={"_monitoring_plan": None}), plans_read=[slurped("gpu2", json.dumps(TP))])["unknown_plans"] == ["gpu1"]


def test_a_plan_given_as_json_text_works():
    as_text = run(hostvars(gpu1={"_monitoring_plan": json.dumps(DP)}), plans_read=[slurped("gpu2", json.dumps(TP))])
    as_dict = run(plans_read=[slurped("gpu2", json.dumps(TP))])
    assert as_text == as_dict


@pytest.mark.parametrize(
    ("result", "words"),
    [
        ({"item": "gpu2", "content": "!!! not base64 !!!"}, "monitoring_prometheus: the plan file of gpu2 is not text: run the vllm role on it again"),
        ({"item": "gpu2", "content": base64.b64encode(b"\xff\xfe{}").decode()}, "the plan file of gpu2 is not text"),
        (slurped("gpu2", "<html>not json</html>"), "monitoring_prometheus: the plan file of gpu2 is not JSON: run the vllm role on it again"),
        (slurped("gpu2", json.dumps({"device": "cuda"})), "monitoring_prometheus: the plan of gpu2 has no instances list"),
        (slurped("gpu2", json.dumps(dict(TP, instances=[{"name": "main;", "port": 8001}]))), "the plan of gpu2 names an instance 'main;'"),
    ],
)
def test_a_corrupt_slurped_plan_is_named(result, words):
    with pytest.raises(AnsibleFilterError, match=words):
        run(plans_read=[result])


def test_a_corrupt_plan_fact_is_named():
    with pytest.raises(AnsibleFilterError, match="the plan file of gpu1 is not JSON"):
        run(hostvars(gpu1={"_monitoring_plan": "{"}))


def test_the_address_is_monitoring_address_else_gateway_address_else_the_name():
    result = run(plans_read=[slurped("gpu2", json.dumps(TP))])
    assert targets(result, "node") == [
        ("cache1:9100", "cache1", None),
        ("gpu1:9100", "gpu1", None),
        ("10.0.0.12:9100", "gpu2", None),
        ("10.0.0.2:9100", "gw1", None),
    ]
    # Prometheus and Alertmanager are dialled where they listen, not at the host's address.
    assert targets(result, "prometheus") == [("127.0.0.1:9090", "gw1", None)]


def test_only_the_two_address_variables_are_read():
    """A hostile value in any other host variable does not matter; one in the address variables is refused by name."""
    run(hostvars(gpu1={"ansible_host": "x\ny", "vllm_extra": "; evil"}))
    with pytest.raises(AnsibleFilterError, match=r"gw1: its monitoring_address .* '10\.0\.0\.2 evil'"):
        run(hostvars(gw1={"monitoring_address": "10.0.0.2 evil"}))


def test_servers_and_hosts_outside_the_watched_ones():
    # A GPU server that is not among the hosts watched is not read (its plan neither).
    result = run(hosts=["gpu1", "gw1"])
    assert result["unknown_plans"] == [] and {server for _t, server, _i in targets(result, "node")} == {"gpu1", "gw1"}
    with pytest.raises(AnsibleFilterError, match="monitoring_prometheus: gpu9 is not in the inventory"):
        run(hosts=["gpu1", "gpu9"])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"hosts": "gpu1"}, "must be lists"),
        ({"plans_read": None}, "must be lists"),
        ({"hv": ["gpu1"]}, "hostvars and settings must be mappings"),
        ({"settings": {"scrape_interval": "0s", "rules_glob": "/x/*.yml"}}, "monitoring_prometheus: monitoring_scrape_interval must be a duration"),
        ({"settings": dict(SETTINGS, prometheus_listen="evil:9090")}, "monitoring_prometheus: monitoring_prometheus_listen must be ADDRESS:PORT"),
    ],
)
def test_monitoring_prometheus_refusals(args, words):
    kwargs = {"hosts": HOSTS, "hv": hostvars(), "plans_read": [], "settings": SETTINGS}
    kwargs.update(args)
    with pytest.raises(AnsibleFilterError, match=words):
        monitoring_prometheus(kwargs["hosts"], kwargs["hv"], NGINX, SERVERS, kwargs["plans_read"], "gw1", kwargs["settings"])


# --- monitoring_alertmanager ----------------------------------------------------------------------


def test_monitoring_alertmanager():
    assert monitoring_alertmanager([])["receivers"] == [{"name": "gpufleet"}]
    assert monitoring_alertmanager(["https://hooks.example.net/a"])["receivers"][0]["webhook_configs"] == [
        {"url": "https://hooks.example.net/a", "send_resolved": True}
    ]
    with pytest.raises(AnsibleFilterError, match="monitoring_alertmanager: monitoring_alert_webhooks: 'file:///x' is not an http"):
        monitoring_alertmanager(["file:///x"])


# --- monitoring_metrics_server --------------------------------------------------------------------


RESOLVED = {"10.0.0.2": ["10.0.0.2"], "mon2": ["10.0.0.5", "fd00::5"]}


def test_metrics_server_on_a_gpu_server():
    out = monitoring_metrics_server(DP, RESOLVED, ["10.9.0.0/16"], 9180)
    assert out["allow"] == ["10.0.0.2", "10.0.0.5", "10.9.0.0/16", "127.0.0.1", "::1", "fd00::5"]
    assert out["server"] == {"port": 9180, "allow": out["allow"], "instances": [{"name": "0", "port": 8001}, {"name": "1", "port": 8002}]}
    assert out["cuda"] is False
    # The vllm role's plan file, as text: the same.
    assert monitoring_metrics_server(json.dumps(DP), RESOLVED, ["10.9.0.0/16"]) == out


@pytest.mark.parametrize("as_text", [False, True])
def test_metrics_server_says_whether_the_plan_runs_on_cuda(as_text):
    """The role installs the DCGM exporter where this says so, and Prometheus scrapes it where the plan says CUDA:
    a plan given as the plan file's text must give the same answer as the plan itself."""
    plan = json.dumps(TP) if as_text else TP
    out = monitoring_metrics_server(plan, RESOLVED, [])
    assert out["cuda"] is True and out["server"]["instances"] == [{"name": "main", "port": 8001}]
    prometheus = run(hostvars(gpu1={"_monitoring_plan": plan}))
    assert [server for _t, server, _i in targets(prometheus, "dcgm")] == ["gpu1"]


@pytest.mark.parametrize("plan", [None, {}, "", {"device": "cpu", "instances": []}])
def test_metrics_server_without_instances_is_none(plan):
    out = monitoring_metrics_server(plan, RESOLVED, [])
    assert out == {"allow": ["10.0.0.2", "10.0.0.5", "127.0.0.1", "::1", "fd00::5"], "server": None, "cuda": False}


@pytest.mark.parametrize(
    ("plan", "resolved", "allow", "words"),
    [
        (DP, {"mon1": []}, [], "monitoring_metrics_server: the monitoring host mon1 does not resolve on this host"),
        (DP, RESOLVED, ["0.0.0.0/0"], "monitoring_metrics_server: monitoring_allow may not hold 0.0.0.0/0"),
        (None, RESOLVED, ["10.0.0.0/8; allow all"], "monitoring_allow: '10.0.0.0/8; allow all' is not an IP address"),
        ("{", RESOLVED, [], "monitoring_metrics_server: the plan file of this host is not JSON"),
        ({"device": "cpu"}, RESOLVED, [], "the plan of this host has no instances list"),
        (dict(DP, instances=[{"name": "0\n", "port": 8001}]), RESOLVED, [], r"the plan of this host names an instance '0\\n'"),
    ],
)
def test_metrics_server_refusals(plan, resolved, allow, words):
    with pytest.raises(AnsibleFilterError, match=words):
        monitoring_metrics_server(plan, resolved, allow)
