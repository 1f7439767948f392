"""monitoring_layout: Prometheus's targets from the inventory and the plans, Alertmanager's configuration, who may
scrape, and the model of the metrics server; each value checked before it reaches a file.

The files are checked by Debian 12's own promtool and amtool (`make promtool` unpacks them into .cache/promtool;
a missing binary fails these tests, as in tests/unit/test_monitoring_rules.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpufleet.serving.plugins.module_utils import monitoring_layout as ml
from ansible_collections.gpufleet.serving.plugins.module_utils import nvml_facts, vllm_planner
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import import_controller_plugin

# Ansible's own to_nice_yaml, as tasks/server.yml writes the files (imported so that is_controller stays as it was).
to_nice_yaml = import_controller_plugin("ansible.plugins.filter.core").to_nice_yaml

ROOT = Path(__file__).resolve().parents[4]
TOOLS = ROOT / ".cache" / "promtool" / "bin"
FIXTURES = ROOT / "tests" / "fixtures"
RULES_DIR = ROOT / "roles" / "monitoring" / "files" / "rules"
LAUNCH = {"served_model_name": "tiny"}

# The test fleet: gw1 runs Prometheus and the fleet tier's nginx; two GPU servers (vLLM's CPU build here, like the
# demo) behind their server tier's nginx; the artifact cache with node_exporter only.
HOSTS = ["gw1", "gpu1", "gpu2", "cache1"]
NGINX_HOSTS = {"gpu1", "gpu2", "gw1"}
HOST_VARS = {"gw1": {}, "gpu1": {"gateway_address": "10.0.0.11"}, "gpu2": {"monitoring_address": "10.0.1.12", "gateway_address": "10.0.0.12"}, "cache1": {}}
CPU_PLANS = {
    "gpu1": {"device": "cpu", "instances": [{"name": "0", "port": 8001}, {"name": "1", "port": 8002}], "launch": LAUNCH},
    "gpu2": {"device": "cpu", "instances": [{"name": "main", "port": 8001}], "launch": LAUNCH},
}
SETTINGS = {
    "scrape_interval": "15s",
    "rules_glob": "/etc/prometheus/rules/*.yml",
    "prometheus_listen": "127.0.0.1:9090",
    "alertmanager_listen": "127.0.0.1:9093",
}


def cuda_plans():
    """The planner's plans on the two-H200 capture: an 8B model data parallel (0, 1), a 70B tensor parallel (main)."""
    cards = nvml_facts.facts_from_raw(json.loads((FIXTURES / "nvml" / "h200x2-nvlink.nvml.json").read_text()), "snapshot")
    models = FIXTURES / "models"
    return {
        "gpu1": vllm_planner.plan(gpus=cards, model=str(models / "Llama-3.1-8B"), dtype="bfloat16"),
        "gpu2": vllm_planner.plan(gpus=cards, model=str(models / "Llama-3.1-70B"), dtype="bfloat16"),
    }


def fleet_config(plans=None, **settings):
    found, unknown = ml.fleet(HOSTS, HOST_VARS, NGINX_HOSTS, CPU_PLANS if plans is None else plans)
    assert unknown == []
    return ml.prometheus_config("gw1", found, dict(SETTINGS, **settings))


def jobs(config):
    """job -> [(target, labels)] of a prometheus.yml."""
    return {job["job_name"]: [(t, group["labels"]) for group in job["static_configs"] for t in group["targets"]] for job in config["scrape_configs"]}


def host(name="gpu1", address="10.0.0.11", **extra):
    return dict({"name": name, "address": address}, **extra)


def tool(name, *args):
    binary = TOOLS / name
    if not binary.is_file():
        pytest.fail("%s is missing: run `make promtool` (the unit targets of the Makefile do)" % binary.relative_to(ROOT))
    return subprocess.run([str(binary), *args], capture_output=True, text=True, check=False, timeout=120, cwd=str(ROOT))


# --- the scrape configuration of the test fleet ----------------------------------------


