"""The metric names of the alert rules and dashboards against a running vLLM of this scenario.

The unit tests compare them with a capture of the pinned vLLM's /metrics
(tests/fixtures/vllm-metrics); here the page comes from the first instance of
t-vllm1's plan, as the units serve it, after a completion so that its
histograms have samples. A vllm: name the rules or a dashboard use that this
vLLM does not serve fails here, and the capture is out of date as well.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import testinfra

ROOT = Path(__file__).resolve().parents[3]
FILES = ROOT / "roles" / "monitoring" / "files"
HOST = "t-vllm1"
MODEL = "tiny"
KEY_HEADER = "-H \"Authorization: Bearer $(sed -n 's/^VLLM_API_KEY=//p' /etc/vllm/instance-api-key)\""

_spec = importlib.util.spec_from_file_location("gpufleet_metric_names", ROOT / "tests" / "monitoring" / "metric_names.py")
metric_names = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(metric_names)


def used_names():
    names = {"rules": metric_names.names_in_rules(FILES / "rules" / "gpufleet.rules.yml")}
    for path in sorted((FILES / "dashboards").glob("*.json")):
        names[path.name] = metric_names.names_in_dashboard(path)
    return names


def test_rule_and_dashboard_names_are_served_by_a_running_instance():
    host = testinfra.get_host("podman://" + HOST)
    plan = json.loads(host.file("/etc/vllm/plan.json").content_string)
    port = str(plan["instances"][0]["port"])
    body = json.dumps({"model": MODEL, "prompt": "metrics", "max_tokens": 4})
    done = host.run("curl -sS --max-time 60 " + KEY_HEADER + " -H 'content-type: application/json' -d %s http://127.0.0.1:%s/v1/completions", body, port)
    assert done.rc == 0 and json.loads(done.stdout)["choices"], done.stdout + done.stderr
    page = host.run("curl -fsS --max-time 30 " + KEY_HEADER + " http://127.0.0.1:%s/metrics", port)
    assert page.rc == 0, page.stderr
    served = metric_names.names_in_exposition(page.stdout)
    assert "vllm:generation_tokens_total" in served, page.stdout[:500]
    for source, names in used_names().items():
        assert any(name.startswith("vllm:") for name in names), source
        assert metric_names.missing(names, served, "vllm:") == [], source
