# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the monitoring role writes: Prometheus's scrape configuration from the inventory and the plans,
Alertmanager's configuration, and the model of the nginx file that gives Prometheus each vLLM instance's
/metrics. Pure functions; every value that reaches a file is checked here first.

Labels every target gets (the alert rules and dashboards rely on them): `server`, the inventory name of
the host; vLLM targets also `vllm_instance`, the plan's instance name (Prometheus keeps `instance` for
the address it scraped).
"""

from __future__ import annotations

import ipaddress
import json
import re

from ansible_collections.gpufleet.serving.plugins.module_utils.role_inputs import hostname_ok

# The ports of the exporters (Debian's packages' defaults, DCGM's own) and of the server tier's
# metrics server; the role's vars/main.yml passes the same numbers.
PORTS = {"node": 9100, "nginx": 9113, "mtail": 3903, "dcgm": 9400, "vllm": 9180}
JOBS = ("prometheus", "alertmanager", "node", "nginx", "mtail", "dcgm", "vllm")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
INVENTORY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
DURATION_RE = re.compile(r"^([1-9][0-9]{0,5})(ms|s|m|h)$")
RETENTION_RE = re.compile(r"^[1-9][0-9]{0,4}[hdwy]$")
WEBHOOK_RE = re.compile(r"^https?://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]{1,2000}$")
DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
MAX_HOSTS = 4096
MAX_INSTANCES = 64
# Prometheus's own default; shorter when the scrape interval is.
SCRAPE_TIMEOUT_S = 10


class MonitoringError(ValueError):
    """A value that cannot go into the monitoring configuration; the message names it."""


def _show(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# A host name (RFC 1123 labels) or an IP address, as Prometheus dials it: the role inputs' own check.
address_ok = hostname_ok


def _target(address, port):
    return "[%s]:%d" % (address, port) if ":" in address else "%s:%d" % (address, port)


def seconds(duration, what):
    """A Prometheus duration (5s, 1m, 500ms) in seconds; MonitoringError naming `what` otherwise."""
    match = DURATION_RE.fullmatch(duration) if isinstance(duration, str) else None
    if not match:
        raise MonitoringError("%s must be a duration such as 15s or 1m, not %s" % (what, _show(duration)))
    value = int(match.group(1)) * DURATION_SECONDS[match.group(2)]
    if not 1 <= value <= 3600:
        raise MonitoringError("%s must be between 1s and 1h, not %s" % (what, duration))
    return value


def instances_of(plan, host):
    """[{name, port}] of a plan (the plan role's gpufleet_plan or the vllm role's plan file), checked."""
    if not isinstance(plan, dict) or not isinstance(plan.get("instances"), list):
        raise MonitoringError("the plan of %s has no instances list: run the plan and vllm roles on it first" % host)
    out = []
    for item in plan["instances"]:
        if isinstance(item, dict) and item.get("role") == "follower":
            continue  # a group's follower serves no HTTP (no /metrics): its leader's figures cover the group
        name = item.get("name") if isinstance(item, dict) else None
        port = item.get("port") if isinstance(item, dict) else None
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise MonitoringError("the plan of %s names an instance %s: instance names are letters, digits, '.', '_', '-'" % (host, _show(name)))
        if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
            raise MonitoringError("the plan of %s gives instance %s the port %s: it must be a number from 1024 to 65535" % (host, name, _show(port)))
        out.append({"name": name, "port": port})
    if len(out) > MAX_INSTANCES or len({i["name"] for i in out}) != len(out) or len({i["port"] for i in out}) != len(out):
        raise MonitoringError("the plan of %s has repeated instance names or ports, or more than %d instances" % (host, MAX_INSTANCES))
    return out


def check_host(host):
    """One host of the fleet as the role describes it: {name, address, nginx, cuda, instances}."""
    if not isinstance(host, dict):
        raise MonitoringError("a fleet host must be a mapping, not %s" % _show(host))
    name = host.get("name")
    if not isinstance(name, str) or not INVENTORY_NAME_RE.fullmatch(name):
        raise MonitoringError("the inventory name %s cannot be a Prometheus label value here: use letters, digits, '.', '_', '-'" % _show(name))
    if not address_ok(host.get("address")):
        raise MonitoringError(
            "%s: its monitoring_address (else gateway_address, else its inventory name) %s must be a host name or an IP address"
            % (name, _show(host.get("address")))
        )
    instances = host.get("instances")
    if instances is not None:
        instances = instances_of({"instances": instances}, name)
    return {
        "name": name,
        "address": host["address"],
        "nginx": host.get("nginx") is True,
        "cuda": host.get("cuda") is True,
        "instances": instances,
    }


def scrape_configs(monitor, hosts, prometheus="127.0.0.1:9090", alertmanager="127.0.0.1:9093"):
    """Prometheus's scrape_configs: one job per kind of exporter, one target per host, `server` on each."""
    if not isinstance(monitor, str) or not INVENTORY_NAME_RE.fullmatch(monitor):
        raise MonitoringError("the monitoring host's name %s is not usable as a label" % _show(monitor))
    if not isinstance(hosts, list) or len(hosts) > MAX_HOSTS:
        raise MonitoringError("the fleet must be a list of at most %d hosts" % MAX_HOSTS)
    fleet = [check_host(h) for h in hosts]
    if len({h["name"] for h in fleet}) != len(fleet):
        raise MonitoringError("a host is listed twice in the fleet")
    jobs = {job: [] for job in JOBS}
    jobs["prometheus"].append({"targets": [prometheus], "labels": {"server": monitor}})
    jobs["alertmanager"].append({"targets": [alertmanager], "labels": {"server": monitor}})
    for host in sorted(fleet, key=lambda h: h["name"]):
        kinds = ["node"] + (["nginx", "mtail"] if host["nginx"] else []) + (["dcgm"] if host["cuda"] else [])
        for kind in kinds:
            jobs[kind].append({"targets": [_target(host["address"], PORTS[kind])], "labels": {"server": host["name"]}})
        for inst in host["instances"] or []:
            labels = {"server": host["name"], "vllm_instance": inst["name"], "__metrics_path__": "/metrics/" + inst["name"]}
            jobs["vllm"].append({"targets": [_target(host["address"], PORTS["vllm"])], "labels": labels})
    out = []
    for job in JOBS:
        if jobs[job]:
            out.append({"job_name": job, "static_configs": jobs[job]})
    return out


