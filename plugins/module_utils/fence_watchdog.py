# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The watchdog that takes a hung vLLM engine out of the server tier, restarts it and puts it back.

vLLM's API server keeps answering /health while its engine core hangs (a
stuck GPU, a stopped worker), so the watchdog asks each instance for one
token, with a hard deadline, every few seconds. An instance that fails
`failures` probes in a row is FENCED: written to the fenced set
(/etc/nginx/gpufleet/fenced.json), marked `down` in the server tier's upstream
(/etc/nginx/gpufleet/local-servers.conf, rendered by
gateway_layout.local_servers_conf, tested with nginx_common's validator,
nginx reloaded), then restarted with `systemctl restart --no-block`. Once the
new process answers `ready_successes` probes in a row the instance is
UNFENCED the same way. A unit that ends `failed` (its start limit) stays
fenced and is not restarted again; an operator's `systemctl reset-failed` and
`start` bring it back, and it is unfenced when it answers.

The host runs this file under /usr/bin/python3 (the roles/watchdog launcher),
so it uses the standard library only, plus input_checks and gateway_layout of
this collection. The host is reached through three seams that the tests
replace: `system` (systemctl and the nginx validator), `clock` and `render`
(gateway_layout.local_servers_conf).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.gpufleet.serving.plugins.module_utils import input_checks

CONFIG_VERSION = 1
STATE_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
SERVED_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}$")
PATH_RE = re.compile(r"^/[A-Za-z0-9._+@/-]{0,254}$")
KEY_LINE_RE = re.compile(r"^VLLM_API_KEY=([A-Za-z0-9]{32,128})$")
INVOCATION_RE = re.compile(r"^[0-9a-f]{0,64}$")
METRIC_RE = re.compile(r"^vllm:(?:generation|prompt)_tokens_total(?:\{[^}\n]*\})?[ \t]+([0-9.eE+-]+)[ \t]*(?:[0-9]+)?[ \t]*$", re.M)

MAX_CONFIG_BYTES = 1 << 20
MAX_KEY_BYTES = 4096
MAX_STATE_BYTES = 1 << 20
# The gateway role refuses a fenced set whose reasons are longer or not printable (gateway_layout.MAX_REASON).
MAX_REASON = 500
MAX_SITE_BYTES = 16 << 20
MAX_ANSWER_BYTES = 1 << 20
MAX_METRICS_BYTES = 16 << 20
MAX_INSTANCES = 256
METRICS_TIMEOUT = 2.0
COMMAND_TIMEOUT = 30.0
MAX_WORKERS = 16

# Where each path of the configuration may point (the role writes these).
PATH_ROOTS = {
    "key_file": ("/etc/",),
    "textfile_dir": ("/var/lib/",),
    "state_dir": ("/var/lib/",),
    "nginx_dir": ("/etc/nginx/",),
    "validator": ("/usr/local/libexec/", "/usr/libexec/"),
}
# (low, high, default) of each number of the configuration.
NUMBERS = {
    "interval": (1, 3600, 5),
    "probe_timeout": (0.5, 300, 5),
    "failures": (1, 100, 3),
    "ready_successes": (1, 100, 2),
    "start_timeout": (10, 86400, 1200),
}
WHOLE = ("failures", "ready_successes")
DEFAULT_PATHS = {
    "key_file": "/etc/vllm/instance-api-key",
    "textfile_dir": "/var/lib/prometheus/node-exporter",
    "state_dir": "/var/lib/gpufleet-watchdog",
    "nginx_dir": "/etc/nginx/gpufleet",
    "validator": "/usr/local/libexec/gpufleet-nginx-validate",
}
FENCED_FILE = "fenced.json"
DRAINED_FILE = "drained.json"
SITE_FILE = "site.json"
SERVERS_FILE = "local-servers.conf"
STATE_FILE = "state.json"
METRICS_FILE = "gpufleet_watchdog.prom"

SERVING, FENCED, FAILED = "serving", "fenced", "failed"


class WatchdogError(Exception):
    """Something the watchdog could not do; the message says what and why."""


# --- the configuration -------------------------------------------------------------------------
def _check_path(key, value):
    roots = PATH_ROOTS[key]
    ok = isinstance(value, str) and PATH_RE.fullmatch(value) is not None and "//" not in value
    ok = ok and not {".", ".."} & set(value.split("/")) and any(value.startswith(r) and len(value) > len(r) for r in roots)
    if not ok:
        raise WatchdogError(
            "%s must be an absolute path under %s of letters, digits and . _ + @ / - (no '..'), not %s" % (key, " or ".join(roots), _show(value))
        )
    return value.rstrip("/")


