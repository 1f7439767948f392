# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The models a fleet serves, and which GPU servers serve which.

`gpufleet_models` (the inventory's group_vars/all) names each model once:

    gpufleet_models:
      - name: tiny          # the name clients send (vLLM's --served-model-name)
        group: model_tiny   # the inventory group of the GPU servers that serve it

and the model's own settings (plan_model_config, plan_max_model_len,
vllm_model_src, ...) are the variables of its group (group_vars/model_tiny.yml),
so that every server of the group plans and serves the same model. Empty (the
default): one model for the whole fleet, from each server's own variables.

A GPU server belongs to exactly one model's group: a server in two would get
one of the two groups' settings by Ansible's merge order, silently, so it is
refused, as is a server in none, a model whose group has no server, and two
models with one name. The fleet tier of the gateway keeps one pool of servers
per model (pools()).

Everything here is pure: no host, no file, no network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ansible_collections.gpufleet.serving.plugins.module_utils.role_inputs import GROUP_RE, MODEL_NAME_RE

MAX_MODELS = 64
FIELDS = ("name", "group", "balance")
# How the fleet tier spreads a model's requests over its pool: the gateways' gateway_balance (absent), one of
# nginx's (least_conn, round_robin, hash_header), or vLLM's router with its prefix-cache-aware policy.
BALANCES = ("least_conn", "round_robin", "hash_header", "cache_aware")
# How many hosts a message names before "and N more".
SHOWN_HOSTS = 5


def _show_hosts(hosts):
    hosts = list(hosts)
    shown = ", ".join(hosts[:SHOWN_HOSTS])
    return shown + (" and %d more" % (len(hosts) - SHOWN_HOSTS) if len(hosts) > SHOWN_HOSTS else "")


def _entry_problems(index, entry):
    where = "gpufleet_models[%d]" % index
    if not isinstance(entry, Mapping):
        return ["%s must be a mapping {name: <served model name>, group: <inventory group>}, not %s" % (where, repr(entry)[:60])]
    problems = []
    extra = sorted(str(k)[:40] for k in entry if k not in FIELDS)
    if extra:
        problems.append("%s has fields this collection does not read: %s (a model has name, group and balance)" % (where, ", ".join(extra[:5])))
    name, group = entry.get("name"), entry.get("group")
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name) or ".." in name:
        problems.append("%s.name is %s: set the name clients send, of letters, digits and . _ : @ + - (one '/' at most, no '..')" % (where, repr(name)[:60]))
    if not isinstance(group, str) or not GROUP_RE.match(group):
        problems.append("%s.group is %s: set an inventory group name (letters, digits, _)" % (where, repr(group)[:60]))
    if "balance" in entry and entry["balance"] not in BALANCES:
        problems.append("%s.balance is %s: set one of %s, or leave it out for gateway_balance" % (where, repr(entry["balance"])[:60], ", ".join(BALANCES)))
    return problems


def _listed(models):
    """(entries, problems): the well-formed list, or the problems of the list as a whole."""
    if models in (None, "", []):
        return [], []
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)):
        return [], ["gpufleet_models must be a list of {name, group}, not %s" % repr(models)[:60]]
    if len(models) > MAX_MODELS:
        return [], ["gpufleet_models lists %d models; at most %d" % (len(models), MAX_MODELS)]
    problems = []
    for index, entry in enumerate(models):
        problems.extend(_entry_problems(index, entry))
    if problems:
        return [], problems
    for key, what in (("name", "served name"), ("group", "group")):
        seen = {}
        for entry in models:
            seen.setdefault(entry[key], []).append(entry["name"])
        twice = sorted(v for v, names in seen.items() if len(names) > 1)
        if twice:
            problems.append("gpufleet_models gives two models the %s %s: each model has a %s of its own" % (what, ", ".join(repr(v) for v in twice[:5]), what))
    return ([dict(m) for m in models] if not problems else []), problems


def _members(groups, group):
    found = groups.get(group) if isinstance(groups, Mapping) else None
    return list(found) if isinstance(found, Sequence) and not isinstance(found, (str, bytes)) else []


def models_of(host, models, groups):
    """The entries of a well-formed gpufleet_models whose group holds host."""
    return [m for m in models if host in _members(groups, m["group"])]


