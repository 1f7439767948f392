# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the gateway role's nginx site file prints, as plain data.

The gateway role's variables (checked by role_inputs before a host is
touched) go in; out comes one dict, the site model, that
roles/gateway/templates/gpufleet.conf.j2 prints and nothing else: the
upstreams with their server lines, the listen lines, the allow lists, the
locations. The model also carries the drain marks (`down`) of the upstream
servers, from the drained set the host keeps (/etc/nginx/gpufleet/drained.json):
the drain entry point and a normal run of the role render the same model
through the same template, so the template is the only writer of the site
file and a server left drained stays drained.

The server tier's `server` lines are not in the site file but in an include
of their own (/etc/nginx/gpufleet/local-servers.conf), printed by
local_servers_conf from the model, the drained set and the fenced set
(/etc/nginx/gpufleet/fenced.json, which only the watchdog writes): the gateway
role and the watchdog write that file with the same function, so an instance
is `down` whoever wrote the file last.

Everything here is pure: no host, no file, no network.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping

# The site model's shape (site.json); version 2 keeps the server tier's
# servers in an include file and the retry settings per tier; version 3 gives
# the fleet tier one upstream per model (`upstreams`) and the router.
MODEL_VERSION = 3
# The drained set's and the fenced set's shape.
STATE_VERSION = 1
TIERS = ("server", "fleet")
# The names a drained set may hold: instance names (server tier) and GPU
# servers' names (fleet tier), as role_inputs' `name` check allows them.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_DRAINED = 4096
# The state files are read whole: a drained set is small, a site model at most
# a few thousand upstream servers.
MAX_STATE_BYTES = 1 << 20
MAX_MODEL_BYTES = 16 << 20
LOOPBACK = ("127.0.0.1", "::1")
# The server tier's upstreams (gpufleet_local and one per instance), included at nginx's http level.
LOCAL_SERVERS_FILE = "/etc/nginx/gpufleet/local-servers.conf"
# What an upstream server line may print, checked again when the line is
# printed (the model may come from a file on the host).
_HOST_RE = re.compile(r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]{2,45}\])$")
_COMMENT_RE = re.compile(r"^[A-Za-z0-9@._:()\[\] -]{1,200}$")
# The watchdog reads at most 500 characters of a reason back (fence_watchdog.parse_fenced_file).
MAX_REASON = 500
# Retrying at the fleet tier: a 503 of a server tier (no instance of that
# server took the request) moves the request to another GPU server, POSTs
# included; the request body is buffered so that it can be sent again.
# README.md, "Streaming and failures", says why this is safe.
SERVER_NEXT_UPSTREAM = "error timeout"
FLEET_NEXT_UPSTREAM = "error timeout http_503 non_idempotent"
FLEET_BODY_BUFFER = "1m"
# The fleet tier's upstream: one, or one per model of gpufleet_models (gpufleet_fleet_1, _2, ...).
FLEET_UPSTREAM = "gpufleet_fleet"
# The njs module of a fleet tier with several models (roles/gateway/files/gpufleet-router.js): its
# handlers route a request by the model it names, list the models and answer /health.
ROUTER_IMPORT = "gpufleet"
# What /v1/models and /health subrequests of the router may bring back from one pool.
ROUTER_REPLY_BUFFER = "64k"
# A pool with `balance: cache_aware` (gpufleet_models) is served by vLLM's own router (vllm-router, PyPI):
# the fleet tier's upstream of that model is the router on loopback, and the router's workers are the
# pool's instances, each reached through an upstream of the fleet tier (so that a drained GPU server is
# `down` for the router too) and the server tier's route to that one instance (so that a drained or
# fenced instance is `down` there).
CACHE_AWARE = "cache_aware"
# The server tier's route to one instance (the routers' workers), and the fleet tier's loopback route to
# one worker's upstream.
INSTANCE_PREFIX = "/_gpufleet/instance/"
WORKER_PREFIX = "/_gpufleet/worker/"
# vLLM's endpoints that turn a request into its tokens (registered by --enable-scale-out), which the
# router asks every worker before it picks one.
RENDER_PATHS = {"/v1/completions": "/v1/completions/render", "/v1/chat/completions": "/v1/chat/completions/render"}
ROUTER_UNIT = "gpufleet-router-%d"
BALANCES = ("least_conn", "round_robin", "hash_header")