LISTEN_RE = re.compile(r"^(?:(?P<host>[0-9.]{7,15}|\[[0-9A-Fa-f:.]{2,45}\]|localhost))?:(?P<port>[0-9]{1,5})$")


def listen_target(listen, what):
    """A listen address (127.0.0.1:9090, [::1]:9090, :9090) checked, and the address to dial it on this host."""
    match = LISTEN_RE.fullmatch(listen) if isinstance(listen, str) else None
    port = int(match.group("port")) if match else 0
    host = (match.group("host") or "") if match else ""
    if host and host != "localhost":
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            match = None
    if not match or not 1024 <= port <= 65535:
        raise MonitoringError(
            "%s must be ADDRESS:PORT with an IP address (or none: every address) and a port from 1024 to 65535, not %s" % (what, _show(listen))
        )
    if host in ("", "localhost", "0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return "%s:%d" % (host, port)


def prometheus_config(monitor, hosts, settings):
    """The whole prometheus.yml: settings has scrape_interval, rules_glob, prometheus_listen, alertmanager_listen."""
    interval = settings.get("scrape_interval")
    interval_s = seconds(interval, "monitoring_scrape_interval")
    timeout = interval if interval_s < SCRAPE_TIMEOUT_S else "%ds" % SCRAPE_TIMEOUT_S
    prometheus = listen_target(settings.get("prometheus_listen", "127.0.0.1:9090"), "monitoring_prometheus_listen")
    alertmanager = listen_target(settings.get("alertmanager_listen", "127.0.0.1:9093"), "monitoring_alertmanager_listen")
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": timeout, "evaluation_interval": interval},
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "rule_files": [settings["rules_glob"]],
        "scrape_configs": scrape_configs(monitor, hosts, prometheus, alertmanager),
    }