def _check_number(key, value):
    low, high, _default = NUMBERS[key]
    whole = key in WHOLE
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not input_checks.is_number(value, low, high):
        raise WatchdogError("%s must be a %s from %g to %g, not %s" % (key, "whole number" if whole else "number", low, high, _show(value)))
    return value


def _show(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_instance(index, item):
    where = "instances[%d]" % index
    if not isinstance(item, dict) or set(item) != {"name", "port", "unit", "served_model_name"}:
        raise WatchdogError("%s must be an object with exactly name, port, unit and served_model_name, not %s" % (where, _show(item)))
    name, port = item["name"], item["port"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise WatchdogError("%s.name must be 1-63 letters, digits, '.', '_' or '-' starting with a letter or digit, not %s" % (where, _show(name)))
    if not input_checks.is_int(port, 1, 65535):
        raise WatchdogError("%s.port (instance %s) must be a whole number from 1 to 65535, not %s" % (where, name, _show(port)))
    if item["unit"] != "vllm@%s.service" % name:
        raise WatchdogError("%s.unit must be vllm@%s.service (the instance's own unit), not %s" % (where, name, _show(item["unit"])))
    served = item["served_model_name"]
    if not isinstance(served, str) or not SERVED_RE.fullmatch(served) or ".." in served.split("/"):
        raise WatchdogError("%s.served_model_name (instance %s) must be the plan's served model name, not %s" % (where, name, _show(served)))
    return dict(item)


def check_config(value):
    """The configuration with its defaults filled in; WatchdogError naming the first field that cannot be used."""
    if not isinstance(value, dict):
        raise WatchdogError("the configuration must be a JSON object, not %s" % _show(value))
    known = {"version", "instances"} | set(NUMBERS) | set(PATH_ROOTS)
    unknown = sorted(str(k) for k in set(value) - known)
    if unknown:
        raise WatchdogError("the configuration has fields this watchdog does not know: %s (known: %s)" % (", ".join(unknown), ", ".join(sorted(known))))
    if value.get("version") != CONFIG_VERSION:
        raise WatchdogError(
            "version must be %d, not %s: write the file with the watchdog role of this collection" % (CONFIG_VERSION, _show(value.get("version")))
        )
    out = {"version": CONFIG_VERSION}
    for key, (_low, _high, default) in NUMBERS.items():
        out[key] = _check_number(key, value.get(key, default))
    for key, default in DEFAULT_PATHS.items():
        out[key] = _check_path(key, value.get(key, default))
    items = value.get("instances")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_INSTANCES:
        raise WatchdogError("instances must be a list of 1 to %d instances (the plan's), not %s" % (MAX_INSTANCES, _show(items)))
    out["instances"] = [_check_instance(i, item) for i, item in enumerate(items)]
    for field in ("name", "port"):
        seen = [i[field] for i in out["instances"]]
        if len(set(seen)) != len(seen):
            raise WatchdogError("instances: every instance needs its own %s; these repeat: %s" % (field, sorted({str(s) for s in seen if seen.count(s) > 1})))
    return out


def load_config(path):
    """The checked configuration from a file (a regular file of at most 1 MiB)."""
    try:
        value = input_checks.load_json(path, MAX_CONFIG_BYTES, "the watchdog configuration")
    except input_checks.InputError as exc:
        raise WatchdogError(str(exc)) from None
    try:
        return check_config(value)
    except WatchdogError as exc:
        raise WatchdogError("%s: %s" % (path, exc)) from None


def config_from_plan(plan, settings):
    """The configuration the watchdog role writes: the plan's instances, the role's settings; checked."""
    if not isinstance(plan, dict) or not isinstance(plan.get("instances"), list) or not isinstance(plan.get("launch"), dict):
        raise WatchdogError("the plan must be a plan from gpufleet.serving.vllm_plan with instances and launch (the vllm role's plan)")
    if not isinstance(settings, dict):
        raise WatchdogError("the settings must be a mapping, not %s" % _show(settings))
    served = plan["launch"].get("served_model_name")
    instances = []
    for item in plan["instances"]:
        name = item.get("name") if isinstance(item, dict) else None
        port = item.get("port") if isinstance(item, dict) else None
        instances.append({"name": name, "port": port, "unit": "vllm@%s.service" % name, "served_model_name": served})
    value = {"version": CONFIG_VERSION, "instances": instances}
    value.update(settings)
    return check_config(value)


def read_api_key(path):
    """The instances' key from the vllm role's file (one line VLLM_API_KEY=...)."""
    try:
        text = input_checks.read_bytes(path, MAX_KEY_BYTES, "the instances' key file").decode("ascii", "replace").strip()
    except input_checks.InputError as exc:
        raise WatchdogError(str(exc)) from None
    found = KEY_LINE_RE.fullmatch(text)
    if not found:
        raise WatchdogError("%s must hold one line VLLM_API_KEY=<32 to 128 letters and digits>, as the vllm role writes it" % path)
    return found.group(1)


# --- files -------------------------------------------------------------------------------------
def _write_temp(folder, base, data, mode):
    """A new file in `folder` holding `data`, written and synced; its path."""
    handle, temp = tempfile.mkstemp(prefix="." + base + ".", dir=folder)
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        _remove(temp)
        raise
    return temp


def _remove(path):
    if os.path.lexists(path):
        os.unlink(path)


def atomic_write(path, data, mode=0o640):
    """Write bytes to `path` through a temporary file in its folder: fsync, rename, fsync of the folder."""
    folder, base = os.path.split(path)
    temp = _write_temp(folder, base, data, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        _remove(temp)
        raise
    _sync_folder(folder)


def _sync_folder(folder):
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def read_text(path, limit, what):
    """The text of a regular file of at most `limit` bytes; None when there is no file."""
    if not os.path.lexists(path):
        return None
    try:
        return input_checks.read_bytes(path, limit, what).decode("utf-8")
    except (input_checks.InputError, UnicodeDecodeError) as exc:
        raise WatchdogError(str(exc)) from None


def parse_fenced_file(text):
    """{name: {since, reason}} from the fenced set the watchdog wrote; WatchdogError for anything else."""
    if text is None:
        return {}
    try:
        value = input_checks.loads_json(text, "the fenced set")
    except input_checks.InputError as exc:
        raise WatchdogError(str(exc)) from None
    fenced = value.get("fenced") if isinstance(value, dict) and value.get("version") == 1 else None
    if not isinstance(fenced, dict):
        raise WatchdogError('the fenced set must be {"version": 1, "fenced": {NAME: {"since": TIME, "reason": TEXT}}}')
    out = {}
    for name, entry in fenced.items():
        if not NAME_RE.fullmatch(name) or not isinstance(entry, dict) or not input_checks.is_number(entry.get("since"), 0, 1e11):
            raise WatchdogError("the fenced set holds an entry that is not an instance's: %s" % _show(name))
        out[name] = {"since": float(entry["since"]), "reason": printable_reason(entry.get("reason", ""))}
    return out


def printable_reason(text):
    """A reason as the gateway role accepts it in the fenced set: printable, one line, at most MAX_REASON characters."""
    return "".join(c if c.isprintable() else " " for c in str(text))[:MAX_REASON]


def fenced_document(fenced):
    return (json.dumps({"version": 1, "fenced": fenced}, indent=2, sort_keys=True) + "\n").encode()


# --- the probe ---------------------------------------------------------------------------------


class Outcome:
    """What one probe found: ok, or a failure of `kind` (timeout, refused, http, error) with a reason."""

    def __init__(self, ok, kind="ok", reason="", tokens=None):
        self.ok, self.kind, self.reason, self.tokens = ok, kind, reason, tokens

    def __repr__(self):
        return "Outcome(%r, %r, %r)" % (self.ok, self.kind, self.reason)


def _expected_size(buffer):
    """None until the head is in `buffer`; then the whole answer's size, or -1 without a Content-Length (read to the end)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    found = re.search(rb"(?im)^content-length:[ \t]*([0-9]{1,12})[ \t]*\r?$", bytes(buffer[:end]))
    return end + 4 + int(found.group(1)) if found else -1


def http_exchange(port, request, deadline, limit):
    """(status, headers bytes, body bytes) of one request to 127.0.0.1:port, all of it before `deadline` (monotonic)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise socket.timeout("no time left")
    buffer, expected = bytearray(), None
    with socket.create_connection(("127.0.0.1", port), timeout=remaining) as sock:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(request)
        while expected is None or expected < 0 or len(buffer) < expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("deadline")
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                break
            buffer += data
            if len(buffer) > limit:
                raise WatchdogError("the answer is larger than %d bytes" % limit)
            if expected is None:
                expected = _expected_size(buffer)
    return _split_answer(bytes(buffer))


def _split_answer(data):
    head, sep, body = data.partition(b"\r\n\r\n")
    status = re.match(rb"^HTTP/1\.[01] ([0-9]{3})", head)
    if not sep or not status:
        raise WatchdogError("the answer is not HTTP")
    if re.search(rb"(?im)^transfer-encoding:[ \t]*chunked", head):
        body = _dechunk(body)
    return int(status.group(1)), head, body


def _dechunk(body):
    out, rest = [], body
    while rest:
        line, sep, rest = rest.partition(b"\r\n")
        size = int(line.split(b";")[0].strip() or b"0", 16) if sep and re.match(rb"^[0-9a-fA-F]{1,8}", line) else 0
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


def _request(method, path, key, body=b""):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1", "Connection: close", "User-Agent: gpufleet-watchdog", "Authorization: Bearer %s" % key]
    if method == "POST":
        lines += ["Content-Type: application/json", "Content-Length: %d" % len(body)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def completion_probe(port, served, key, timeout):
    """Outcome of one one-token completion, all of it within `timeout` seconds."""
    body = json.dumps({"model": served, "prompt": "ok", "max_tokens": 1}).encode()
    try:
        status, _headers, answer = http_exchange(port, _request("POST", "/v1/completions", key, body), time.monotonic() + timeout, MAX_ANSWER_BYTES)
    except socket.timeout:
        return Outcome(False, "timeout", "timed out after %.1f s" % timeout)
    except ConnectionRefusedError:
        return Outcome(False, "refused", "connection refused")
    except (OSError, WatchdogError) as exc:
        return Outcome(False, "error", "no answer (%s)" % (exc.strerror if isinstance(exc, OSError) and exc.strerror else exc))
    if status != 200:
        return Outcome(False, "http", "HTTP %d" % status)
    try:
        choices = json.loads(answer.decode("utf-8")).get("choices")
    except (ValueError, AttributeError):
        choices = None
    if not isinstance(choices, list) or not choices:
        return Outcome(False, "http", "HTTP 200 without a completion")
    return Outcome(True)


def tokens_in(text):
    """The sum of vLLM's prompt and generation token counters in a /metrics text; None when it has neither."""
    values = METRIC_RE.findall(text)
    if not values:
        return None
    try:
        return sum(float(v) for v in values)
    except ValueError:
        return None


def read_tokens(port, key, timeout=METRICS_TIMEOUT):
    """The tokens the engine has counted (prompt + generated), from the instance's /metrics; None when unknown."""
    try:
        status, _headers, body = http_exchange(port, _request("GET", "/metrics", key), time.monotonic() + timeout, MAX_METRICS_BYTES)
    except (OSError, WatchdogError):
        return None
    return tokens_in(body.decode("utf-8", "replace")) if status == 200 else None


# --- the host: systemctl, the nginx validator, the clock ----------------------------------------
SHOW_PROPERTIES = ("Id", "ActiveState", "SubState", "Result", "InvocationID", "NRestarts")


def parse_show(text):
    """{unit: {property: value}} from `systemctl show --property=...` of several units (blocks apart by blank lines)."""
    out = {}
    for block in re.split(r"\n[ \t]*\n", text):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            out[props["Id"]] = props
    return out


class Systemd:
    """systemctl and the validator, each run with a time limit; WatchdogError when one fails."""

    def __init__(self, timeout=COMMAND_TIMEOUT):
        self.timeout = timeout

    def _run(self, argv, what):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise WatchdogError("%s took longer than %g s" % (what, self.timeout)) from None
        except OSError as exc:
            raise WatchdogError("%s could not start: %s" % (what, exc.strerror or exc)) from None
        if done.returncode != 0:
            raise WatchdogError("%s failed (exit %d): %s" % (what, done.returncode, " ".join((done.stderr or done.stdout).split())[:400]))
        return done.stdout

    def show(self, units):
        text = self._run(["systemctl", "show", "--property=" + ",".join(SHOW_PROPERTIES), "--", *units], "systemctl show")
        return parse_show(text[: 1 << 20])

    def restart(self, unit):
        self._run(["systemctl", "restart", "--no-block", "--", unit], "systemctl restart %s" % unit)

    def reload_nginx(self):
        self._run(["systemctl", "reload", "nginx.service"], "systemctl reload nginx")

    def validate(self, validator, candidate, target):
        self._run([validator, candidate, target], "%s %s" % (os.path.basename(validator), target))


class Clock:
    def monotonic(self):
        return time.monotonic()

    def time(self):
        return time.time()

    def sleep(self, seconds):
        time.sleep(seconds)


def gateway_render(model, drained, fenced):
    """gateway_layout.local_servers_conf, imported when first used (it is written beside this module)."""
    from ansible_collections.gpufleet.serving.plugins.module_utils import gateway_layout  # noqa: PLC0415

    render = getattr(gateway_layout, "local_servers_conf", None)
    if render is None:
        raise WatchdogError("gateway_layout.py has no local_servers_conf: install the watchdog and gateway roles of one collection version")
    try:
        return render(model, drained, fenced)
    except gateway_layout.GatewayLayoutError as exc:
        raise WatchdogError(str(exc)) from None


def gateway_state(site_text, drained_text):
    """(site model, drained set) through gateway_layout; WatchdogError when either cannot be used."""
    from ansible_collections.gpufleet.serving.plugins.module_utils import gateway_layout  # noqa: PLC0415

    if site_text is None:
        raise WatchdogError("there is no site model (%s): run the gateway role on this host" % SITE_FILE)
    model, problems = gateway_layout.load_model(site_text)
    if problems:
        raise WatchdogError("the site model %s %s" % (SITE_FILE, problems[0]))
    drained, problems = gateway_layout.parse_drained(drained_text)
    if problems:
        raise WatchdogError("the drained set %s %s; the server lines are left as they are" % (DRAINED_FILE, problems[0]))
    return model, drained


# --- one instance --------------------------------------------------------------------------------
class Instance:
    """What the watchdog knows of one instance between cycles."""

    def __init__(self, item):
        self.name, self.port, self.unit, self.served = item["name"], item["port"], item["unit"], item["served_model_name"]
        self.label = "vllm@%s" % self.name
        self.state = SERVING
        self.failures = 0
        self.successes = 0
        self.invocation = None
        self.answered = False
        self.tokens = None
        self.probe_ok = False
        self.drained = False
        self.fenced_invocation = None
        self.fenced_at = 0.0
        self.since = 0.0
        self.reason = ""
        self.restart_at = 0.0
        self.fences_total = 0
        self.unit_restarts = 0

    def new_invocation(self, invocation):
        """Forget what the last process of the unit did when systemd started a new one."""
        if invocation != self.invocation:
            self.invocation = invocation
            self.answered = False
            self.failures = 0
            self.successes = 0
            self.tokens = None


def _print(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def metrics_text(instances, cycle_time):
    """The node_exporter textfile of one cycle (labels vllm_instance, never instance)."""
    rows = [
        ("gpufleet_watchdog_last_cycle_timestamp_seconds", "gauge", "When the watchdog last finished a cycle.", None),
        ("gpufleet_watchdog_probe_ok", "gauge", "1 when the last one-token probe of the instance answered.", lambda i: int(i.probe_ok)),
        ("gpufleet_watchdog_consecutive_failures", "gauge", "Probes the instance failed in a row.", lambda i: i.failures),
        ("gpufleet_watchdog_fenced", "gauge", "1 while the watchdog keeps the instance out of the server tier.", lambda i: int(i.state != SERVING)),
        ("gpufleet_watchdog_fences_total", "counter", "Times the watchdog fenced the instance (kept across its restarts).", lambda i: i.fences_total),
        ("gpufleet_vllm_unit_restarts_total", "counter", "systemd's NRestarts of the instance's unit.", lambda i: i.unit_restarts),
    ]
    lines = []
    for name, kind, text, value in rows:
        lines += ["# HELP %s %s" % (name, text), "# TYPE %s %s" % (name, kind)]
        if value is None:
            lines.append("%s %.3f" % (name, cycle_time))
            continue
        lines += ['%s{vllm_instance="%s"} %d' % (name, i.name, value(i)) for i in instances]
    return "\n".join(lines) + "\n"


def _unit_restarts(unit):
    text = unit.get("NRestarts", "")
    return int(text) if text.isdigit() and len(text) < 12 else 0


# --- the watchdog ----------------------------------------------------------------------------------
class Watchdog:
    """Probes, fences, restarts and unfences the instances of one host, one cycle at a time."""

    def __init__(self, config, system=None, clock=None, render=None, log=None, probe=None, tokens=None):
        self.config = config
        self.system = system or Systemd()
        self.clock = clock or Clock()
        self.render = render or gateway_render
        self.log = log or _print
        self.probe = probe or completion_probe
        self.tokens = tokens or read_tokens
        self.instances = [Instance(item) for item in config["instances"]]
        self.dirty = False
        self.reload_pending = False
        self.state_changed = False
        self._said = set()

    def path(self, key, name):
        return os.path.join(self.config[key], name)

    def once(self, key, line):
        """Log a line the first time `key` comes up (a problem that lasts is said once, not every cycle)."""
        if key not in self._said:
            self._said.add(key)
            self.log(line)

    # --- start ---------------------------------------------------------------------------------
    def start(self):
        """Take up the fenced set and the fence counts an earlier run of the watchdog left."""
        try:
            fenced = parse_fenced_file(read_text(self.path("nginx_dir", FENCED_FILE), MAX_STATE_BYTES, "the fenced set"))
        except WatchdogError as exc:
            self.log("the fenced set %s cannot be used (%s); starting with no instance fenced" % (self.path("nginx_dir", FENCED_FILE), exc))
            fenced, self.dirty = {}, True
        now, wall = self.clock.monotonic(), self.clock.time()
        by_name = {i.name: i for i in self.instances}
        for name, entry in sorted(fenced.items()):
            inst = by_name.get(name)
            if inst is None:
                self.log("vllm@%s: in the fenced set but not in this host's plan; dropped from it" % name)
                self.dirty = True
                continue
            inst.state, inst.since, inst.reason = FENCED, entry["since"], entry["reason"]
            inst.fenced_at, inst.restart_at = now - max(0.0, wall - entry["since"]), now
            self.log("%s: fenced since an earlier run (%s); put back when it answers" % (inst.label, entry["reason"] or "no reason recorded"))
        self._load_counts()

    def _load_counts(self):
        try:
            text = read_text(self.path("state_dir", STATE_FILE), MAX_STATE_BYTES, "the watchdog's state")
            value = input_checks.loads_json(text, "the watchdog's state") if text is not None else {}
        except (WatchdogError, input_checks.InputError) as exc:
            self.log("the watchdog's state cannot be read (%s); fence counts start at 0" % exc)
            return
        counts = value.get("fences_total") if isinstance(value, dict) and value.get("version") == STATE_VERSION else None
        for inst in self.instances:
            found = counts.get(inst.name) if isinstance(counts, dict) else None
            inst.fences_total = found if input_checks.is_int(found, 0, 10**9) else 0

    # --- one cycle -----------------------------------------------------------------------------
    def cycle(self):
        """Probe every instance once, act on what was found, write the metrics."""
        now = self.clock.monotonic()
        drained = self._drained_names()
        units = self._units()
        key = self._key()
        targets = [i for i in self.instances if key and i.name not in drained and units.get(i.unit, {}).get("ActiveState") == "active"]
        outcomes = self._probe_all(targets, key)
        changed, restarts = False, []
        for inst in self.instances:
            unit = units.get(inst.unit)
            action = self._judge(inst, unit, outcomes.get(inst.name), inst.name in drained, now) if unit and key else None
            if action == "fence":
                self._fence(inst, now)
            elif action == "unfence":
                self._unfence(inst, now)
            changed = changed or action in ("fence", "unfence")
            if action in ("fence", "restart"):
                restarts.append(inst)
        # While an instance is fenced its marks are checked every cycle: a run of the gateway role that
        # read the fenced set just before a fence cannot leave the instance in rotation for long.
        if changed or self.dirty or self.reload_pending or any(i.state != SERVING for i in self.instances):
            self._apply()
        for inst in restarts:
            self._restart(inst, now)
        self._save_counts()
        self._write_metrics()

    def _drained_names(self):
        """The server-tier names the operator drained (a rolling update restarts them): not probed."""
        from ansible_collections.gpufleet.serving.plugins.module_utils import gateway_layout  # noqa: PLC0415

        path = self.path("nginx_dir", DRAINED_FILE)
        try:
            drained, problems = gateway_layout.parse_drained(read_text(path, gateway_layout.MAX_STATE_BYTES, "the drained set"))
        except WatchdogError as exc:
            drained, problems = gateway_layout.empty_drained(), [str(exc)]
        if problems:
            self.once("drained:" + problems[0], "the drained set %s cannot be used (%s); no instance is skipped as drained" % (path, problems[0]))
        return set(drained["server"])

    def _units(self):
        try:
            return self.system.show([i.unit for i in self.instances])
        except WatchdogError as exc:
            self.log("cannot read the units' states (%s); no instance is judged this cycle" % exc)
            return {}

    def _key(self):
        try:
            key = read_api_key(self.config["key_file"])
        except WatchdogError as exc:
            self.once("key:" + str(exc), "cannot read the instances' key (%s); no instance is probed until it can" % exc)
            return None
        self._said = {k for k in self._said if not k.startswith("key:")}
        return key

    def _probe_one(self, inst, key):
        outcome = self.probe(inst.port, inst.served, key, self.config["probe_timeout"])
        if outcome.kind == "timeout":
            outcome.tokens = self.tokens(inst.port, key)
        return outcome

    def _probe_all(self, targets, key):
        """{name: Outcome}; every probe ends by its own deadline, so the pool ends too."""
        if not targets:
            return {}
        with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(targets)), thread_name_prefix="probe") as pool:
            futures = {inst.name: pool.submit(self._probe_one, inst, key) for inst in targets}
            return {name: future.result() for name, future in futures.items()}

    # --- judging ---------------------------------------------------------------------------------
    def _judge(self, inst, unit, outcome, drained, now):
        """None, "fence", "unfence" or "restart" for one instance after its probe."""
        invocation = unit.get("InvocationID", "")
        inst.new_invocation(invocation if INVOCATION_RE.fullmatch(invocation) else "")
        inst.unit_restarts = _unit_restarts(unit)
        if drained:
            if not inst.drained:
                self.log("%s: skipped: drained by the operator" % inst.label)
            inst.drained, inst.failures, inst.successes, inst.probe_ok = True, 0, 0, False
            return None
        if inst.drained:
            inst.drained = False
            self.log("%s: no longer drained; probed again" % inst.label)
        if inst.state == SERVING:
            return self._judge_serving(inst, unit, outcome)
        return self._judge_fenced(inst, unit, outcome, now)

    def _failure(self, inst, outcome):
        """The reason a failed probe counts, or None when a timed-out engine is busy rather than hung."""
        if outcome.kind != "timeout":
            inst.tokens = None
            return outcome.reason
        previous, inst.tokens = inst.tokens, outcome.tokens
        if outcome.tokens is None:
            return outcome.reason + "; /metrics gave no token counts"
        if previous is None:
            return outcome.reason + "; no earlier token count to compare"
        if outcome.tokens > previous:
            self.log(
                "%s: busy, not hung: the probe %s but the engine counted %d tokens more; not counted" % (inst.label, outcome.reason, outcome.tokens - previous)
            )
            return None
        return outcome.reason + "; no tokens generated since the last probe"

    def _count_failure(self, inst, outcome):
        """True when this failed probe makes `failures` in a row."""
        reason = self._failure(inst, outcome)
        if reason is None:
            inst.failures = 0
            return False
        inst.failures += 1
        inst.reason = reason
        self.log("%s: probe failed (%d of %d): %s" % (inst.label, inst.failures, self.config["failures"], reason))
        return inst.failures >= self.config["failures"]

    def _judge_serving(self, inst, unit, outcome):
        if unit.get("ActiveState") != "active" or outcome is None:
            inst.probe_ok, inst.failures = False, 0
            return None
        inst.probe_ok = outcome.ok
        if outcome.ok:
            inst.answered, inst.failures, inst.tokens = True, 0, None
            return None
        if not inst.answered:
            # Not yet answered since this start: still loading, not hung.
            return None
        return "fence" if self._count_failure(inst, outcome) else None

    def _judge_fenced(self, inst, unit, outcome, now):
        active = unit.get("ActiveState")
        if active == "failed":
            if inst.state != FAILED:
                inst.state = FAILED
                why = "start limit" if unit.get("Result") == "start-limit-hit" else unit.get("Result") or "unknown result"
                self.log("%s: failed (%s); stays fenced" % (inst.label, why))
            inst.probe_ok = False
            return None
        if inst.state == FAILED and active in ("active", "activating"):
            inst.state, inst.restart_at = FENCED, now
            self.log("%s: started again (by the operator); put back when it answers" % inst.label)
        if inst.state == FAILED or active != "active" or outcome is None:
            inst.successes, inst.probe_ok = 0, False
            return None
        return self._judge_restarted(inst, outcome, now)

    def _judge_restarted(self, inst, outcome, now):
        fresh = inst.fenced_invocation is None or inst.invocation != inst.fenced_invocation
        inst.probe_ok = outcome.ok
        if outcome.ok and fresh:
            inst.answered, inst.failures, inst.tokens = True, 0, None
            inst.successes += 1
            return "unfence" if inst.successes >= self.config["ready_successes"] else None
        if not outcome.ok:
            inst.successes = 0
            if fresh and inst.answered:
                if self._count_failure(inst, outcome):
                    self.log("%s: failed %d probes again after its restart" % (inst.label, inst.failures))
                    return "restart"
                return None
        if now - inst.restart_at > self.config["start_timeout"]:
            self.log("%s: no answer from a new start within %g s of the restart" % (inst.label, self.config["start_timeout"]))
            return "restart"
        return None

    # --- acting ----------------------------------------------------------------------------------
    def _fence(self, inst, now):
        inst.state, inst.fenced_invocation = FENCED, inst.invocation
        inst.fenced_at, inst.since = now, self.clock.time()
        inst.fences_total += 1
        self.state_changed = True
        self.log("%s: fenced after %d failed probes (%s)" % (inst.label, inst.failures, inst.reason))
        inst.failures, inst.successes = 0, 0

    def _unfence(self, inst, now):
        inst.state, inst.failures, inst.successes, inst.reason = SERVING, 0, 0, ""
        self.log("%s: back in service after %d s" % (inst.label, round(now - inst.fenced_at)))

    def _restart(self, inst, now):
        inst.restart_at = now
        self.log("%s: restarting" % inst.label)
        try:
            self.system.restart(inst.unit)
        except WatchdogError as exc:
            self.log("%s: could not restart: %s" % (inst.label, exc))

    def _apply(self):
        """Write the fenced set, then the server tier's server lines (tested, renamed, nginx reloaded)."""
        fenced = {i.name: {"since": i.since, "reason": printable_reason(i.reason)} for i in self.instances if i.state != SERVING}
        try:
            document, path = fenced_document(fenced), self.path("nginx_dir", FENCED_FILE)
            try:
                current = read_text(path, MAX_STATE_BYTES, "the fenced set")
            except WatchdogError:
                current = None  # not a file this watchdog wrote (a FIFO, /dev/zero, too large, not UTF-8): replaced
            if current != document.decode("utf-8"):
                atomic_write(path, document, 0o640)
            self._write_servers(sorted(fenced))
        except Exception as exc:  # pylint: disable=broad-except  # whatever fails here, the restarts of this cycle still happen
            self.dirty = True
            self.log("cannot update the server tier's server lines (%s); tried again next cycle" % exc)
            return
        self.dirty = False

    def _write_servers(self, names):
        nginx = self.config["nginx_dir"]
        model, drained = gateway_state(
            read_text(self.path("nginx_dir", SITE_FILE), MAX_SITE_BYTES, "the site model"),
            read_text(self.path("nginx_dir", DRAINED_FILE), MAX_STATE_BYTES, "the drained set"),
        )
        text = self.render(model, drained, names)
        target = self.path("nginx_dir", SERVERS_FILE)
        if read_text(target, MAX_SITE_BYTES, "the server lines") != text:
            candidate = _write_temp(nginx, SERVERS_FILE, text.encode("utf-8"), 0o644)
            try:
                self.system.validate(self.config["validator"], candidate, target)
                os.replace(candidate, target)
            finally:
                _remove(candidate)
            _sync_folder(nginx)
            self.reload_pending = True
        if self.reload_pending:
            self.system.reload_nginx()
            self.reload_pending = False

    # --- what is kept ----------------------------------------------------------------------------
    def _save_counts(self):
        if not self.state_changed or not os.path.isdir(self.config["state_dir"]):
            return
        counts = {i.name: i.fences_total for i in self.instances}
        try:
            atomic_write(self.path("state_dir", STATE_FILE), (json.dumps({"version": STATE_VERSION, "fences_total": counts}) + "\n").encode(), 0o640)
        except OSError as exc:
            self.once("state:%s" % exc, "cannot keep the fence counts in %s (%s)" % (self.config["state_dir"], exc))
            return
        self.state_changed = False

    def _write_metrics(self):
        folder = self.config["textfile_dir"]
        if not os.path.isdir(folder):
            return
        try:
            atomic_write(os.path.join(folder, METRICS_FILE), metrics_text(self.instances, self.clock.time()).encode(), 0o644)
        except OSError as exc:
            self.once("metrics:%s" % exc, "cannot write the metrics in %s (%s)" % (folder, exc))

    def run(self, cycles=None):
        """Cycle every `interval` seconds (start to start), for ever or `cycles` times."""
        self.start()
        done = 0
        while cycles is None or done < cycles:
            began = self.clock.monotonic()
            try:
                self.cycle()
            except Exception as exc:  # pylint: disable=broad-except  # the daemon goes on; the next cycle reads the host afresh
                self.log("this cycle stopped on an unexpected %s (%s); the next one starts afresh" % (type(exc).__name__, exc))
            done += 1
            if cycles is None or done < cycles:
                self.clock.sleep(max(0.0, began + self.config["interval"] - self.clock.monotonic()))


def _stop(signum, _frame):
    """SIGTERM (systemctl stop): leave through SystemExit, so that a file being written is removed, not left half done."""
    _print("gpufleet-watchdog: stopping on signal %d" % signum)
    raise SystemExit(0)


def main(argv=None):
    """gpufleet-watchdog --config /etc/gpufleet/watchdog.json [--cycles N] [--check]"""
    parser = argparse.ArgumentParser(prog="gpufleet-watchdog", description="Fence hung vLLM engines on this host (gpufleet.serving).")
    parser.add_argument("--config", required=True, help="the JSON the watchdog role writes (/etc/gpufleet/watchdog.json)")
    parser.add_argument("--cycles", type=int, default=None, help="stop after this many cycles (1-100000; default: run until stopped)")
    parser.add_argument("--check", action="store_true", help="check the configuration and exit (the role validates the file with it)")
    args = parser.parse_args(argv)
    if args.cycles is not None and not 1 <= args.cycles <= 100000:
        parser.error("--cycles must be from 1 to 100000")
    try:
        config = load_config(args.config)
    except WatchdogError as exc:
        sys.stderr.write("gpufleet-watchdog: %s\n" % exc)
        sys.stderr.flush()
        return 2
    if args.check:
        return 0
    signal.signal(signal.SIGTERM, _stop)
    _print("gpufleet-watchdog: watching %s every %g s" % (", ".join("vllm@" + i["name"] for i in config["instances"]), config["interval"]))
    Watchdog(config).run(args.cycles)
    return 0