class GatewayLayoutError(ValueError):
    """Inputs the site model cannot be built from."""


# The most a plan file read from a server (slurp) may hold.
MAX_PLAN_CHARS = 4 << 20


def plans_read(results):
    """server -> the plan read from its plan file, from the results of a slurp loop over servers (item: the server).

    A result without readable JSON (not reached, no file, too large, not a plan) gives None for its server."""
    found = {}
    for result in results or []:
        if not isinstance(result, Mapping) or not isinstance(result.get("item"), str):
            continue
        content, plan = result.get("content"), None
        if isinstance(content, str) and len(content) <= MAX_PLAN_CHARS:
            try:
                plan = json.loads(base64.b64decode(content, validate=True))
            except (binascii.Error, ValueError, TypeError):
                plan = None
        found[result["item"]] = plan if isinstance(plan, Mapping) else None
    return found


def group_follower(plan):
    """True when plan makes its server a follower of a group of servers (node_rank above 0): it serves no HTTP."""
    group = plan.get("group") if isinstance(plan, Mapping) else None
    rank = group.get("node_rank") if isinstance(group, Mapping) else None
    return isinstance(rank, int) and not isinstance(rank, bool) and rank > 0


def _int_or_raw(value):
    """An int for an int or a string of digits; anything else as it is, for the schema check to name."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,12}", value.strip()):
        return int(value)
    return value


def _unique(items):
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


# --- the hosts behind and in front -------------------------------------------------
def backends(given, server_hosts, host_vars, default_port):
    """The fleet tier's backends: [{name, address, port, weight}].

    `given` (gateway_backends) when it is not empty, else one backend per host
    of the server group, from what its own host variables say (host_vars:
    host -> {gateway_address, gateway_server_port, gateway_weight}, each optional).
    """
    if given:
        return [
            dict(
                {
                    "name": b.get("name", b.get("address")),
                    "address": b.get("address"),
                    "port": _int_or_raw(b.get("port", default_port)),
                    "weight": _int_or_raw(b.get("weight", 1)),
                },
                **({"model": b["model"]} if b.get("model") else {}),
            )
            for b in given
        ]
    out = []
    for host in server_hosts:
        own = host_vars.get(host) or {}
        out.append(
            {
                "name": host,
                "address": own.get("gateway_address", host),
                "port": _int_or_raw(own.get("gateway_server_port", default_port)),
                "weight": _int_or_raw(own.get("gateway_weight", 1)),
            }
        )
    return out


def fleet_peers(fleet_hosts, host_vars):
    """The names (or addresses) of the fleet gateways, as the server tier resolves them."""
    return [(host_vars.get(host) or {}).get("gateway_address", host) for host in fleet_hosts]


def names_to_resolve(backend_list, peers, is_server, is_fleet):
    """The names this host resolves: the GPU servers it proxies to (fleet tier), the gateways it lets in (either tier)."""
    names = [b["address"] for b in backend_list] if is_fleet else []
    if is_server or is_fleet:
        names += list(peers)
    return _unique(names)


def _addresses(resolved, name):
    return list(resolved.get(name) or [])


def _upstream_host(address):
    return "[%s]" % address if ":" in address else address


# --- the parts of the model ----------------------------------------------------------
def local_servers(instances):
    """The server tier's upstream: every instance on loopback."""
    return [{"host": "127.0.0.1", "port": i["port"], "weight": 1, "comment": "vllm@%s" % i["name"], "label": str(i["name"]), "down": False} for i in instances]


def instance_upstream(name):
    """The server tier's upstream of one instance alone (local-servers.conf), which its route proxies to."""
    return "gpufleet_instance_%s" % name


def worker_paths(paths):
    """What the route to one instance forwards: /health, the forwarded paths and the render endpoints of
    the completion paths among them."""
    out = ["/health"]
    for path in paths:
        out.append(path)
        if path in RENDER_PATHS:
            out.append(RENDER_PATHS[path])
    return _unique(out)


def instance_routes(instances, paths):
    """The server tier's routes to each instance alone: /_gpufleet/instance/<name>/<path>, for the routers."""
    return [
        {"name": str(i["name"]), "upstream": instance_upstream(i["name"]), "prefix": "%s%s" % (INSTANCE_PREFIX, i["name"]), "paths": worker_paths(paths)}
        for i in instances
    ]


