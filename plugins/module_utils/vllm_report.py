# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What vLLM itself reports at start-up, against what the plan predicted.

vLLM logs its KV cache once its engine has measured the memory left (v1 engine,
``vllm/v1/core/kv_cache_utils.py``), in one line or two depending on the version::

    (EngineCore_DP0 pid=412) INFO 11-30 10:02:11 [kv_cache_utils.py:1087] GPU KV cache size: 29,616 tokens
    (EngineCore_DP0 pid=412) INFO 11-30 10:02:11 [kv_cache_utils.py:1091] Maximum concurrency for 512 tokens per request: 57.84x

(the CPU build logs the same words), and exports its cache configuration as the
labels of ``vllm:cache_config_info`` on ``/metrics`` (``num_gpu_blocks`` x
``block_size`` tokens). A model that does not fit ends its start with a
``ValueError`` such as "To serve at least one request with the model's max seq
len (...), (... GiB KV cache is needed, which is larger than the available KV
cache memory (... GiB)". Pure functions; the module reads the journal and
``/metrics``.
"""

from __future__ import annotations

import math
import re

DEFAULT_TOLERANCE_PCT = 10.0
# Bounds of what the module reads and checks.
MAX_INSTANCES = 256
MAX_TIMEOUT = 300
MAX_METRICS_BYTES = 16 * 1024 * 1024
MAX_RECORD_BYTES = 64 * 1024 * 1024
# Instance names as the plan gives them (they name systemd units, vllm@<name>).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


def _instances_problem(instances):
    """None when every instance has a name (each given once) and a TCP port; else the message naming the first that does not."""
    names = set()
    for position, instance in enumerate(instances):
        name, port = instance["name"], instance["port"]
        if not isinstance(name, str) or not NAME_RE.match(name):
            return "plan.instances[%d].name %r is not an instance name (1-32 letters, digits, _ or -, as in vllm@<name>)" % (position, name)
        if name in names:
            return "plan.instances[%d].name %r is given twice; plan again with gpufleet.serving.vllm_plan" % (position, name)
        names.add(name)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            return "plan.instances[%d].port must be a TCP port (1-65535), not %r" % (position, port)
    return None


def _memory_problem(memory):
    """None when the plan's KV-cache tokens and concurrency are numbers this module can compare; else the message naming the field."""
    if not isinstance(memory, dict):
        return "plan.memory must be the plan's figures (an object), not %r" % (memory,)
    tokens = memory.get("kv_tokens_per_instance")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0):
        return "plan.memory.kv_tokens_per_instance must be a whole number of tokens, not %r" % (tokens,)
    concurrency = memory.get("max_concurrency")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, (int, float)) or not math.isfinite(concurrency)):
        return "plan.memory.max_concurrency must be a finite number, not %r" % (concurrency,)
    return None


def check_plan(plan):
    """None for a plan whose instances and figures this module can check; else a message naming the field."""
    instances = plan.get("instances") if isinstance(plan, dict) else None
    if not isinstance(instances, list) or not all(isinstance(i, dict) and "name" in i and "port" in i for i in instances):
        return "plan must be a plan from gpufleet.serving.vllm_plan (instances with name and port)"
    if not instances or len(instances) > MAX_INSTANCES:
        return "plan.instances must list 1 to %d instances, not %d" % (MAX_INSTANCES, len(instances))
    return _instances_problem(instances) or _memory_problem(plan.get("memory") or {})


KV_TOKENS_RE = re.compile(r"(?:GPU |CPU |XPU |TPU )?KV cache size: ([0-9][0-9,]*) tokens")
CONCURRENCY_RE = re.compile(r"Maximum concurrency for ([0-9][0-9,]*) tokens per request: ([0-9]+(?:\.[0-9]+)?)x")
# vLLM's own words when the model, or its KV cache, does not fit.
FAILURE_RES = (
    re.compile(r"To serve at least one request with the models?'?s max seq len.*"),
    re.compile(r"No available memory for the cache blocks.*"),
    re.compile(r"Free memory on device .* is less than desired GPU memory utilization.*"),
    re.compile(r"(?:torch\.)?(?:cuda\.)?OutOfMemoryError:.*"),
    re.compile(r"CUDA out of memory.*"),
    re.compile(r"Insufficient memory.*KV cache.*", re.IGNORECASE),
)
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _int(text):
    return int(text.replace(",", ""))


def parse_log(text):
    """KV-cache tokens, maximum concurrency and a failure, as vLLM logged them (every engine's line, in order)."""
    found = {"kv_cache_tokens": [], "max_concurrency": [], "max_model_len": None, "failure": None}
    for line in text.splitlines():
        match = KV_TOKENS_RE.search(line)
        if match:
            found["kv_cache_tokens"].append(_int(match.group(1)))
        match = CONCURRENCY_RE.search(line)
        if match:
            found["max_model_len"] = _int(match.group(1))
            found["max_concurrency"].append(float(match.group(2)))
        for pattern in FAILURE_RES:
            match = pattern.search(line)
            if match:
                found["failure"] = match.group(0).strip()
                break
    return found