def host_problems(host, models, groups, served_name=""):
    """The problems of gpufleet_models, then those of one GPU server's place in it (its plan role's check).

    served_name: the host's plan_served_model_name, which must be empty or its model's name.
    """
    entries, problems = _listed(models)
    if problems or not entries:
        return problems
    missing = sorted(m["group"] for m in entries if m["group"] not in (groups or {}))
    if missing:
        return ["gpufleet_models names the group %s, which the inventory does not have: add it or fix the name" % ", ".join(missing[:5])]
    mine = models_of(host, entries, groups)
    if len(mine) > 1:
        return [
            "%s is in the groups of %d models (%s): a GPU server serves one model, keep it in one group"
            % (host, len(mine), ", ".join("%s: %s" % (m["name"], m["group"]) for m in mine))
        ]
    if not mine:
        return ["%s is in no model's group (gpufleet_models: %s): add it to one" % (host, ", ".join(m["group"] for m in entries))]
    if served_name and served_name != mine[0]["name"]:
        return [
            "plan_served_model_name is %r for %s, but its model in gpufleet_models is %r (group %s): the model's name is the name served, "
            "remove plan_served_model_name" % (served_name, host, mine[0]["name"], mine[0]["group"])
        ]
    return []


def model_name(host, models, groups):
    """The served name of host's model ('' when gpufleet_models is empty or does not place the host once)."""
    entries, problems = _listed(models)
    mine = models_of(host, entries, groups) if not problems else []
    return mine[0]["name"] if len(mine) == 1 else ""


def model_balance(host, models, groups):
    """The balance of host's model ('' when it has none of its own, or gpufleet_models does not place the host once)."""
    entries, problems = _listed(models)
    mine = models_of(host, entries, groups) if not problems else []
    return mine[0].get("balance", "") if len(mine) == 1 else ""


def fleet_problems(models, groups, server_hosts, server_group="gpu_servers"):
    """The problems of gpufleet_models for the fleet as a whole (a fleet gateway's check)."""
    entries, problems = _listed(models)
    if problems or not entries:
        return problems
    missing = sorted(m["group"] for m in entries if m["group"] not in (groups or {}))
    if missing:
        return ["gpufleet_models names the group %s, which the inventory does not have: add it or fix the name" % ", ".join(missing[:5])]
    servers = list(server_hosts)
    count = {host: len(models_of(host, entries, groups)) for host in servers}
    twice = [h for h in servers if count[h] > 1]
    none = [h for h in servers if count[h] == 0]
    if twice:
        problems.append("%s %s in the groups of two or more models: a GPU server serves one model" % (_show_hosts(twice), "is" if len(twice) == 1 else "are"))
    if none:
        problems.append(
            "%s of %s %s in no model's group (gpufleet_models: %s): add each to one"
            % (_show_hosts(none), server_group, "is" if len(none) == 1 else "are", ", ".join(m["group"] for m in entries))
        )
    for m in entries:
        members = _members(groups, m["group"])
        outside = [h for h in members if h not in servers]
        if outside:
            verb = "is" if len(outside) == 1 else "are"
            problems.append("%s of group %s (model %s) %s not in %s" % (_show_hosts(outside), m["group"], m["name"], verb, server_group))
        if not [h for h in members if h in servers]:
            problems.append("model %s has no GPU server: its group %s holds none of %s; add one or remove the model" % (m["name"], m["group"], server_group))
    return problems


def pools(backend_list, models, groups):
    """The fleet tier's pools: [{model, backends}] in gpufleet_models' order; one pool of every backend (model '')
    when gpufleet_models is empty.

    A backend's model is its own `model` field (gateway_backends entries) or the model whose group holds its
    name. Raises ValueError for a backend with no model or an unknown one (the gateway's preflight says so first).
    """
    entries, problems = _listed(models)
    if problems:
        raise ValueError("; ".join(problems))
    if not entries:
        return [{"model": "", "backends": list(backend_list)}]
    names = [m["name"] for m in entries]
    grouped = {name: [] for name in names}
    for backend in backend_list:
        model = backend.get("model") or model_name(backend["name"], entries, groups)
        if model not in grouped:
            raise ValueError("the GPU server %s has no model of gpufleet_models (%s)" % (backend["name"], repr(model)[:60] if model else "in no model's group"))
        grouped[model].append(backend)
    return [{"model": m["name"], "backends": grouped[m["name"]], "balance": m.get("balance", "")} for m in entries]