def fleet_servers(backend_list, resolved):
    """The fleet tier's upstream: every GPU server by its first address (the name when nothing resolved)."""
    out = []
    for b in backend_list:
        address = (_addresses(resolved, b["address"]) or [b["address"]])[0]
        comment = b["name"] if b["address"] == b["name"] else "%s (%s)" % (b["name"], b["address"])
        out.append({"host": _upstream_host(address), "port": b["port"], "weight": b["weight"], "comment": comment, "label": b["name"], "down": False})
    return out


def allow_list(names, resolved, extra):
    """Loopback, every address each name resolved to, then `extra`, each once."""
    found = list(LOOPBACK)
    for name in names:
        found += _addresses(resolved, name)
    return _unique(found + list(extra))


def server_listen(settings):
    port, address = settings["gateway_server_port"], settings["gateway_server_listen_address"]
    out = [{"port": port, "address": address, "extra": ""}]
    if address not in ("", "0.0.0.0", "127.0.0.1"):
        out.append({"port": port, "address": "127.0.0.1", "extra": ""})
    if settings["gateway_listen_ipv6"] and address == "":
        out.append({"port": port, "address": "[::]", "extra": ""})
    return out


def fleet_listen(settings, tls):
    out = []
    wanted = [] if (tls and settings["gateway_tls_only"]) else [(settings["gateway_http_port"], "")]
    if tls:
        wanted.append((settings["gateway_https_port"], "ssl http2"))
    for port, extra in wanted:
        out.append({"port": port, "address": "", "extra": extra})
        if settings["gateway_listen_ipv6"]:
            out.append({"port": port, "address": "[::]", "extra": extra})
    return out


def locations(paths, upstream, check_key=False, rate_limit=False):
    return [{"path": p, "upstream": upstream, "check_key": check_key, "rate_limit": rate_limit} for p in paths]


def _upstream(name, servers, keepalive_timeout, settings, servers_file=""):
    return {
        "name": name,
        "balance": settings["gateway_balance"],
        "servers": servers,
        # Where the server lines are, when they are not printed in the block.
        "servers_file": servers_file,
        "max_fails": settings["gateway_max_fails"],
        "fail_timeout": settings["gateway_fail_timeout"],
        "keepalive": settings["gateway_keepalive_connections"],
        "keepalive_timeout": keepalive_timeout,
    }


def _page(page, tier):
    out = {"code": page["code"], "type": page["type"], "message": page["message"], "unsent": None}
    unsent = page.get("unsent")
    if unsent and tier in unsent["tiers"]:
        out["unsent"] = {"code": unsent["code"], "type": page["type"], "message": unsent["message"]}
    return out


def _pages(pages, tier):
    """The tier's error pages. A page with `unsent` answers with that code and message instead when no
    byte of the request reached an instance (the server tier's own 502: every instance down or refusing)."""
    return [_page(p, tier) for p in pages if tier in p["tiers"]]


def _server_tier(settings, context):
    servers_file = context["files"].get("local_servers") or LOCAL_SERVERS_FILE
    return {
        "port": settings["gateway_server_port"],
        "upstream": _upstream("gpufleet_local", local_servers(context["instances"]), settings["gateway_instance_keepalive_timeout"], settings, servers_file),
        "next_upstream": SERVER_NEXT_UPSTREAM,
        "request_buffering": False,
        "body_buffer": "",
        "listen": server_listen(settings),
        # Longer than the gateways keep their idle connections to this tier.
        "keepalive_timeout": int(settings["gateway_server_keepalive_timeout"]) + 15,
        "allow": allow_list(context["peers"], context["resolved"], settings["gateway_server_allow"]),
        "auth_file": context["files"]["instance_auth"],
        "error_pages": _pages(context["error_pages"], "server"),
        "locations": locations(context["paths"], "gpufleet_local"),
        "instance_routes": instance_routes(context["instances"], context["paths"]),
    }