def test_the_test_fleet_gets_one_job_per_kind_and_one_target_per_host():
    config = fleet_config()
    assert [job["job_name"] for job in config["scrape_configs"]] == ["prometheus", "alertmanager", "node", "nginx", "mtail", "vllm"]
    found = jobs(config)
    gw1 = {"server": "gw1"}
    assert found["prometheus"] == [("127.0.0.1:9090", gw1)]
    assert found["alertmanager"] == [("127.0.0.1:9093", gw1)]
    # Hosts in name order; monitoring_address beats gateway_address beats the inventory name.
    assert found["node"] == [
        ("cache1:9100", {"server": "cache1"}),
        ("10.0.0.11:9100", {"server": "gpu1"}),
        ("10.0.1.12:9100", {"server": "gpu2"}),
        ("gw1:9100", gw1),
    ]
    assert found["nginx"] == [("10.0.0.11:9113", {"server": "gpu1"}), ("10.0.1.12:9113", {"server": "gpu2"}), ("gw1:9113", gw1)]
    assert found["mtail"] == [("10.0.0.11:3903", {"server": "gpu1"}), ("10.0.1.12:3903", {"server": "gpu2"}), ("gw1:3903", gw1)]
    assert found["vllm"] == [
        ("10.0.0.11:9180", {"server": "gpu1", "vllm_instance": "0", "__metrics_path__": "/metrics/0"}),
        ("10.0.0.11:9180", {"server": "gpu1", "vllm_instance": "1", "__metrics_path__": "/metrics/1"}),
        ("10.0.1.12:9180", {"server": "gpu2", "vllm_instance": "main", "__metrics_path__": "/metrics/main"}),
    ]
    # One target per static_config: each keeps its own labels.
    assert all(len(group["targets"]) == 1 for job in config["scrape_configs"] for group in job["static_configs"])