def parse_metrics(text):
    """KV-cache tokens from ``vllm:cache_config_info`` (num_gpu_blocks x block_size); None when absent or unset."""
    for line in text.splitlines():
        if not line.startswith("vllm:cache_config_info{"):
            continue
        labels = dict(LABEL_RE.findall(line))
        for key in ("kv_cache_size_tokens",):
            if labels.get(key, "").isdigit():
                return int(labels[key])
        blocks, size = labels.get("num_gpu_blocks", ""), labels.get("block_size", "")
        if blocks.isdigit() and size.isdigit():
            return int(blocks) * int(size)
    return None


def reported(log_text=None, metrics_text=None):
    """One instance's report: the journal's figures first (every engine of a vllm_dp instance logs; the smallest counts), then /metrics."""
    log = parse_log(log_text or "")
    tokens = min(log["kv_cache_tokens"]) if log["kv_cache_tokens"] else None
    source = "journal" if tokens is not None else None
    if tokens is None and metrics_text:
        tokens = parse_metrics(metrics_text)
        source = "metrics" if tokens is not None else None
    return {
        "kv_cache_tokens": tokens,
        "max_concurrency": min(log["max_concurrency"]) if log["max_concurrency"] else None,
        "source": source,
        "failure": log["failure"],
    }


def compare(plan, reports, tolerance_pct=DEFAULT_TOLERANCE_PCT):
    """The plan's predicted figures beside each instance's report.

    ``reports``: instance name -> ``reported()``. Returns ``{"instances": [...],
    "warnings": [...], "failures": [...], "tolerance_pct": ...}``: a report more
    than ``tolerance_pct`` below the plan is a warning naming both figures; a
    start that failed for memory is a failure quoting vLLM.
    """
    memory = plan.get("memory") or {}
    predicted_tokens = memory.get("kv_tokens_per_instance")
    predicted_concurrency = memory.get("max_concurrency")
    out = {"instances": [], "warnings": [], "failures": [], "tolerance_pct": tolerance_pct}
    for instance in plan.get("instances") or []:
        name = instance["name"]
        report = reports.get(name) or {}
        tokens = report.get("kv_cache_tokens")
        entry = {
            "name": name,
            "predicted_kv_tokens": predicted_tokens,
            "reported_kv_tokens": tokens,
            "predicted_max_concurrency": predicted_concurrency,
            "reported_max_concurrency": report.get("max_concurrency"),
            "source": report.get("source"),
            "ratio": None,
            "status": "unreported",
        }
        if report.get("failure"):
            entry["status"] = "failed"
            out["failures"].append("vllm@%s did not start: vLLM says: %s" % (name, report["failure"]))
        elif tokens is not None and predicted_tokens:
            entry["ratio"] = round(tokens / float(predicted_tokens), 4)
            shortfall = 100.0 * (1 - entry["ratio"])
            if shortfall > tolerance_pct:
                entry["status"] = "below_plan"
                out["warnings"].append(
                    "vllm@%s reports %s KV-cache tokens, %.1f%% below the plan's %s (tolerance %g%%): the plan's concurrency (%s) "
                    "may not hold; lower plan_max_model_len or plan_concurrency, or raise the overhead the planner reserves"
                    % (name, format(tokens, ","), shortfall, format(predicted_tokens, ","), tolerance_pct, predicted_concurrency)
                )
            else:
                entry["status"] = "ok"
        else:
            out["warnings"].append("vllm@%s: vLLM's KV-cache size was found neither in its journal nor on /metrics; the plan is unchecked" % name)
        out["instances"].append(entry)
    return out


def summary(check):
    """One line per instance for the play output."""
    lines = []
    for entry in check["instances"]:
        if entry["reported_kv_tokens"] is None:
            lines.append("vllm@%s: planned %s KV tokens; vLLM reported none (%s)" % (entry["name"], entry["predicted_kv_tokens"], entry["status"]))
            continue
        lines.append(
            "vllm@%s: planned %s KV tokens (%sx concurrency), vLLM reports %s (%sx) from its %s: %.1f%% of the plan, %s"
            % (
                entry["name"],
                format(entry["predicted_kv_tokens"] or 0, ","),
                entry["predicted_max_concurrency"],
                format(entry["reported_kv_tokens"], ","),
                entry["reported_max_concurrency"],
                entry["source"],
                100.0 * (entry["ratio"] or 0),
                entry["status"],
            )
        )
    return lines


def record(plan, check):
    """What /etc/vllm/plan.json holds: the plan, and vLLM's report beside it (``check``)."""
    out = dict(plan)
    out["check"] = check
    return out