def _pool_workers(index, pool, settings, context):
    """The router's workers of a cache-aware pool: one fleet-tier upstream per instance of each GPU server,
    [{name, servers, path, prefix, url, ...}]; context["backend_instances"] maps a server to its instances' names."""
    known = context.get("backend_instances") or {}
    out = []
    for backend in pool["backends"]:
        for instance in known.get(backend["name"]) or []:
            name = "gpufleet_worker_%d_%d" % (index, len(out) + 1)
            servers = fleet_servers([backend], context["resolved"])
            for server in servers:
                server["comment"] = "%s vllm@%s" % (server["comment"], instance)
            upstream = _upstream(name, servers, settings["gateway_server_keepalive_timeout"], settings)
            upstream.update(
                {
                    "balance": "round_robin",
                    "server_name": backend["name"],
                    "instance": str(instance),
                    "path": "%s%s/" % (INSTANCE_PREFIX, instance),
                    "prefix": "%s%s/" % (WORKER_PREFIX, name),
                    "url": "http://127.0.0.1:%d%s%s" % (settings["gateway_router_worker_port"], WORKER_PREFIX, name),
                }
            )
            out.append(upstream)
    return out


def _cache_router(index, upstream, workers, settings):
    """The vllm-router of a cache-aware pool: its unit, its loopback ports and its workers' URLs."""
    port = int(settings["gateway_router_port"]) + 2 * (index - 1)
    timeout = _nginx_seconds(settings["gateway_read_timeout"])
    return {
        "unit": ROUTER_UNIT % index,
        "model": upstream["model"],
        "upstream": upstream["name"],
        "port": port,
        "metrics_port": port + 1,
        "policy": CACHE_AWARE,
        "workers": [w["url"] for w in workers],
        "health_interval": int(settings["gateway_router_health_interval"]),
        "request_timeout": max(1, math.ceil(timeout)),
    }


def _nginx_seconds(value):
    """An nginx time (300s, 5m, 1500ms, 30) in seconds."""
    match = re.fullmatch(r"([0-9]+)(ms|s|m|h|d)?", str(value).strip())
    if not match:
        raise GatewayLayoutError("%s is not an nginx time" % repr(value)[:40])
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[match.group(2)]


def _fleet_upstreams(settings, context):
    """(upstreams, workers): one upstream per pool (context["pools"]: [{model, backends, balance}],
    fleet_models.pools; without pools, one upstream of every backend), and the routers' worker upstreams of
    the cache-aware pools. A single upstream keeps the name gpufleet_fleet; a cache-aware pool's upstream
    is its router on loopback (label router:<upstream>, which no drain names)."""
    pools = context.get("pools") or [{"model": "", "backends": context["backends"]}]
    out, all_workers = [], []
    for index, pool in enumerate(pools, 1):
        name = FLEET_UPSTREAM if len(pools) == 1 else "%s_%d" % (FLEET_UPSTREAM, index)
        balance = pool.get("balance") or settings["gateway_balance"]
        if balance == CACHE_AWARE:
            upstream = _upstream(name, [], settings["gateway_server_keepalive_timeout"], settings)
            workers = _pool_workers(index, pool, settings, context)
            router = _cache_router(index, dict(upstream, model=pool["model"]), workers, settings)
            upstream["servers"] = [
                {
                    "host": "127.0.0.1",
                    "port": router["port"],
                    "weight": 1,
                    "comment": "vllm-router of %s (%s)" % (pool["model"] or "the fleet", router["unit"]),
                    "label": "router:%s" % name,
                    "down": False,
                }
            ]
            upstream["balance"] = "round_robin"
            upstream["cache_router"] = router
            all_workers += workers
        else:
            upstream = _upstream(name, fleet_servers(pool["backends"], context["resolved"]), settings["gateway_server_keepalive_timeout"], settings)
            upstream["balance"] = balance
            upstream["cache_router"] = None
        upstream["model"] = pool["model"]
        out.append(upstream)
    return out, all_workers


def _router(settings, context, upstreams):
    """The router of a fleet tier with several models (None for one): the model -> upstream table the njs
    handlers read, the served names, and how much of a request body they may read (all of it, in memory)."""
    if len(upstreams) < 2:
        return None
    return {
        "module": context["files"]["router"],
        "import": ROUTER_IMPORT,
        "models": [{"name": u["model"], "upstream": u["name"]} for u in upstreams],
        "served": ", ".join(u["model"] for u in upstreams),
        "pools": " ".join("%s=%s" % (u["name"], u["model"]) for u in upstreams),
        "body_buffer": settings["gateway_client_max_body_size"],
        "reply_buffer": ROUTER_REPLY_BUFFER,
    }