def test_the_whole_file():
    config = fleet_config()
    assert list(config) == ["global", "alerting", "rule_files", "scrape_configs"]
    assert config["global"] == {"scrape_interval": "15s", "scrape_timeout": "10s", "evaluation_interval": "15s"}
    assert config["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]}
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_the_ports_are_the_roles():
    """The ports the targets use are the ones vars/main.yml gives the exporters and the metrics server."""
    role_vars = yaml.safe_load((ROOT / "roles" / "monitoring" / "vars" / "main.yml").read_text())
    assert ml.PORTS["nginx"] == role_vars["_monitoring_nginx_exporter_port"]
    assert ml.PORTS["vllm"] == role_vars["_monitoring_vllm_metrics_port"]
    assert ml.PORTS["dcgm"] == role_vars["_monitoring_dcgm_port"]
    mtail_default = (ROOT / "roles" / "monitoring" / "templates" / "mtail.default.j2").read_text()
    assert "PORT=%d\n" % ml.PORTS["mtail"] in mtail_default


@pytest.mark.parametrize(
    ("interval", "timeout"),
    [("1s", "1s"), ("5s", "5s"), ("1500ms", "1500ms"), ("9s", "9s"), ("10s", "10s"), ("15s", "10s"), ("1m", "10s"), ("60m", "10s"), ("1h", "10s")],
)
def test_scrape_timeout_is_the_interval_below_ten_seconds(interval, timeout):
    config = fleet_config(scrape_interval=interval)
    assert config["global"] == {"scrape_interval": interval, "scrape_timeout": timeout, "evaluation_interval": interval}


def test_a_cuda_plan_adds_the_dcgm_exporter():
    """Real plans: the planner on the two-H200 NVML capture gives gpu1 two instances and gpu2 one."""
    plans = cuda_plans()
    assert [(i["name"], i["port"]) for i in plans["gpu1"]["instances"]] == [("0", 8001), ("1", 8002)]
    assert [(i["name"], i["port"]) for i in plans["gpu2"]["instances"]] == [("main", 8001)]
    config = fleet_config(plans)
    assert [job["job_name"] for job in config["scrape_configs"]] == ["prometheus", "alertmanager", "node", "nginx", "mtail", "dcgm", "vllm"]
    found = jobs(config)
    assert found["dcgm"] == [("10.0.0.11:9400", {"server": "gpu1"}), ("10.0.1.12:9400", {"server": "gpu2"})]
    assert [labels["vllm_instance"] for _target, labels in found["vllm"]] == ["0", "1", "main"]
    # One CUDA server, one CPU server: the dcgm job has the CUDA one only.
    mixed = jobs(fleet_config({"gpu1": plans["gpu1"], "gpu2": CPU_PLANS["gpu2"]}))
    assert mixed["dcgm"] == [("10.0.0.11:9400", {"server": "gpu1"})]


def test_a_plan_as_the_vllm_roles_json_file_is_read():
    plans = {name: json.dumps(plan) for name, plan in CPU_PLANS.items()}
    assert fleet_config(plans) == fleet_config()


def test_an_unknown_plan_leaves_out_that_servers_vllm_targets_only():
    found, unknown = ml.fleet(HOSTS, HOST_VARS, NGINX_HOSTS, {"gpu1": CPU_PLANS["gpu1"], "gpu2": None})
    assert unknown == ["gpu2"]
    config = jobs(ml.prometheus_config("gw1", found, SETTINGS))
    assert [labels["server"] for _target, labels in config["vllm"]] == ["gpu1", "gpu1"]
    assert ("10.0.1.12:9100", {"server": "gpu2"}) in config["node"]
    assert ("10.0.1.12:9113", {"server": "gpu2"}) in config["nginx"]
    # No plan at all (no vLLM anywhere): no vllm job.
    found, unknown = ml.fleet(HOSTS, HOST_VARS, NGINX_HOSTS, {"gpu1": None, "gpu2": None})
    assert unknown == ["gpu1", "gpu2"]
    assert "vllm" not in jobs(ml.prometheus_config("gw1", found, SETTINGS))


def test_a_plan_file_that_is_not_json_is_named():
    with pytest.raises(ml.MonitoringError, match="the plan file of gpu2 is not JSON"):
        ml.fleet(HOSTS, HOST_VARS, NGINX_HOSTS, {"gpu2": "{not json"})
    with pytest.raises(ml.MonitoringError, match="the plan of gpu2 has no instances list"):
        ml.fleet(HOSTS, HOST_VARS, NGINX_HOSTS, {"gpu2": {"device": "cpu"}})


def test_ipv6_targets_are_bracketed():
    found = [host("gpu1", "fd00::11", nginx=True, cuda=True, instances=[{"name": "0", "port": 8001}]), host("gw1", "gw1")]
    config = jobs(ml.prometheus_config("gw1", found, dict(SETTINGS, prometheus_listen="[::1]:9090")))
    assert config["prometheus"] == [("[::1]:9090", {"server": "gw1"})]
    for job, port in (("node", 9100), ("nginx", 9113), ("mtail", 3903), ("dcgm", 9400), ("vllm", 9180)):
        assert config[job][0][0] == "[fd00::11]:%d" % port, job
    assert config["node"][1][0] == "gw1:9100"


def test_a_host_name_with_a_trailing_dot_and_an_ipv4_address_are_addresses():
    assert ml.address_ok("gpu1.example.net.") and ml.address_ok("10.0.0.1") and ml.address_ok("fd00::1")
    assert not ml.address_ok("10.0.0") and not ml.address_ok("-gpu1") and not ml.address_ok("") and not ml.address_ok(None)


# --- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instances", "words"),
    [
        ([{"name": "0\nx", "port": 8001}], r"names an instance '0\\nx'"),
        ([{"name": "0\n", "port": 8001}], r"names an instance '0\\n'"),
        ([{"name": "0;deny", "port": 8001}], "names an instance '0;deny'"),
        ([{"name": "a b", "port": 8001}], "names an instance 'a b'"),
        ([{"name": "", "port": 8001}], "names an instance ''"),
        ([{"name": 0, "port": 8001}], "names an instance 0"),
        ([{"name": "0", "port": 80}], "gives instance 0 the port 80"),
        ([{"name": "0", "port": 65536}], "gives instance 0 the port 65536"),
        ([{"name": "0", "port": "8001"}], "gives instance 0 the port '8001'"),
        ([{"name": "0", "port": True}], "gives instance 0 the port True"),
        ([{"name": "0", "port": 8001}, {"name": "0", "port": 8002}], "repeated instance names or ports"),
        ([{"name": "0", "port": 8001}, {"name": "1", "port": 8001}], "repeated instance names or ports"),
        ([{"name": str(n), "port": 8001 + n} for n in range(65)], "repeated instance names or ports, or more than 64 instances"),
        (["0"], "names an instance None"),
    ],
)
def test_hostile_instances_are_refused_naming_the_server(instances, words):
    with pytest.raises(ml.MonitoringError, match="the plan of gpu1 (has )?" + words):
        ml.scrape_configs("gw1", [host(instances=instances)])
    with pytest.raises(ml.MonitoringError, match="the plan of gpu1 (has )?" + words):
        ml.instances_of({"instances": instances}, "gpu1")


