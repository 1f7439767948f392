# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The launch of vLLM's router (vllm-router, PyPI) for a cache-aware pool of the fleet tier.

The site model (gateway_layout.site_model) holds one `cache_router` per pool whose
model has `balance: cache_aware` in gpufleet_models: its unit name, its loopback
ports, its workers' URLs (the fleet tier's loopback routes to each instance of the
pool). router_argv turns one into the router's arguments and router_exec_start
into the unit's ExecStart= line, the only launch of the router; the gateway role's
unit template prints that line and nothing else of it.

Everything here is pure: no host, no file, no network.
"""

from __future__ import annotations

import re

from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_launch

ROUTER_STARTUP_TIMEOUT_SEC = 30
# What a worker URL may be: the fleet tier's loopback route to one worker upstream.
WORKER_URL_RE = re.compile(r"^http://127\.0\.0\.1:[0-9]{1,5}/_gpufleet/worker/gpufleet_worker_[0-9]{1,4}_[0-9]{1,6}$")
UNIT_RE = re.compile(r"^gpufleet-router-[0-9]{1,4}$")
POLICIES = ("cache_aware",)
MAX_WORKERS = 4096


class CacheRouterError(ValueError):
    """A router entry of the site model that cannot be launched."""


def _port(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise CacheRouterError("the router's %s is %s, not a port from 1 to 65535" % (what, repr(value)[:40]))
    return value


def _seconds(value, what, high):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise CacheRouterError("the router's %s is %s, not a whole number of seconds from 1 to %d" % (what, repr(value)[:40], high))
    return value


def check_router(router):
    """The router entry itself when every value is one the launch may carry; CacheRouterError otherwise."""
    if not isinstance(router, dict):
        raise CacheRouterError("a router entry must be a mapping, not %s" % repr(router)[:60])
    unit = router.get("unit")
    if not isinstance(unit, str) or not UNIT_RE.match(unit):
        raise CacheRouterError("the router's unit is %s, not gpufleet-router-<n>" % repr(unit)[:60])
    if router.get("policy") not in POLICIES:
        raise CacheRouterError("%s: the policy is %s, not one of %s" % (unit, repr(router.get("policy"))[:40], ", ".join(POLICIES)))
    _port(router.get("port"), "port")
    _port(router.get("metrics_port"), "metrics port")
    _seconds(router.get("health_interval"), "health check interval", 3600)
    _seconds(router.get("request_timeout"), "request timeout", 86400)
    workers = router.get("workers")
    if not isinstance(workers, list) or not workers or len(workers) > MAX_WORKERS:
        raise CacheRouterError(
            "%s has %s workers: a router needs 1 to %d (the pool's instances, from the servers' plans)"
            % (unit, len(workers) if isinstance(workers, list) else "no", MAX_WORKERS)
        )
    bad = [w for w in workers if not isinstance(w, str) or not WORKER_URL_RE.match(w)]
    if bad:
        raise CacheRouterError("%s has workers that are not the fleet tier's loopback routes: %s" % (unit, ", ".join(repr(w)[:80] for w in bad[:3])))
    return router


def router_argv(router):
    """The arguments of one pool's vllm-router (after the program): loopback only, the cache-aware policy over
    the pool's workers, health checks every few seconds, requests bounded by the gateway's read timeout."""
    check_router(router)
    return [
        "--host",
        "127.0.0.1",
        "--port",
        str(router["port"]),
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(router["metrics_port"]),
        "--policy",
        router["policy"],
        "--worker-urls",
        *router["workers"],
        "--worker-startup-timeout-secs",
        str(ROUTER_STARTUP_TIMEOUT_SEC),
        "--health-check-interval-secs",
        str(router["health_interval"]),
        "--request-timeout-secs",
        str(router["request_timeout"]),
        "--log-level",
        "warning",
    ]


def router_exec_start(program, router):
    """ExecStart= of one pool's router unit: the program's absolute path, then router_argv, quoted for systemd."""
    if not isinstance(program, str) or not vllm_launch.PATH_RE.match(program):
        raise CacheRouterError("the router's program must be an absolute path of plain characters, not %s" % repr(program)[:70])
    return " ".join([program] + [vllm_launch.systemd_quote(word) for word in router_argv(router)])


def backend_instances(plans):
    """{server: [instance names]} from {server: plan} (a plan as the plan role publishes it, or as the vllm role
    leaves it on the server); a server whose plan is missing, refused or without instances is left out."""
    out = {}
    for server, plan in (plans or {}).items():
        instances = plan.get("instances") if isinstance(plan, dict) else None
        if not isinstance(instances, list):
            continue
        # A group's follower serves no HTTP: only its leader is a worker.
        names = [str(i.get("name")) for i in instances if isinstance(i, dict) and i.get("name") not in (None, "") and i.get("role") != "follower"]
        if names:
            out[server] = names
    return out