def _fleet_locations(context, upstreams, router, check_keys, limited):
    if not router:
        return locations(context["paths"], upstreams[0]["name"], check_key=check_keys, rate_limit=limited)
    out = locations(context["paths"], "", check_key=check_keys, rate_limit=limited)
    for location in out:
        location["handler"] = "%s.%s" % (ROUTER_IMPORT, "models" if location["path"] == "/v1/models" else "route")
    return out


def _fleet_tier(settings, context):
    check_keys, limited = bool(context["check_keys"]), len(settings["gateway_rate_limit"]) > 0
    health_names = [b["address"] for b in context["backends"]] + list(context["peers"])
    tls = context["tls"]
    upstreams, workers = _fleet_upstreams(settings, context)
    router = _router(settings, context, upstreams)
    return {
        "upstreams": upstreams,
        "router": router,
        "workers": workers,
        "worker_port": settings["gateway_router_worker_port"] if workers else None,
        "cache_routers": [u["cache_router"] for u in upstreams if u["cache_router"]],
        "next_upstream": FLEET_NEXT_UPSTREAM,
        "request_buffering": True,
        "body_buffer": FLEET_BODY_BUFFER,
        "listen": fleet_listen(settings, tls),
        "server_name": settings["gateway_server_name"],
        "tls": {"certificate": context["files"]["tls_certificate"], "key": context["files"]["tls_key"]} if tls else None,
        "check_keys": check_keys,
        "keys_file": context["files"]["keys"],
        "zone_size": settings["gateway_rate_limit_zone_size"],
        "auth_fail": {"rate": settings["gateway_auth_fail_rate"], "burst": settings["gateway_auth_fail_burst"]},
        "rate_limit": {
            "rate": settings["gateway_rate_limit"],
            "burst": settings["gateway_rate_limit_burst"],
            "key": "$http_authorization" if settings["gateway_rate_limit_by"] == "api_key" else "$binary_remote_addr",
        }
        if limited
        else None,
        "conn_limit": int(settings["gateway_conn_limit_per_client"]),
        "health_allow": allow_list(health_names, context["resolved"], settings["gateway_health_allow"]),
        "error_pages": _pages(context["error_pages"], "fleet"),
        "locations": _fleet_locations(context, upstreams, router, check_keys, limited),
    }


def site_model(settings, context):
    """The site model of one host.

    settings: the role's gateway_* variables. context: host (inventory name),
    is_server, is_fleet, tls, check_keys, instances [{name, port}], backends
    (from backends()), pools (optional: [{model, backends}] from fleet_models.pools,
    one upstream each; several route by model), peers (from fleet_peers()),
    resolved (name -> [addresses]), paths (the forwarded paths), error_pages
    [{code, tiers, type, message}] and files {keys, tls_certificate, tls_key,
    router (the njs module's path), instance_auth ('' when the server tier sends
    no key)}. Every upstream server starts as serving: apply_drained marks.
    """
    try:
        header = settings["gateway_hash_header"]
        model = {
            "version": MODEL_VERSION,
            "host": context["host"],
            "balance": settings["gateway_balance"],
            "hash_variable": "$http_" + header.lower().replace("-", "_"),
            "hash_header": header,
            "access_log": settings["gateway_access_log"],
            "error_log": settings["gateway_error_log"],
            "proxy": {
                key: settings["gateway_" + key]
                for key in ("connect_timeout", "read_timeout", "send_timeout", "next_upstream_tries", "next_upstream_timeout", "client_max_body_size")
            },
            "server": _server_tier(settings, context) if context["is_server"] else None,
            "fleet": _fleet_tier(settings, context) if context["is_fleet"] else None,
        }
        # The affinity map, wherever an upstream hashes on the header.
        upstreams = (model["fleet"] or {}).get("upstreams") or []
        model["affinity"] = model["balance"] == "hash_header" or any(u["balance"] == "hash_header" for u in upstreams)
        return model
    except KeyError as exc:
        raise GatewayLayoutError("the site model needs %s, which the caller did not pass" % exc) from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise GatewayLayoutError("the site model cannot be built from these inputs (%s): run the role's preflight first" % exc) from None


# --- the drained set -----------------------------------------------------------------
def empty_drained():
    return {"version": STATE_VERSION, "server": [], "fleet": []}