@pytest.mark.parametrize(
    ("hosts", "words"),
    [
        ([host(address="10.0.0.11 evil")], "gpu1: its monitoring_address .* '10.0.0.11 evil' must be a host name or an IP address"),
        ([host(address="gpu1\nevil")], r"gpu1: its monitoring_address .* 'gpu1\\nevil'"),
        ([host(address="gpu1:9100")], "gpu1: its monitoring_address .* 'gpu1:9100'"),
        ([host(address="")], "gpu1: its monitoring_address .* ''"),
        ([host(address=None)], "gpu1: its monitoring_address .* None"),
        ([host(name='gpu"1')], "the inventory name 'gpu\"1' cannot be a Prometheus label value"),
        ([host(name="gpu1\n")], r"the inventory name 'gpu1\\n' cannot be"),
        ([host(name="gpu 1")], "the inventory name 'gpu 1' cannot be"),
        ([host(), host(address="10.0.0.12")], "a host is listed twice in the fleet"),
        (["gpu1"], "a fleet host must be a mapping, not 'gpu1'"),
        ([host()] * (ml.MAX_HOSTS + 1), "at most 4096 hosts"),
    ],
)
def test_hostile_hosts_are_refused_naming_them(hosts, words):
    with pytest.raises(ml.MonitoringError, match=words):
        ml.scrape_configs("gw1", hosts)


def test_a_hostile_monitor_name_is_refused():
    with pytest.raises(ml.MonitoringError, match="the monitoring host's name 'gw1\"' is not usable as a label"):
        ml.scrape_configs('gw1"', [host()])


@pytest.mark.parametrize(
    ("interval", "words"),
    [
        ("0s", "monitoring_scrape_interval must be a duration such as 15s or 1m, not '0s'"),
        ("15s\nx", r"monitoring_scrape_interval must be a duration .*, not '15s\\nx'"),
        ("15s\n", r"monitoring_scrape_interval must be a duration .*, not '15s\\n'"),
        ("15", "must be a duration"),
        ("1d", "must be a duration"),
        ("-5s", "must be a duration"),
        (15, "must be a duration"),
        ("2h", "monitoring_scrape_interval must be between 1s and 1h, not 2h"),
        ("61m", "must be between 1s and 1h, not 61m"),
        ("3601s", "must be between 1s and 1h, not 3601s"),
        ("999ms", "must be between 1s and 1h, not 999ms"),
    ],
)
def test_hostile_durations_are_refused(interval, words):
    with pytest.raises(ml.MonitoringError, match=words):
        fleet_config(scrape_interval=interval)


@pytest.mark.parametrize(
    ("key", "listen", "words"),
    [
        ("prometheus_listen", "evil:9090", "monitoring_prometheus_listen must be ADDRESS:PORT .* not 'evil:9090'"),
        ("prometheus_listen", "0.0.0.0:80", "monitoring_prometheus_listen must be .* a port from 1024 to 65535, not '0.0.0.0:80'"),
        ("prometheus_listen", "0.0.0.0:9090 --web.enable-lifecycle", "monitoring_prometheus_listen must be"),
        ("prometheus_listen", "127.0.0.1:9090\n", "monitoring_prometheus_listen must be"),
        ("prometheus_listen", "999.0.0.1:9090", "monitoring_prometheus_listen must be"),
        ("prometheus_listen", "[fd00::zz]:9090", "monitoring_prometheus_listen must be"),
        ("prometheus_listen", "127.0.0.1:99999", "monitoring_prometheus_listen must be"),
        ("prometheus_listen", "9090", "monitoring_prometheus_listen must be"),
        ("alertmanager_listen", "evil.example:9093", "monitoring_alertmanager_listen must be ADDRESS:PORT"),
        ("alertmanager_listen", "0.0.0.0:80", "monitoring_alertmanager_listen must be"),
    ],
)
def test_hostile_listen_addresses_are_refused(key, listen, words):
    with pytest.raises(ml.MonitoringError, match=words):
        fleet_config(**{key: listen})


@pytest.mark.parametrize(
    ("listen", "target"),
    [
        (":9090", "127.0.0.1:9090"),
        ("0.0.0.0:9090", "127.0.0.1:9090"),
        ("[::]:9090", "127.0.0.1:9090"),
        ("localhost:9090", "127.0.0.1:9090"),
        ("127.0.0.1:9090", "127.0.0.1:9090"),
        ("10.0.0.2:9091", "10.0.0.2:9091"),
        ("[::1]:9090", "[::1]:9090"),
        ("[fd00::2]:9093", "[fd00::2]:9093"),
    ],
)
def test_listen_target_dials_every_address_on_loopback(listen, target):
    assert ml.listen_target(listen, "monitoring_prometheus_listen") == target


