# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Measure one box's candidate topologies without provisioning it.

On a machine where vLLM is installed (no systemd, nginx or Ansible needed),
``run`` plans each candidate topology with the collection's planner, starts the
planned instances as plain processes with the argument vectors and environments
of the plan (``vllm_planner.plan`` builds them with ``vllm_launch.build_launch``,
as for the vllm role), waits until each answers a one-token completion (the
vllm role's readiness check), drives them with the load generator
(``loadgen``: several data-parallel instances are spread by the load generator
itself) and writes the bake-off's report and measurement file (``bakeoff``).

Each instance runs in its own process group and session; the whole group is
stopped (SIGTERM, then SIGKILL after a grace period) once a topology is done,
when a start fails or its deadline passes, and on Ctrl-C or SIGTERM.

Only the standard library and the collection's module_utils are imported
(matplotlib draws the plots when it is there), so ``tools/measure_box.py``
runs with the Python that runs vLLM. The command line is ``main``.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from ansible_collections.gpufleet.serving.plugins.module_utils import bakeoff, loadgen, nvml_facts, vllm_launch, vllm_planner, vllm_report

TOPOLOGIES = bakeoff.TOPOLOGIES
# The plan role's variables this tool takes, and where each goes: the planner
# ("plan", its keyword) or the launch settings ("launch", the setting).
PLAN_VARIABLES = {
    "plan_dtype": ("plan", "dtype"),
    "plan_max_model_len": ("plan", "max_model_len"),
    "plan_concurrency": ("plan", "concurrency"),
    "plan_gpu_memory_utilization": ("plan", "gpu_memory_utilization"),
    "plan_objective": ("plan", "objective"),
    "plan_base_port": ("plan", "base_port"),
    "plan_device": ("plan", "device"),
    "plan_cpu_kvcache_space_gib": ("plan", "cpu_kvcache_space_gib"),
    "plan_max_num_seqs": ("plan", "max_num_seqs"),
    "plan_served_model_name": ("launch", "served_model_name"),
    "plan_enforce_eager": ("launch", "enforce_eager"),
    "plan_extra_args": ("launch", "extra_args"),
    "plan_extra_env": ("launch", "extra_env"),
    "plan_shutdown_timeout_sec": ("launch", "shutdown_timeout_sec"),
    "plan_http_keepalive_sec": ("launch", "http_keepalive_sec"),
    "plan_cpu_bind_cores": ("launch", "cpu_bind_cores"),
}
# Plan variables with another home here, and what to use instead.
PLAN_VARIABLES_ELSEWHERE = {
    "plan_model_config": "--model",
    "plan_model_path": "--model (vLLM reads the folder where it is)",
    "plan_nvml_snapshot": "--facts",
    "plan_topology": "--topologies",
    "plan_single_endpoint": "--topologies",
    "plan_host": "nothing: the instances listen on 127.0.0.1, where the load generator reaches them",
    "plan_measured": "nothing: the tool measures; --measured-file names the file it writes",
}
# Inherited variables the launch owns: dropped from the box's environment so
# that only the plan sets them (settings go through plan_extra_env).
OWNED_ENV_PREFIXES = ("VLLM_", "NCCL_", "GPUFLEET_", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "OMP_NUM_THREADS", "HF_HUB_OFFLINE")
HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# Bounds on what is read back from an instance (log, /metrics, answers).
MAX_LOG_BYTES = 32 * 1024 * 1024
MAX_ANSWER_BYTES = 4 * 1024 * 1024
LIMITS = {
    "prompt_words": (1, 100000),
    "output_tokens": (1, 100000),
    "requests": (1, 100000),
    "warmup": (0, 10000),
    "start_timeout": (1, 7200),
    "request_timeout": (1, 3600),
    "stop_grace": (0, 600),
    "base_port": (1024, 65535),
}
CONCURRENCY_MAX = 4096
DEFAULTS = {
    "topologies": list(TOPOLOGIES),
    "concurrency": [1, 8, 64],
    "prompt_words": 512,
    "output_tokens": 256,
    "requests": 64,
    "warmup": 2,
    "start_timeout": 900,
    "request_timeout": 300,
    "stop_grace": 30,
    "poll_interval": 2.0,
}


class MeasureError(ValueError):
    """Bad input; the message names the option or variable to change."""


class Stopped(Exception):
    """Ctrl-C, SIGTERM or SIGHUP while measuring: stop every instance and leave."""


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def _int_in(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MeasureError("%s must be a whole number from %d to %d, not %r" % (name, low, high, value))
    return value


def _list_of_ints(name, value):
    if isinstance(value, str):
        try:
            value = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise MeasureError("%s must be whole numbers separated by commas (for example 1,8,64), not %r" % (name, value)) from None
    if not isinstance(value, list) or not value:
        raise MeasureError("%s: give one or more levels, for example 1,8,64" % name)
    for item in value:
        _int_in(name, item, 1, CONCURRENCY_MAX)
    if len(set(value)) != len(value):
        raise MeasureError("%s lists a level twice: %r" % (name, value))
    return sorted(value)


def _model_folder(model):
    """The model folder as an absolute path a launch can carry; it must hold config.json."""
    if not isinstance(model, str) or not model:
        raise MeasureError("--model: give the model folder (config.json and a tokenizer; weights optional with --load-format dummy)")
    model = os.path.abspath(model)
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise MeasureError("--model: %s holds no config.json; give the model folder vLLM is to load" % model)
    if not vllm_launch.PATH_RE.match(model):
        raise MeasureError("--model: %s has characters a launch cannot carry (use letters, digits and . _ + @ / -)" % model)
    return model


def _out_folder(out_dir):
    if not isinstance(out_dir, str) or not out_dir:
        raise MeasureError("--out: give the folder for the report, the measurement file and the instances' logs")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise MeasureError("--out: %s exists and is not a folder" % out_dir)
    return out_dir


def _topology_list(given):
    """The topologies to measure, from a list or comma-separated text; each known and named once."""
    topologies = given
    if isinstance(topologies, str):
        topologies = [part.strip() for part in topologies.split(",") if part.strip()]
    if not topologies or any(t not in TOPOLOGIES for t in topologies) or len(set(topologies)) != len(topologies):
        raise MeasureError("--topologies must list one or more of %s, each once, not %r" % (", ".join(TOPOLOGIES), given))
    return list(topologies)


def _check_limits(out):
    """The whole-number options within LIMITS, and the poll interval in seconds."""
    for key, (low, high) in LIMITS.items():
        if key in out:
            _int_in("--" + key.replace("_", "-"), out[key], low, high)
    interval = out["poll_interval"]
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.05 <= interval <= 60:
        raise MeasureError("--poll-interval must be 0.05 to 60 seconds, not %r" % (interval,))


def _interpreter(python):
    if not isinstance(python, str) or not os.path.isabs(python) or not vllm_launch.PATH_RE.match(python):
        raise MeasureError("--python must be the absolute path of the interpreter that runs vLLM, not %r" % (python,))
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        raise MeasureError("--python: %s is not an executable file" % python)
    return python


def _host_label(label):
    if not isinstance(label, str) or not HOST_LABEL_RE.match(label):
        raise MeasureError("--host must be 1-63 letters, digits, . _ - (the name the report gives the box), not %r" % (label,))
    return label


def _cache_folder(cache):
    if not isinstance(cache, str) or not vllm_launch.PATH_RE.match(os.path.abspath(cache)):
        raise MeasureError("--cache-dir must be a path of letters, digits and . _ + @ / -, not %r" % (cache,))
    return os.path.abspath(cache)


def check_options(options):
    """The tool's options with defaults filled in; MeasureError naming the option otherwise."""
    out = dict(DEFAULTS)
    out.update({k: v for k, v in options.items() if v is not None})
    out["model"] = _model_folder(out.get("model"))
    out["out"] = _out_folder(out.get("out"))
    out["topologies"] = _topology_list(out["topologies"])
    out["concurrency"] = _list_of_ints("--concurrency", out["concurrency"])
    _check_limits(out)
    out["python"] = _interpreter(out.get("python") or sys.executable)
    out["host"] = _host_label(out.get("host") or socket.gethostname().split(".")[0] or "box")
    out["cache_dir"] = _cache_folder(out.get("cache_dir") or os.path.join(out["out"], "cache"))
    measured = out.get("measured_file") or os.path.join(out["out"], "measured.json")
    out["measured_file"] = os.path.abspath(measured)
    facts = out.get("facts")
    if facts and not os.path.isfile(facts):
        raise MeasureError("--facts: %s is not a file (nvidia_gpus facts or an NVML snapshot, JSON)" % facts)
    return out


def parse_assignment(text):
    """``plan_x=VALUE`` -> (name, value); the value is read as JSON when it is JSON, else kept as text."""
    if not isinstance(text, str) or "=" not in text:
        raise MeasureError("--set takes NAME=VALUE (for example plan_max_model_len=8192), not %r" % (text,))
    name, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name.strip(), value


def load_settings_file(path):
    """The plan variables of a settings file: a JSON object, or YAML when PyYAML is installed."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(1024 * 1024 + 1)
    except OSError as exc:
        raise MeasureError("--settings: cannot read %s: %s" % (path, exc)) from exc
    if len(text) > 1024 * 1024:
        raise MeasureError("--settings: %s is larger than 1 MiB; it should hold a few plan_* variables" % path)
    if path.endswith((".yml", ".yaml")):
        try:
            import yaml  # noqa: PLC0415 - optional: only for YAML settings files
        except ImportError:
            raise MeasureError("--settings: %s is YAML but PyYAML is not installed here; write it as JSON" % path) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise MeasureError("--settings: %s is not valid YAML: %s" % (path, exc)) from exc
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise MeasureError("--settings: %s is not valid JSON: %s" % (path, exc)) from exc
    if not isinstance(data, dict):
        raise MeasureError("--settings: %s must hold a mapping of plan_* variables" % path)
    return data


def planner_inputs(variables, model, base_port=None):
    """(planner keywords, launch settings) from the plan role's variables; MeasureError names a variable it does not take."""
    kwargs = {}
    launch = {"model_path": model, "host": "127.0.0.1"}
    for name, value in variables.items():
        if name in PLAN_VARIABLES_ELSEWHERE:
            raise MeasureError("%s is not a setting of this tool: use %s" % (name, PLAN_VARIABLES_ELSEWHERE[name]))
        if name not in PLAN_VARIABLES:
            raise MeasureError("%s is not a plan variable this tool takes (known: %s)" % (name, ", ".join(sorted(PLAN_VARIABLES))))
        where, key = PLAN_VARIABLES[name]
        (kwargs if where == "plan" else launch)[key] = value
    if kwargs.get("max_model_len") == 0:
        del kwargs["max_model_len"]  # as the plan role: 0 plans for the model's own maximum
    if base_port is not None:
        if "base_port" in kwargs and kwargs["base_port"] != base_port:
            raise MeasureError("--base-port %d and plan_base_port %r disagree: give one" % (base_port, kwargs["base_port"]))
        kwargs["base_port"] = base_port
    kwargs.setdefault("base_port", vllm_planner.DEFAULT_BASE_PORT)
    _int_in("plan_base_port", kwargs["base_port"], *LIMITS["base_port"])
    return kwargs, launch


def read_facts(path=None, nvml=None):
    """The nvidia_gpus facts: from a file (facts, or an NVML snapshot) or live through NVML."""
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise MeasureError("--facts: cannot read %s as JSON: %s" % (path, exc)) from exc
        if isinstance(data, dict) and isinstance(data.get("nvidia_gpus"), dict):
            data = data["nvidia_gpus"]
        if isinstance(data, dict) and isinstance(data.get("devices"), list):
            try:
                data = nvml_facts.facts_from_raw(data, "snapshot")
            except nvml_facts.SnapshotError as exc:
                raise MeasureError("--facts: %s" % exc) from exc
        if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
            raise MeasureError("--facts: %s is neither nvidia_gpus facts (a 'gpus' list) nor an NVML snapshot (a 'devices' list)" % path)
        facts = data
    else:
        facts = nvml_facts.nvidia_gpu_facts(nvml=nvml).facts
    if not facts.get("available", bool(facts.get("gpus"))) or not facts.get("gpus"):
        raise MeasureError(
            "no cards to plan for: %s; give --facts with the nvidia_gpus facts or an NVML snapshot of the cards"
            % (facts.get("reason") or "the facts list no card")
        )
    return facts


def plan_candidates(topologies, facts, model, kwargs, launch):
    """One entry per topology asked: {"topology", "plan"} or {"topology", "refused"} in the planner's words."""
    out = []
    for topology in topologies:
        try:
            result = vllm_planner.plan(gpus=facts, model=model, topology=topology, launch=dict(launch), launch_prefix="plan_", **kwargs)
        except vllm_planner.PlanError as exc:
            text = str(exc)
            param = exc.param
            if param not in ("topology", "tensor_parallel_size"):
                # The plan role's name of the setting, as the launch's own messages already give it.
                param = "plan_" + param
                if text.startswith(exc.param + ": "):
                    text = "plan_" + text
            out.append({"topology": topology, "refused": text, "param": param})
            continue
        out.append({"topology": topology, "plan": result})
    return out


def check_candidates(candidates):
    """MeasureError when a setting (not the topology) is wrong: the same refusal for every topology names it."""
    if candidates and all("refused" in c for c in candidates):
        settings = [c for c in candidates if c["param"] not in ("topology", "tensor_parallel_size")]
        if settings:
            raise MeasureError(settings[0]["refused"])
        raise MeasureError("the planner refuses every topology asked: %s" % "; ".join("%s: %s" % (c["topology"], c["refused"]) for c in candidates))


def port_free(port, host="127.0.0.1"):
    """Whether a server could listen on ``port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(candidates):
    for candidate in candidates:
        for instance in candidate.get("plan", {}).get("instances", []):
            if not port_free(instance["port"]):
                raise MeasureError(
                    "port %d (instance %s of %s) is in use on 127.0.0.1: choose another --base-port"
                    % (instance["port"], instance["name"], candidate["topology"])
                )


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def process_env(base_env, instance, cache_dir):
    """An instance's process environment: the box's, less what the launch owns, the unit's cache folders, then the plan's env."""
    env = {k: v for k, v in base_env.items() if not k.startswith(OWNED_ENV_PREFIXES)}
    # What vllm@.service sets beside the environment file: caches per instance.
    env.update(
        {
            "VLLM_CACHE_ROOT": cache_dir,
            "HF_HOME": os.path.join(cache_dir, "hf"),
            "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache_dir, "inductor"),
            "TRITON_CACHE_DIR": os.path.join(cache_dir, "triton"),
        }
    )
    env.update(instance["env"])
    return env


def command(python, plan, instance):
    """The argument vector that runs one instance: the interpreter, the launch's entry point, the plan's argv."""
    return [python, *plan["launch"]["entrypoint"], *instance["argv"]]


class Instance:
    """One started instance: its process (leader of its own group) and its log."""

    def __init__(self, name, port, proc, log_path, started):
        self.name = name
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.started = started
        self.ready_s = None
        self.failure = None


def start_instance(python, plan, instance, log_path, cache_dir, *, popen, clock):
    """Start one instance in its own session (so its whole group can be stopped), its output in ``log_path``."""
    os.makedirs(cache_dir, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = popen(  # pylint: disable=consider-using-with
            command(python, plan, instance),
            env=process_env(os.environ, instance, cache_dir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            cwd=cache_dir,
        )
    return Instance(instance["name"], instance["port"], proc, log_path, clock())


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_instance(item, grace, clock=time.monotonic, sleep=time.sleep):
    """Stop an instance's whole process group: SIGTERM, then SIGKILL after ``grace`` seconds; returns how it ended."""
    pgid = item.proc.pid
    how = "terminated"
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        how = "already gone"
    end = clock() + grace
    while clock() < end:
        item.proc.poll()
        if not group_alive(pgid):
            return how
        sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
        how = "killed after %ss" % grace
    except ProcessLookupError:
        pass
    end = clock() + 30
    while clock() < end:
        item.proc.poll()
        if not group_alive(pgid):
            return how
        sleep(0.1)
    return how + ", but processes of its group remain (pgid %d)" % pgid


def read_log(path, limit=MAX_LOG_BYTES):
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def log_tail(path, lines=12):
    text = read_log(path)
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------
# HTTP (the instances, on loopback)
# ---------------------------------------------------------------------------


def http_request(port, method, path, body=None, timeout=10.0):
    """(status, bytes) of one request to 127.0.0.1:port; raises OSError / http.client errors."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        resp = conn.getresponse()
        return resp.status, resp.read(MAX_ANSWER_BYTES)
    finally:
        conn.close()


def answers_a_token(port, model, timeout):
    """The vllm role's readiness: /health answers 200, then a one-token completion answers with a choice."""
    try:
        status, _body = http_request(port, "GET", "/health", timeout=min(10.0, timeout))
        if status != 200:
            return False
        status, body = http_request(port, "POST", "/v1/completions", {"model": model, "prompt": "ping", "max_tokens": 1}, timeout=timeout)
    except (OSError, http.client.HTTPException):
        return False
    if status != 200:
        return False
    try:
        return bool(json.loads(body.decode("utf-8", "replace")).get("choices"))
    except (ValueError, AttributeError):
        return False


def wait_ready(items, model, deadline_s, *, poll_interval, clock=time.monotonic, sleep=time.sleep, ready=answers_a_token):
    """Wait until every instance answers a token, or one exits, or ``deadline_s`` passes; sets each ``ready_s`` or ``failure``.

    Returns True when all are ready.
    """
    start = min(item.started for item in items)
    end = start + deadline_s
    waiting = list(items)
    while waiting:
        for item in list(waiting):
            code = item.proc.poll()
            if code is not None:
                said = vllm_report.parse_log(read_log(item.log_path))["failure"]
                item.failure = "instance %s exited with code %s before it was ready%s; its log ends:\n%s" % (
                    item.name,
                    code,
                    (": vLLM says: " + said) if said else "",
                    log_tail(item.log_path),
                )
                return False
            remaining = end - clock()
            if remaining <= 0:
                break
            if ready(item.port, model, max(1.0, min(120.0, remaining))):
                item.ready_s = round(clock() - item.started, 2)
                waiting.remove(item)
        if not waiting:
            return True
        if clock() >= end:
            for item in waiting:
                item.failure = "instance %s (port %d) did not answer a token within %ds (--start-timeout); its log ends:\n%s" % (
                    item.name,
                    item.port,
                    deadline_s,
                    log_tail(item.log_path),
                )
            return False
        sleep(min(poll_interval, max(0.0, end - clock())))
    return True


def kv_report(plan, items):
    """vLLM's own KV-cache figures per instance (its log, else /metrics) beside the plan's (``vllm_report.compare``)."""
    reports = {}
    for item in items:
        metrics = None
        log = read_log(item.log_path)
        if not vllm_report.parse_log(log)["kv_cache_tokens"]:
            try:
                status, body = http_request(item.port, "GET", "/metrics", timeout=10.0)
                metrics = body.decode("utf-8", "replace") if status == 200 else None
            except (OSError, http.client.HTTPException):
                metrics = None
        reports[item.name] = vllm_report.reported(log, metrics)
        reports[item.name]["source"] = {"journal": "log", "metrics": "metrics"}.get(reports[item.name]["source"])
    return vllm_report.compare(plan, reports)


# ---------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------


def tpot_from_latency(record):
    """Time per output token after the first, from the whole latency and the token count (streamed chunks may bunch up)."""
    if record.get("outcome") != "ok" or record.get("ttft") is None or not record.get("tokens") or record["tokens"] < 2:
        return None
    return (record["latency"] - record["ttft"]) / (record["tokens"] - 1)


def summarize(records):
    """The load generator's summary, with TPOT taken from latency and token counts (the streamed figure kept as tpot_stream_*)."""
    summary = loadgen.summarize(records)
    per_token = [tpot_from_latency(r) for r in records]
    summary["tpot_stream_p50"], summary["tpot_stream_p99"] = summary["tpot_p50"], summary["tpot_p99"]
    summary["tpot_p50"] = loadgen.percentile(per_token, 50)
    summary["tpot_p99"] = loadgen.percentile(per_token, 99)
    return summary


def drive(urls, model, load, *, records_path=None, run=loadgen.run):
    """One cell: ``load`` (mix, concurrency, count, timeout, seed) spread over ``urls``; returns (summary, records)."""
    settings = {"url": urls[0], "urls": urls if len(urls) > 1 else [], "model": model, "mix": load["mix"], "concurrency": load["concurrency"]}
    settings.update({"count": load["count"], "timeout": float(load["timeout"]), "seed": load["seed"]})
    records = run(settings)
    if records_path:
        bakeoff.write_text(records_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return summarize(records), records


# ---------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------


def topology_words(plan):
    ports = ", ".join(str(i["port"]) for i in plan["instances"])
    return "%s, tensor parallel %d x data parallel %d, %d instance(s) on port(s) %s" % (
        plan["topology"],
        plan["tensor_parallel_size"],
        plan["data_parallel_size"],
        len(plan["instances"]),
        ports,
    )


def _ports_in_use(plan):
    """Why the topology cannot start because a port of one of its instances is taken; None when every port is free."""
    for instance in plan["instances"]:
        if not port_free(instance["port"]):
            return "port %d of instance %s is in use: stop what listens there or choose another --base-port" % (instance["port"], instance["name"])
    return None


def _level_words(topology, level, summary):
    """The log line of one concurrency level."""
    return "%s at concurrency %d: %d ok, %d failed, %s output tok/s, TTFT p50 %s ms, TPOT p50 %s ms" % (
        topology,
        level,
        summary["ok"],
        summary["failed"],
        _fig(summary["output_tokens_per_s"], 1),
        _fig(summary["ttft_p50"], 1000),
        _fig(summary["tpot_p50"], 1000),
    )


def _stop_instances(items, out, grace, *, clock, sleep):
    """Stop every instance started, noting how on its entry in ``out``; one that remains running is a failure."""
    for item in items:
        how = stop_instance(item, grace, clock=clock, sleep=sleep)
        for entry in out["instances"]:
            if entry["name"] == item.name:
                entry["stopped"] = how
        if "remain" in how:
            out["failure"] = ((out["failure"] + "; ") if out["failure"] else "") + "instance %s: %s" % (item.name, how)


def _load_levels(options, out, urls, model, *, log, run):
    """The warm-up, then one load per concurrency level, each level's figures added to ``out`` (its ``failure`` set when no warm-up request succeeded)."""
    topology = out["topology"]
    base = {"mix": "%d:%d" % (options["prompt_words"], options["output_tokens"]), "timeout": options["request_timeout"]}
    if options["warmup"]:
        warm, _records = drive(urls, model, dict(base, concurrency=len(urls), count=options["warmup"], seed=0), run=run)
        if not warm["ok"]:
            out["failure"] = "no warm-up request succeeded (%s)" % warm["outcomes"]
            return
    for level in options["concurrency"]:
        load = dict(base, concurrency=level, count=max(options["requests"], 2 * level), seed=level)
        records_path = os.path.join(options["out"], topology, "records-c%d.jsonl" % level)
        summary, _records = drive(urls, model, load, records_path=records_path, run=run)
        out["results"].append({"topology": topology, "concurrency": level, "summary": summary})
        log(_level_words(topology, level, summary))


def measure_topology(options, candidate, log, *, popen, clock, sleep, ready=answers_a_token, run=loadgen.run):
    """Start, check, load and stop one topology; returns what was measured (``failure`` set when it could not be)."""
    topology = candidate["topology"]
    plan = candidate["plan"]
    model = plan["launch"]["served_model_name"]
    folder = os.path.join(options["out"], topology)
    os.makedirs(folder, exist_ok=True)
    out = {"topology": topology, "words": topology_words(plan), "instances": [], "results": [], "failure": None, "ready_s": None, "kv": None}
    items = []
    try:
        out["failure"] = _ports_in_use(plan)
        if out["failure"]:
            return out
        log("%s: starting %d instance(s): %s" % (topology, len(plan["instances"]), out["words"]))
        for instance in plan["instances"]:
            cache = os.path.join(options["cache_dir"], instance["name"])
            path = os.path.join(folder, "%s.log" % instance["name"])
            items.append(start_instance(options["python"], plan, instance, path, cache, popen=popen, clock=clock))
        all_ready = wait_ready(items, model, options["start_timeout"], poll_interval=options["poll_interval"], clock=clock, sleep=sleep, ready=ready)
        for item in items:
            out["instances"].append({"name": item.name, "port": item.port, "ready_s": item.ready_s, "log": os.path.relpath(item.log_path, options["out"])})
        if not all_ready:
            out["failure"] = "; ".join(item.failure for item in items if item.failure)
            return out
        out["ready_s"] = max(item.ready_s for item in items)
        out["kv"] = kv_report(plan, items)
        log("%s: ready in %ss; %s" % (topology, out["ready_s"], "; ".join(vllm_report.summary(out["kv"]))))
        _load_levels(options, out, ["http://127.0.0.1:%d" % item.port for item in items], model, log=log, run=run)
        return out
    finally:
        _stop_instances(items, out, options["stop_grace"], clock=clock, sleep=sleep)


def _fig(value, scale):
    return "-" if value is None else "%.1f" % (value * scale)


def _kv_words(kv):
    parts = []
    for entry in (kv or {}).get("instances", []):
        reported = "{:,}".format(entry["reported_kv_tokens"]) if entry["reported_kv_tokens"] is not None else "none"
        ratio = " (%.1f%%)" % (100.0 * entry["ratio"]) if entry.get("ratio") is not None else ""
        parts.append("%s: %s reported, %s planned%s" % (entry["name"], reported, "{:,}".format(entry["predicted_kv_tokens"] or 0), ratio))
    return "; ".join(parts)


def box_markdown(measured):
    """The part of report.md only this tool knows: start-up times, vLLM's KV-cache figures, failures."""
    lines = [
        "",
        "## Start-up and KV cache (measure_box)",
        "",
        "| topology | ready after s | KV-cache tokens (vLLM / plan) | outcome |",
        "| --- | --- | --- | --- |",
    ]
    for item in measured:
        outcome = "measured" if not item.get("failure") else "failed: " + item["failure"].splitlines()[0]
        lines.append(
            "| %s | %s | %s | %s |"
            % (item["topology"], item.get("ready_s") if item.get("ready_s") is not None else "-", _kv_words(item.get("kv")) or "-", outcome)
        )
    lines += ["", "TPOT is the time per output token after the first, from each request's latency and token count.", ""]
    return "\n".join(lines)


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(options, *, popen=None, clock=time.monotonic, sleep=time.sleep, log=None, nvml=None, ready=answers_a_token):
    """Measure every candidate topology of the box; returns the outcome (paths written, per-topology figures)."""
    popen = popen or subprocess.Popen
    log = log or (lambda text: sys.stderr.write("measure_box: %s\n" % text))
    opts = check_options(options)
    variables = {}
    if opts.get("settings"):
        variables.update(load_settings_file(opts["settings"]))
    for text in opts.get("set") or []:
        name, value = parse_assignment(text)
        variables[name] = value
    kwargs, launch = planner_inputs(variables, opts["model"], opts.get("base_port"))
    facts = read_facts(opts.get("facts"), nvml=nvml)
    try:
        candidates = plan_candidates(opts["topologies"], facts, opts["model"], kwargs, launch)
    except (TypeError, ValueError) as exc:
        raise MeasureError("the plan settings cannot be planned with: %s" % exc) from exc
    check_candidates(candidates)
    check_ports(candidates)
    os.makedirs(opts["out"], exist_ok=True)
    measured_at = utc_now()
    measured = []
    plans = {}
    for candidate in candidates:
        if "refused" in candidate:
            log("%s: not measured, the planner refuses it: %s" % (candidate["topology"], candidate["refused"]))
            plans[candidate["topology"]] = {"words": "", "refused": candidate["refused"]}
            continue
        item = measure_topology(opts, candidate, log, popen=popen, clock=clock, sleep=sleep, ready=ready)
        if item["failure"]:
            log("%s: %s" % (candidate["topology"], item["failure"]))
        measured.append(item)
        plans[candidate["topology"]] = {
            "words": item["words"] + ("; did not complete: %s" % item["failure"].splitlines()[0] if item["failure"] else ""),
            "refused": "",
            "ready_s": item["ready_s"],
            "kv": item["kv"],
            "failure": item["failure"],
            "instances": item["instances"],
        }
    return write_outputs(opts, candidates, measured, plans, measured_at)


def write_outputs(opts, candidates, measured, plans, measured_at):
    results = [r for item in measured for r in item["results"]]
    reference = next(c["plan"] for c in candidates if "plan" in c)
    box = {
        "measured_at": measured_at,
        "host": opts["host"],
        "options": {k: v for k, v in opts.items() if k not in ("set",)},
        "plans": {c["topology"]: c.get("plan") or {"refused": c["refused"]} for c in candidates},
        "measured": measured,
    }
    box_path = os.path.join(opts["out"], "box.json")
    bakeoff.write_text(box_path, json.dumps(box, indent=2, sort_keys=True, default=str) + "\n")
    outcome = {"box": box_path, "topologies": plans, "paths": {}, "winners": None, "failed": [m["topology"] for m in measured if m["failure"]]}
    if not results:
        outcome["error"] = "no topology was measured: %s" % "; ".join("%s: %s" % (t, p.get("failure") or p.get("refused")) for t, p in plans.items())
        return outcome
    settings = {
        "mix": "%d:%d" % (opts["prompt_words"], opts["output_tokens"]),
        "served_dtype": reference["dtype"],
        "concurrency": opts["concurrency"],
        "requests_per_level": opts["requests"],
        "warmup_requests": opts["warmup"],
        "client": "%s (tools/measure_box.py)" % opts["host"],
        "url": "each instance on 127.0.0.1",
        "front": "no balancer: the load generator sends each request to the instance with the fewest in flight",
        "device": reference["device"],
        "tpot": "from latency and token count",
    }
    rows = bakeoff.check_results(results)
    report = bakeoff.build_report(host=opts["host"], measured_at=measured_at, plan=reference, rows=rows, plans=plans, settings=settings)
    report["plots_drawn"] = bakeoff.HAS_MATPLOTLIB
    outcome["paths"] = bakeoff.write_report(report, opts["out"], opts["measured_file"], extra_markdown=box_markdown(measured))
    outcome["winners"] = {name: w["winner"] for name, w in report["winners"].items()}
    return outcome


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parser():
    p = argparse.ArgumentParser(
        prog="measure_box.py",
        description="Start each candidate topology of this box as the vllm role would launch it, load it, and write the bake-off's report "
        "and measurement file. Needs vLLM (or --python pointing at it); no systemd, nginx or Ansible.",
    )
    p.add_argument("--model", required=True, help="model folder: config.json and a tokenizer (weights optional with plan_extra_args --load-format dummy)")
    p.add_argument("--out", required=True, help="folder for report.md, report.json, measured.json, box.json and each instance's log")
    p.add_argument("--facts", help="nvidia_gpus facts or NVML snapshot (JSON); default: read the cards through NVML")
    p.add_argument("--settings", help="JSON (or YAML) file of plan role variables: plan_max_model_len, plan_extra_args, plan_extra_env, ...")
    p.add_argument("--set", action="append", metavar="plan_NAME=VALUE", help="one plan role variable, VALUE read as JSON when it is (repeatable)")
    p.add_argument("--topologies", help="comma-separated, of %s (default: all; those the planner refuses are reported)" % ", ".join(TOPOLOGIES))
    p.add_argument("--concurrency", help="comma-separated levels (default 1,8,64)")
    p.add_argument("--prompt-words", type=int, help="words per prompt (default 512)")
    p.add_argument("--output-tokens", type=int, help="output tokens per request, ignore_eos (default 256)")
    p.add_argument("--requests", type=int, help="requests per level, at least twice the level are sent (default 64)")
    p.add_argument("--warmup", type=int, help="unmeasured requests after each start (default 2)")
    p.add_argument("--base-port", type=int, help="first instance's port (plan_base_port; default 8001)")
    p.add_argument("--start-timeout", type=int, help="seconds each topology has to answer a token after its start (default 900)")
    p.add_argument("--request-timeout", type=int, help="socket timeout per request, seconds (default 300)")
    p.add_argument("--stop-grace", type=int, help="seconds between SIGTERM and SIGKILL of an instance's process group (default 30)")
    p.add_argument("--poll-interval", type=float, help="seconds between readiness checks (default 2)")
    p.add_argument("--python", help="interpreter that runs vLLM (default: this one)")
    p.add_argument("--host", help="name of the box in the report (default: its host name)")
    p.add_argument("--cache-dir", help="vLLM, Inductor and Triton caches, one folder per instance name (default OUT/cache)")
    p.add_argument("--measured-file", help="measurement file to add the result to (default OUT/measured.json)")
    return p


def _raise_stopped(signum, _frame):
    raise Stopped("signal %d" % signum)


def main(argv=None, **hooks):
    args = parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if v is not None}
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        outcome = run(options, **hooks)
    except MeasureError as exc:
        sys.stderr.write("measure_box: %s\n" % exc)
        return 2
    except (KeyboardInterrupt, Stopped):
        sys.stderr.write("measure_box: interrupted; every instance started was stopped\n")
        return 130
    except (bakeoff.BakeoffError, vllm_planner.PlanError, OSError) as exc:
        sys.stderr.write("measure_box: %s\n" % exc)
        return 1
    except Exception as exc:  # pylint: disable=broad-except
        # Every instance started was stopped on the way out; say what broke instead of a traceback.
        sys.stderr.write("measure_box: unexpected %s: %s (every instance started was stopped)\n" % (type(exc).__name__, exc))
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    shown = {k: outcome.get(k) for k in ("paths", "winners", "failed", "box", "error")}
    sys.stdout.write(json.dumps(shown, indent=2, sort_keys=True) + "\n")
    if outcome.get("error"):
        sys.stderr.write("measure_box: %s\n" % outcome["error"])
        return 1
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