def _from_json(value, limit):
    """(value, problem): JSON text parsed (bounded), anything else as it is."""
    if not isinstance(value, str):
        return value, None
    if len(value) > limit:
        return None, "is larger than %d bytes" % limit
    try:
        return json.loads(value), None
    except ValueError as exc:
        return None, "is not JSON (%s)" % str(exc)[:200]
    except RecursionError:
        return None, "is nested too deeply to be read"


def load_model(value):
    """(site model, problems) from the JSON a host keeps (or a dict): only a model of this version is used."""
    found, problem = _from_json(value, MAX_MODEL_BYTES)
    if problem:
        return None, [problem]
    if not isinstance(found, Mapping) or found.get("version") != MODEL_VERSION:
        return None, ["is not a site model of version %d (the role writes it on every run)" % MODEL_VERSION]
    for tier in TIERS:
        part = found.get(tier)
        upstreams = _tier_upstreams(part) if isinstance(part, Mapping) else None
        if part is not None and not upstreams:
            return None, ["has no upstream for its %s tier" % tier]
        for upstream in upstreams or []:
            servers = upstream.get("servers")
            if not isinstance(servers, list) or not all(isinstance(x, Mapping) and isinstance(x.get("label"), str) for x in servers):
                return None, ["has %s upstream servers without a name" % tier]
    return found, []


def parse_drained(value):
    """(drained set, problems) from what the host's state file holds (JSON text or a dict; None when there is none).

    A set that is not what the drain entry point writes is reported, not used:
    the caller refuses to go on rather than guess what was drained.
    """
    if value is None:
        return empty_drained(), []
    value, problem = _from_json(value, MAX_STATE_BYTES)
    if problem:
        return empty_drained(), [problem]
    if not isinstance(value, Mapping):
        return empty_drained(), ['must be a JSON object {"version": 1, "server": [...], "fleet": [...]}']
    problems = []
    out = empty_drained()
    if value.get("version") != STATE_VERSION:
        problems.append("has version %r, this role reads version %d" % (value.get("version"), STATE_VERSION))
    for tier in TIERS:
        names = value.get(tier, [])
        if not isinstance(names, list) or len(names) > MAX_DRAINED:
            problems.append("%s must be a list of at most %d names" % (tier, MAX_DRAINED))
            continue
        bad = [n for n in names if not isinstance(n, str) or not _NAME_RE.match(n)]
        if bad:
            problems.append("%s holds names that are not instance or server names: %s" % (tier, ", ".join(repr(n)[:70] for n in bad[:5])))
            continue
        out[tier] = sorted(set(names))
    return out, problems


def _tier_upstreams(part):
    """The upstreams of a tier's part of the model: the server tier's one, the fleet tier's one per model and
    its routers' worker upstreams (None when the part has none that is a mapping)."""
    found = part.get("upstreams") if "upstreams" in part else [part.get("upstream")]
    workers = part.get("workers") or []
    if not isinstance(found, list) or not found or not isinstance(workers, list):
        return None
    found = found + workers
    if not all(isinstance(u, Mapping) for u in found):
        return None
    return found


def _labels(model, tier):
    """The names a drain may give in a tier: its upstream servers' labels (a router's label is no name)."""
    part = model.get(tier) if isinstance(model, Mapping) else None
    if not part:
        return []
    return _unique([s["label"] for u in _tier_upstreams(part) for s in u["servers"] if _NAME_RE.match(s["label"])])


def apply_drained(model, drained):
    """{model, kept, stale}: the model with the drained servers marked down; kept names the marked ones per
    tier, stale the drained names this model has no upstream server for (left out)."""
    marked = dict(model)
    kept, stale = {}, {}
    for tier in TIERS:
        names = set(drained.get(tier) or [])
        labels = _labels(model, tier)
        kept[tier] = [label for label in labels if label in names]
        stale[tier] = sorted(names - set(labels))
        if model.get(tier):
            part = dict(model[tier])
            upstreams = [dict(u, servers=[dict(s, down=s["label"] in names) for s in u["servers"]]) for u in _tier_upstreams(part)]
            if "upstreams" in part:
                count = len(part["upstreams"])
                part["upstreams"], part["workers"] = upstreams[:count], upstreams[count:]
            else:
                part["upstream"] = upstreams[0]
            marked[tier] = part
    return {"model": marked, "kept": kept, "stale": stale}


