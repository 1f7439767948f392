"""The fleet watched by the real Prometheus and Alertmanager (roles/monitoring) on t-site-gw1, the
monitoring host of this fleet: every target the inventory and the plans call for is up, the rules
are loaded and healthy, every metric name a rule or a dashboard uses exists in what Prometheus
scraped from this fleet (vLLM's own /metrics, the exporters; the watchdog's textfile metrics are
test_stall_fence.py's, which turns the watchdog on), and
vLLM's /metrics reach the monitoring hosts only. Cheap: reads only.

Runs after test_gateway.py and before test_site.py (file order).
"""

from __future__ import annotations

import json
import re
import sys
from urllib.parse import quote

import yaml
from conftest import ROOT, sh, wait_until

sys.path.insert(0, str(ROOT / "tests" / "monitoring"))
import metric_names

GW = "t-site-gw1"
GPUS = {"t-site-gpu1": ["0", "1"], "t-site-gpu2": ["main"]}
HOSTS = [GW, *GPUS]
RULES = ROOT / "roles" / "monitoring" / "files" / "rules"
DASHBOARDS = ROOT / "roles" / "monitoring" / "files" / "dashboards"
sys.path.insert(0, str(ROOT / "collections"))
from ansible_collections.gpufleet.serving.plugins.module_utils import fence_watchdog  # noqa: E402

# The names of the watchdog's textfile metrics, as the watchdog writes them: scraped only while it runs.
WATCHDOG_NAMES = frozenset(re.findall(r"^# TYPE (\S+) ", fence_watchdog.metrics_text([], 0.0), re.M))


def api(path):
    out = sh(GW, "curl", "-s", "--max-time", "10", "http://127.0.0.1:9090/api/v1/" + path).stdout
    reply = json.loads(out)
    assert reply["status"] == "success", reply
    return reply["data"]


def targets():
    return api("targets?state=active")["activeTargets"]


def wanted_targets():
    """(job, server, vllm_instance) of every target this fleet's inventory and plans call for."""
    wanted = {(job, host, "") for host in HOSTS for job in ("node", "nginx", "mtail")}
    wanted |= {("vllm", host, name) for host, names in GPUS.items() for name in names}
    wanted |= {("prometheus", GW, ""), ("alertmanager", GW, "")}
    return wanted


def seen(target):
    labels = target["labels"]
    return (labels["job"], labels.get("server", ""), labels.get("vllm_instance", ""))


def test_every_target_is_up():
    def all_up():
        found = targets()
        return wanted_targets() <= {seen(t) for t in found} and all(t["health"] == "up" for t in found)

    wait_until("every target is scraped and up", all_up, timeout=180, every=5)
    found = targets()
    assert {seen(t) for t in found} == wanted_targets(), sorted({seen(t) for t in found} ^ wanted_targets())
    # No DCGM exporter on hosts without NVIDIA cards (the test fleet runs vLLM's CPU build).
    assert not [t for t in found if t["labels"]["job"] == "dcgm"]


def test_the_rules_are_loaded_and_healthy():
    groups = api("rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    files = [yaml.safe_load(path.read_text()) for path in sorted(RULES.glob("*.yml"))]
    shipped = {r.get("alert") or r.get("record") for f in files for g in f["groups"] for r in g["rules"]}
    assert loaded, groups
    assert shipped <= set(loaded), sorted(shipped - set(loaded))
    bad = {name: r.get("lastError") for name, r in loaded.items() if r.get("health") != "ok"}
    assert not bad, bad


def test_every_metric_name_of_the_rules_and_dashboards_is_scraped():
    used = set()
    for path in sorted(RULES.glob("*.yml")):
        used |= metric_names.names_in_rules(path)
    for path in sorted(DASHBOARDS.glob("*.json")):
        used |= metric_names.names_in_dashboard(path)
    recorded = {r["name"] for g in api("rules")["groups"] for r in g["rules"] if r.get("type") == "recording"}
    # DCGM's names exist only where a GPU is (tests/unit checks them against the exporter's counters file);
    # the watchdog's only while it runs (test_stall_fence.py turns it on and checks them).
    wanted = {n for n in used - recorded - WATCHDOG_NAMES if not n.startswith("DCGM_")}
    assert any(n.startswith("vllm:") for n in wanted), wanted

    def missing():
        return wanted - set(api("label/__name__/values"))

    wait_until("every name is scraped", lambda: not missing(), timeout=120, every=5)


def vllm_metrics_status(source, server, name):
    url = "http://%s:9180/metrics/%s" % (server, quote(name))
    return sh(source, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", url, check=False).stdout


def test_vllm_metrics_reach_the_monitoring_hosts_only():
    assert vllm_metrics_status(GW, "t-site-gpu1", "0") == "200"
    assert vllm_metrics_status(GW, "t-site-gpu2", "main") == "200"
    # Not a monitoring host: refused by the server tier's nginx.
    assert vllm_metrics_status("t-site-gpu2", "t-site-gpu1", "0") in ("403", "000")
    # vLLM itself still listens on loopback only.
    listening = sh("t-site-gpu1", "ss", "-Hltn").stdout
    assert ":8001" in listening and "0.0.0.0:8001" not in listening and "*:8001" not in listening


def test_alertmanager_is_up_and_prometheus_sends_to_it():
    status = json.loads(sh(GW, "curl", "-s", "--max-time", "10", "http://127.0.0.1:9093/api/v2/status").stdout)
    assert status["cluster"]["status"] in ("ready", "disabled", "settling"), status
    ams = api("alertmanagers")["activeAlertmanagers"]
    assert ams and all(":9093" in a["url"] for a in ams), ams