def alertmanager_config(webhooks):
    """alertmanager.yml: every alert grouped by name and server, to the webhooks given (none: kept in Alertmanager)."""
    if not isinstance(webhooks, list) or len(webhooks) > 16:
        raise MonitoringError("monitoring_alert_webhooks must be a list of at most 16 URLs")
    for url in webhooks:
        if not isinstance(url, str) or not WEBHOOK_RE.fullmatch(url):
            raise MonitoringError("monitoring_alert_webhooks: %s is not an http:// or https:// URL" % _show(url))
    receiver = {"name": "gpufleet"}
    if webhooks:
        receiver["webhook_configs"] = [{"url": url, "send_resolved": True} for url in webhooks]
    return {
        "route": {
            "receiver": "gpufleet",
            "group_by": ["alertname", "server"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        # A critical alert of a server silences its warnings of the same instance.
        "inhibit_rules": [
            {
                "source_matchers": ["severity = critical"],
                "target_matchers": ["severity = warning"],
                "equal": ["server", "vllm_instance"],
            }
        ],
        "receivers": [receiver],
    }


def _network(value, what):
    try:
        net = ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        raise MonitoringError("%s: %s is not an IP address or a CIDR range" % (what, _show(value))) from None
    if net.prefixlen == 0:
        raise MonitoringError("%s may not hold %s: that opens the metrics to every address" % (what, value))
    return str(net) if net.num_addresses > 1 else str(net.network_address)


def allowed_networks(resolved, extra):
    """The addresses the exporters and the metrics port take connections from: the monitoring hosts'
    (resolved on this host), monitoring_allow's and loopback; sorted, without repeats."""
    found = {"127.0.0.1", "::1"}
    for name, addresses in sorted((resolved or {}).items()):
        if not addresses:
            raise MonitoringError(
                "the monitoring host %s does not resolve on this host: set its monitoring_address, or fix its name in DNS or /etc/hosts" % name
            )
        for address in addresses:
            found.add(_network(address, "the address of %s" % name))
    if not isinstance(extra, list) or len(extra) > 256:
        raise MonitoringError("monitoring_allow must be a list of at most 256 addresses or CIDR ranges")
    for value in extra:
        found.add(_network(value, "monitoring_allow"))
    return sorted(found, key=lambda n: (":" in n, n))


def metrics_server(instances, allow, port=PORTS["vllm"]):
    """The model of the server tier's metrics server: location /metrics/<instance> for each instance, to its
    loopback /metrics, open to `allow` only."""
    checked = instances_of({"instances": instances}, "this host")
    if not isinstance(port, int) or not 1024 <= port <= 65535:
        raise MonitoringError("the metrics port must be a number from 1024 to 65535, not %s" % _show(port))
    if not isinstance(allow, list) or not allow:
        raise MonitoringError("the metrics server needs the addresses it is open to")
    return {"port": port, "allow": [_network(a, "the metrics server's allow list") for a in allow], "instances": checked}


def plan_value(value, host):
    """A plan given as a dict (the plan role's gpufleet_plan) or as the vllm role's JSON plan file's text;
    None for no plan (ansible-core before 2.19 renders a task's `none` as an empty string)."""
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise MonitoringError("the plan file of %s is not JSON: run the vllm role on it again" % host) from None
    return value


def fleet(hosts, host_vars, nginx_hosts, plans):
    """The hosts Prometheus scrapes, as check_host takes them, and the GPU servers whose plan is unknown.

    hosts: every inventory host to watch; host_vars: host -> its monitoring_address/gateway_address;
    nginx_hosts: the hosts that run the gateway role's nginx (fleet or server tier); plans: GPU server ->
    its plan (dict, JSON text, or None when it could not be read)."""
    out, unknown = [], []
    for name in hosts:
        own = host_vars.get(name) or {}
        entry = {"name": name, "address": own.get("monitoring_address") or own.get("gateway_address") or name, "nginx": name in nginx_hosts}
        if name in plans:
            plan = plan_value(plans[name], name)
            if plan is None:
                unknown.append(name)
            else:
                entry["instances"] = instances_of(plan, name)
                entry["cuda"] = plan.get("device") == "cuda"
        out.append(entry)
    return out, unknown