def drain(model, drained, tier, names, state):
    """{drained, unknown}: the drained set after marking `names` of `tier` drained or serving.

    unknown lists the names that are not upstream servers of that tier in the
    model: the caller refuses the request when it is not empty. Names the
    model no longer has are dropped from the tier's set as it is written.
    """
    if tier not in TIERS or state not in ("drained", "serving"):
        raise GatewayLayoutError("drain needs a tier in %s and a state drained or serving, not %r/%r" % (TIERS, tier, state))
    labels = _labels(model, tier)
    unknown = [n for n in names if n not in labels]
    current = set(drained.get(tier) or []) & set(labels)
    wanted = current | set(names) if state == "drained" else current - set(names)
    out = dict(drained)
    out[tier] = sorted(wanted & set(labels))
    return {"drained": out, "unknown": unknown}


# --- the fenced set --------------------------------------------------------------------
def _fenced_entry_problem(name, entry):
    """None when one entry of the fenced set is what the watchdog writes, else what is wrong with it."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        return "holds a name that is not an instance name: %s" % repr(name)[:70]
    if not isinstance(entry, Mapping) or set(entry) != {"since", "reason"}:
        return "holds %s with other fields than since and reason" % name
    since, reason = entry["since"], entry["reason"]
    if isinstance(since, bool) or not isinstance(since, (int, float)) or not math.isfinite(since) or since < 0:
        return "holds %s with since %s, not a time in seconds" % (name, repr(since)[:40])
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
        return "holds %s with a reason that is not a line of at most %d printable characters" % (name, MAX_REASON)
    return None


def parse_fenced(value):
    """(names, problems) from the fenced set the watchdog keeps (JSON text or a dict; None when there is none).

    The set is {"version": 1, "fenced": {"<instance name>": {"since": <unix time>, "reason": "<text>"}}}.
    Problems are sentences that follow the file's name; a set with problems gives no names, and the
    caller stops rather than guess which instances are out.
    """
    if value is None:
        return [], []
    value, problem = _from_json(value, MAX_STATE_BYTES)
    if problem:
        return [], [problem]
    if not isinstance(value, Mapping):
        return [], ['must be a JSON object {"version": 1, "fenced": {"<instance>": {"since": <time>, "reason": "<text>"}}}']
    problems = []
    if value.get("version") != STATE_VERSION:
        problems.append("has version %s, this role reads version %d" % (repr(value.get("version"))[:40], STATE_VERSION))
    extra = sorted(str(k)[:40] for k in value if k not in ("version", "fenced"))
    if extra:
        problems.append("has fields the watchdog does not write: %s" % ", ".join(extra[:5]))
    entries = value.get("fenced")
    if not isinstance(entries, Mapping) or len(entries) > MAX_DRAINED:
        problems.append("must map at most %d instance names to {since, reason} under fenced" % MAX_DRAINED)
        return [], problems
    found = [p for p in (_fenced_entry_problem(n, e) for n, e in entries.items()) if p]
    problems.extend(found[:5])
    if problems:
        return [], problems
    return sorted(entries), []


def fenced_details(value):
    """{name: reason} of a fenced set that parse_fenced accepts (empty otherwise)."""
    names, problems = parse_fenced(value)
    if problems or not names:
        return {}
    found = _from_json(value, MAX_STATE_BYTES)[0]
    return {name: found["fenced"][name]["reason"] for name in names}


# --- the server tier's upstream servers ----------------------------------------------
def _int_in(value, low, high, what):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise GatewayLayoutError("the site model's server tier has %s %s, not a whole number from %d to %d" % (what, repr(value)[:40], low, high))
    return value


def _checked_names(names, what):
    if isinstance(names, (str, bytes)) or names is None:
        raise GatewayLayoutError("%s must be a list of instance names, not %s" % (what, repr(names)[:70]))
    out = set()
    for item in names:
        if not isinstance(item, str) or not _NAME_RE.match(item):
            raise GatewayLayoutError("%s holds %s, which is not an instance name" % (what, repr(item)[:70]))
        out.add(item)
        if len(out) > MAX_DRAINED:
            raise GatewayLayoutError("%s holds more than %d names" % (what, MAX_DRAINED))
    return out


def _server_line(server, upstream, down):
    """One `server` line, the same text the upstream macro of nginx-macros.j2 prints for the fleet tier."""
    if not isinstance(server, Mapping):
        raise GatewayLayoutError("the site model's server tier has an upstream server that is not a mapping")
    host, comment = server.get("host"), server.get("comment")
    if not isinstance(host, str) or not _HOST_RE.match(host):
        raise GatewayLayoutError("the site model's server tier has the upstream host %s, not an IP address" % repr(host)[:70])
    if not isinstance(comment, str) or not _COMMENT_RE.match(comment):
        raise GatewayLayoutError("the site model's server tier has the comment %s, not a short name" % repr(comment)[:70])
    port = _int_in(server.get("port"), 1, 65535, "the port")
    weight = _int_in(server.get("weight"), 1, 1000, "the weight")
    max_fails = _int_in(upstream.get("max_fails"), 0, 1000, "max_fails")
    fail_timeout = _int_in(upstream.get("fail_timeout"), 1, 86400, "fail_timeout")
    return "    server %s:%d%s%s max_fails=%d fail_timeout=%ds;  # %s" % (
        host,
        port,
        " down" if down else "",
        " weight=%d" % weight if weight != 1 else "",
        max_fails,
        fail_timeout,
        comment,
    )


def _balance_line(balance):
    if balance not in BALANCES:
        raise GatewayLayoutError("the site model's server tier balances with %s, not one of %s" % (repr(balance)[:40], ", ".join(BALANCES)))
    return {"least_conn": ["    least_conn;"], "hash_header": ["    hash $gpufleet_affinity consistent;"], "round_robin": []}[balance]


def _block(name, balance_lines, server_lines, upstream):
    keepalive = _int_in(upstream.get("keepalive"), 1, 100000, "keepalive")
    timeout = _int_in(upstream.get("keepalive_timeout"), 1, 3600, "keepalive_timeout")
    return ["upstream %s {" % name, *balance_lines, *server_lines, "    keepalive %d;" % keepalive, "    keepalive_timeout %ds;" % timeout, "}"]


def local_servers_conf(model, drained, fenced):
    """The text of the server tier's include file (LOCAL_SERVERS_FILE), included in nginx's http block:
    upstream gpufleet_local with one `server` line per instance, then one upstream per instance alone
    (gpufleet_instance_<name>, which the route to that instance proxies to: the routers' workers).

    model: a site model (site_model, or load_model's result); drained: a drained set (parse_drained's
    first result); fenced: instance names (parse_fenced's first result). An instance is `down` in both
    blocks when its name is in the drained set's server tier or in `fenced`. Raises GatewayLayoutError when
    the model has no server tier or holds a value an nginx line cannot take.
    """
    part = model.get("server") if isinstance(model, Mapping) else None
    upstream = part.get("upstream") if isinstance(part, Mapping) else None
    if not isinstance(upstream, Mapping) or not isinstance(upstream.get("servers"), list):
        raise GatewayLayoutError("the site model has no server tier: this host is not a GPU server of the gateway role")
    if not isinstance(drained, Mapping):
        raise GatewayLayoutError("the drained set must be a mapping (parse_drained's first result)")
    servers = upstream["servers"]
    if len(servers) > MAX_DRAINED:
        raise GatewayLayoutError("the site model's server tier has more than %d upstream servers" % MAX_DRAINED)
    down = _checked_names(drained.get("server") or [], "the drained set's server tier") | _checked_names(fenced, "the fenced set")
    lines, alone = [], []
    for server in servers:
        label = server.get("label") if isinstance(server, Mapping) else None
        if not isinstance(label, str) or not _NAME_RE.match(label):
            raise GatewayLayoutError("the site model's server tier has an instance name %s, not a name" % repr(label)[:70])
        line = _server_line(server, upstream, label in down)
        lines.append(line)
        alone += ["", *_block(instance_upstream(label), [], [line], upstream)]
    head = [
        "# gpufleet.serving: this GPU server's vLLM instances, included in nginx's http block by the gateway's site file.",
        "# Written by the gateway role and by the watchdog (gateway_layout.local_servers_conf); down: drained or fenced.",
    ]
    return "\n".join(head + _block("gpufleet_local", _balance_line(upstream.get("balance")), lines, upstream) + alone) + "\n"