def test_prometheus_scrapes_itself_and_alertmanager_where_they_listen():
    config = fleet_config(prometheus_listen=":9090", alertmanager_listen="10.0.0.2:9094")
    found = jobs(config)
    assert found["prometheus"] == [("127.0.0.1:9090", {"server": "gw1"})]
    assert found["alertmanager"] == [("10.0.0.2:9094", {"server": "gw1"})]
    assert config["alerting"]["alertmanagers"][0]["static_configs"] == [{"targets": ["10.0.0.2:9094"]}]


# --- Alertmanager -----------------------------------------------------------------------


def test_alertmanager_without_webhooks_keeps_the_alerts():
    config = ml.alertmanager_config([])
    assert config["receivers"] == [{"name": "gpufleet"}]
    assert config["route"] == {
        "receiver": "gpufleet",
        "group_by": ["alertname", "server"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
    }
    assert config["inhibit_rules"] == [
        {"source_matchers": ["severity = critical"], "target_matchers": ["severity = warning"], "equal": ["server", "vllm_instance"]}
    ]


def test_alertmanager_sends_to_each_webhook_resolved_ones_too():
    hooks = ["https://hooks.example.net/alerts?team=gpu", "http://10.0.0.9:8080/"]
    config = ml.alertmanager_config(hooks)
    assert config["receivers"] == [{"name": "gpufleet", "webhook_configs": [{"url": url, "send_resolved": True} for url in hooks]}]
    assert ml.alertmanager_config(["https://x.example/%d" % n for n in range(16)])["receivers"][0]["webhook_configs"][15]["url"] == "https://x.example/15"


@pytest.mark.parametrize(
    ("hooks", "words"),
    [
        (["file:///x"], "monitoring_alert_webhooks: 'file:///x' is not an http:// or https:// URL"),
        (["https://x.example/a b"], "'https://x.example/a b' is not an http"),
        (["https://x.example/\nsend_resolved: false"], "is not an http"),
        (['https://x.example/"'], "is not an http"),
        (["ftp://x.example/"], "is not an http"),
        ([""], "'' is not an http"),
        ([None], "None is not an http"),
        (["https://x.example/%d" % n for n in range(17)], "a list of at most 16 URLs"),
        ("https://x.example/", "a list of at most 16 URLs"),
    ],
)
def test_alertmanager_refuses_what_is_no_webhook(hooks, words):
    with pytest.raises(ml.MonitoringError, match=words):
        ml.alertmanager_config(hooks)


# --- who may scrape -----------------------------------------------------------------------


def test_allowed_networks_keep_loopback_and_each_address_once():
    resolved = {"gw1": ["10.0.0.2", "fd00::2", "10.0.0.2"], "mon2": ["10.0.0.3"]}
    extra = ["10.9.0.0/16", "10.9.1.2/16", "192.0.2.7/32", "fd00:1::/64", "10.0.0.3"]
    assert ml.allowed_networks(resolved, extra) == ["10.0.0.2", "10.0.0.3", "10.9.0.0/16", "127.0.0.1", "192.0.2.7", "::1", "fd00:1::/64", "fd00::2"]
    # No monitoring host, nothing else: loopback only.
    assert ml.allowed_networks({}, []) == ["127.0.0.1", "::1"]
    assert ml.allowed_networks(None, []) == ["127.0.0.1", "::1"]


@pytest.mark.parametrize(
    ("resolved", "extra", "words"),
    [
        ({}, ["0.0.0.0/0"], "monitoring_allow may not hold 0.0.0.0/0: that opens the metrics to every address"),
        ({}, ["::/0"], "monitoring_allow may not hold ::/0"),
        ({}, ["10.0.0.0/8; allow all"], "monitoring_allow: '10.0.0.0/8; allow all' is not an IP address or a CIDR range"),
        ({}, ["all"], "monitoring_allow: 'all' is not"),
        ({}, [None], "monitoring_allow: None is not"),
        ({}, "10.0.0.0/8", "monitoring_allow must be a list of at most 256"),
        ({}, ["10.0.0.%d" % n for n in range(257)], "monitoring_allow must be a list of at most 256"),
        ({"gw1": []}, [], "the monitoring host gw1 does not resolve on this host: set its monitoring_address"),
        ({"gw1": ["10.0.0.2"], "mon2.example.net": []}, [], "the monitoring host mon2.example.net does not resolve"),
        ({"gw1": ["10.0.0.2 evil"]}, [], "the address of gw1: '10.0.0.2 evil' is not an IP address"),
    ],
)
def test_allowed_networks_refuse_naming_the_value(resolved, extra, words):
    with pytest.raises(ml.MonitoringError, match=words):
        ml.allowed_networks(resolved, extra)


# --- the metrics server ---------------------------------------------------------------------


def test_metrics_server_model():
    allow = ml.allowed_networks({"gw1": ["10.0.0.2"]}, [])
    model = ml.metrics_server(CPU_PLANS["gpu1"]["instances"], allow)
    assert model == {"port": 9180, "allow": ["10.0.0.2", "127.0.0.1", "::1"], "instances": [{"name": "0", "port": 8001}, {"name": "1", "port": 8002}]}
    assert ml.metrics_server([{"name": "main", "port": 8001, "gpus": [0, 1]}], ["10.0.0.0/24"], port=9181) == {
        "port": 9181,
        "allow": ["10.0.0.0/24"],
        "instances": [{"name": "main", "port": 8001}],
    }


@pytest.mark.parametrize(
    ("instances", "allow", "port", "words"),
    [
        ([{"name": "0;", "port": 8001}], ["10.0.0.2"], 9180, "the plan of this host names an instance '0;'"),
        ([{"name": "0", "port": 8001}], [], 9180, "needs the addresses it is open to"),
        ([{"name": "0", "port": 8001}], ["0.0.0.0/0"], 9180, "may not hold 0.0.0.0/0"),
        ([{"name": "0", "port": 8001}], ["10.0.0.2"], 80, "the metrics port must be a number from 1024 to 65535, not 80"),
        ([{"name": "0", "port": 8001}], ["10.0.0.2"], "9180", "the metrics port must be"),
    ],
)
def test_metrics_server_refusals(instances, allow, port, words):
    with pytest.raises(ml.MonitoringError, match=words):
        ml.metrics_server(instances, allow, port)


# --- the real tools on the files ------------------------------------------------------------


def test_promtool_accepts_the_test_fleets_configuration(tmp_path):
    path = tmp_path / "prometheus.yml"
    path.write_text(to_nice_yaml(fleet_config(), indent=2, sort_keys=False))
    out = tool("promtool", "check", "config", "--syntax-only", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_accepts_every_variation_with_the_collections_rules(tmp_path):
    """CUDA plans, IPv6 targets, a short interval, an unknown plan; without --syntax-only, the rules loaded too."""
    found, _unknown = ml.fleet(HOSTS, dict(HOST_VARS, gw1={"monitoring_address": "fd00::2"}), NGINX_HOSTS, dict(cuda_plans(), gpu2=None))
    config = ml.prometheus_config("gw1", found, dict(SETTINGS, scrape_interval="5s", rules_glob=str(RULES_DIR / "*.yml"), prometheus_listen=":9090"))
    path = tmp_path / "prometheus.yml"
    path.write_text(to_nice_yaml(config, indent=2, sort_keys=False))
    out = tool("promtool", "check", "config", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 1 rule files found" in out.stdout + out.stderr


def test_promtool_refuses_a_broken_configuration(tmp_path):
    """The check above is not a no-op: a scrape timeout longer than the interval fails it."""
    config = fleet_config()
    config["global"]["scrape_timeout"] = "1m"
    path = tmp_path / "prometheus.yml"
    path.write_text(to_nice_yaml(config, indent=2, sort_keys=False))
    out = tool("promtool", "check", "config", "--syntax-only", str(path))
    assert out.returncode != 0 and "scrape timeout greater than scrape interval" in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.mark.parametrize("hooks", [[], ["https://hooks.example.net/alerts", "http://10.0.0.9:8080/x"]])
def test_amtool_accepts_the_alertmanager_configuration(tmp_path, hooks):
    path = tmp_path / "alertmanager.yml"
    path.write_text(to_nice_yaml(ml.alertmanager_config(hooks), indent=2, sort_keys=False))
    out = tool("amtool", "check-config", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Found:\n - global config\n - route\n - 1 inhibit rules\n - 1 receivers" in out.stdout
