# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What each vLLM instance of a host is doing, and whether it runs its current configuration.

Pure functions over what the host says: ``systemctl show`` output, the
instance's environment file (``/etc/vllm/<name>.env``, written by the vllm
role) and the environment its running process started with
(``/proc/<pid>/environ``). An instance is *stale* when a variable of its
environment file (its arguments, the unit's checksum, the vLLM package) differs
from what the process started with: it needs a restart to run what the files
say. That holds across interrupted runs, unlike "the file changed in this run".

The request counts come from vLLM's Prometheus metrics
(``vllm:num_requests_running`` and ``vllm:num_requests_waiting``).
"""

from __future__ import annotations

import math
import re

# Instance names as the plan gives them (they name systemd units, vllm@<name>).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
MAX_INSTANCES = 256
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_TIMEOUT = 300
SHOW_PROPERTIES = ("ActiveState", "SubState", "MainPID", "NRestarts", "Result", "ExecMainStartTimestamp")
METRICS = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting"}


def parse_env_file(text):
    """KEY=VALUE lines of a systemd EnvironmentFile; comments and blank lines skipped, outer quotes removed."""
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def parse_environ(data):
    """The NUL-separated contents of /proc/<pid>/environ as a dict."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    env = {}
    for item in data.split("\0"):
        if "=" in item:
            key, value = item.split("=", 1)
            env[key] = value
    return env


def parse_show(text):
    """``systemctl show -p A,B`` output (A=x lines) as a dict."""
    props = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            props[key] = value
    return props


def stale_keys(wanted, running):
    """The variables of the environment file whose value the running process does not have."""
    return sorted(k for k, v in wanted.items() if running.get(k) != v)


def parse_metrics(text):
    """Running and waiting requests from vLLM's /metrics text, summed over label sets; None when absent."""
    found = {"running": None, "waiting": None}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in METRICS:
            try:
                value = float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            if not math.isfinite(value) or value < 0:
                continue  # NaN, Inf or a negative count is no count
            key = METRICS[name]
            found[key] = (found[key] or 0.0) + value
    return found


def instance_status(name, show, env_text, environ):
    """One instance's status dict.

    name: the instance (vllm@<name>); show: parsed ``systemctl show``; env_text: its
    environment file's text (None when missing); environ: its process's environment
    (None when it has no process).
    """
    active = show.get("ActiveState", "unknown")
    pid = int(show["MainPID"]) if str(show.get("MainPID", "")).isdigit() else 0
    wanted = parse_env_file(env_text) if env_text is not None else {}
    status = {
        "name": name,
        "unit": "vllm@%s.service" % name,
        "active_state": active,
        "sub_state": show.get("SubState", ""),
        "result": show.get("Result", ""),
        "main_pid": pid,
        "restarts": int(show["NRestarts"]) if str(show.get("NRestarts", "")).isdigit() else 0,
        "started_at": show.get("ExecMainStartTimestamp", ""),
        "configured": env_text is not None,
        "port": int(wanted["GPUFLEET_PORT"]) if wanted.get("GPUFLEET_PORT", "").isdigit() and 1 <= int(wanted["GPUFLEET_PORT"][:6]) <= 65535 else None,
        "package": wanted.get("GPUFLEET_VLLM_PACKAGE"),
        "stale": False,
        "stale_keys": [],
    }
    if env_text is not None and active in ("active", "activating", "reloading") and environ is not None:
        keys = stale_keys(wanted, environ)
        status["stale"] = bool(keys)
        status["stale_keys"] = keys
    return status


def summarize(statuses):
    """Lists of names by condition, for tasks to loop over."""
    return {
        "stale": [s["name"] for s in statuses if s["stale"]],
        "inactive": [s["name"] for s in statuses if s["active_state"] not in ("active", "activating", "reloading")],
        "failed": [s["name"] for s in statuses if s["active_state"] == "failed"],
        "busy": sum(int((s.get("requests_running") or 0) + (s.get("requests_waiting") or 0)) for s in statuses),
    }
