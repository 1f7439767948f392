# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The bake-off's measurement file: read, checked, and matched against a plan."""

from __future__ import annotations

import datetime
import os

from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError, is_int, is_number, load_json
from ansible_collections.gpufleet.serving.plugins.module_utils.planner_common import (
    MAX_MEASURED_BYTES,
    MEASURED_FORMAT,
    MEASURED_MATCH_KEYS,
    MEASURED_OBJECTIVES,
    MEASURED_TOPOLOGIES,
    MEASURED_VERSION,
    SINGLE_ENDPOINT_TOPOLOGIES,
    PlanError,
)


def load_measured(path):
    """The parsed measurement file at ``path``; None when there is none yet."""
    path = os.path.expanduser(str(path))
    if not os.path.lexists(path):
        return None
    try:
        data = load_json(path, MAX_MEASURED_BYTES, "measurement file")
    except InputError as exc:
        raise PlanError("measured", "%s: run playbooks/bakeoff.yml again or remove the file" % exc) from None
    check_measured(data, path)
    return data


def parse_measured_time(text, where="measured_at"):
    """An ISO 8601 time with a zone (``2026-11-27T05:40:00Z``) as an aware datetime."""
    if not isinstance(text, str):
        raise PlanError("measured", "%s must be an ISO 8601 time, not %r" % (where, text))
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PlanError("measured", "%s: %r is not an ISO 8601 time such as 2026-11-27T05:40:00Z" % (where, text)) from None
    if value.tzinfo is None:
        raise PlanError("measured", "%s: %r has no time zone; write it in UTC with a trailing Z" % (where, text))
    return value


def _check_winners(winners, label):
    if not isinstance(winners, dict):
        raise PlanError("measured", "%s.winners must be an object" % label)
    for objective, winner in winners.items():
        if not isinstance(winner, dict) or winner.get("better") not in ("higher", "lower"):
            raise PlanError("measured", "%s.winners.%s.better must be higher or lower" % (label, objective))
        ranking = winner.get("ranking")
        if not isinstance(ranking, list) or not all(
            isinstance(r, dict) and r.get("topology") in MEASURED_TOPOLOGIES and is_number(r.get("value"), 0) for r in ranking
        ):
            raise PlanError(
                "measured",
                "%s.winners.%s.ranking must list {topology: one of %s, value: a finite number, 0 or more}" % (label, objective, ", ".join(MEASURED_TOPOLOGIES)),
            )


def _check_entry(entry, label):
    if not isinstance(entry, dict):
        raise PlanError("measured", "%s is not an object" % label)
    for key in (*MEASURED_MATCH_KEYS, "host", "measured_at", "winners"):
        if key not in entry:
            raise PlanError("measured", "%s has no %r" % (label, key))
    for key in ("host", "model", "cards", "dtype"):
        if not isinstance(entry[key], str) or len(entry[key]) > 1024:
            raise PlanError("measured", "%s.%s must be a string, not %r" % (label, key, entry[key]))
    if not is_int(entry["max_model_len"], 1) or not is_number(entry["gpu_memory_utilization"], 0, 1):
        raise PlanError("measured", "%s: max_model_len must be a positive whole number and gpu_memory_utilization a fraction" % label)
    parse_measured_time(entry["measured_at"], "%s.measured_at" % label)
    _check_winners(entry["winners"], label)


def check_measured(data, where="measured"):
    """Check the shape of a measurement file (see docs/bakeoff.md); PlanError names what is wrong."""
    if not isinstance(data, dict) or data.get("format") != MEASURED_FORMAT:
        raise PlanError("measured", "%s is not a bake-off measurement file (format %r expected)" % (where, MEASURED_FORMAT))
    if data.get("version") != MEASURED_VERSION:
        raise PlanError("measured", "%s has version %r; this planner reads version %d" % (where, data.get("version"), MEASURED_VERSION))
    entries = data.get("measurements")
    if not isinstance(entries, list):
        raise PlanError("measured", "%s: measurements must be a list" % where)
    for position, entry in enumerate(entries):
        _check_entry(entry, "%s: measurements[%d]" % (where, position))
    return data


def _fmt_figure(value):
    return "%.3g" % value if abs(value) < 100 else "%.0f" % value


def _measured_words(entry, objective, first, second):
    unit = entry["winners"][objective].get("unit") or ""
    where = " at concurrency %s" % first["concurrency"] if first.get("concurrency") else ""
    versus = " vs %s %s (%s)" % (_fmt_figure(second["value"]), unit, second["topology"]) if second else " %s (the only topology measured)" % unit
    return "%s won %s, %s%s%s, bake-off of %s on %s" % (
        first["topology"],
        objective,
        _fmt_figure(first["value"]),
        versus,
        where,
        str(entry["measured_at"])[:10],
        entry["host"],
    )


def _matching(entries, wanted, where):
    """(the entries for this plan, or None with the reason none is)."""
    matching = []
    misses = []
    for entry in entries:
        diff = [key for key in MEASURED_MATCH_KEYS if entry.get(key) != wanted[key]]
        if diff:
            misses.append(
                "%s on %s: %s"
                % (str(entry.get("measured_at"))[:10], entry.get("host"), "; ".join("%s %r, not %r" % (key, entry.get(key), wanted[key]) for key in diff))
            )
        else:
            matching.append(entry)
    if matching:
        return matching, None
    if not entries:
        return None, "measured: %s holds no bake-off results yet; planned from estimates." % where
    return None, "measured: none of the %d bake-off result%s in %s is for this model, these cards and settings (%s); planned from estimates." % (
        len(entries),
        "" if len(entries) == 1 else "s",
        where,
        " | ".join(misses[:3]),
    )


def _ranking(entry, key, single_endpoint):
    """(the entry's ranking for objective ``key``, best first, or None with the reason there is none)."""
    bake_off = "the bake-off of %s on %s" % (str(entry["measured_at"])[:10], entry["host"])
    winner = entry["winners"].get(key)
    if not winner or not winner.get("ranking"):
        return None, "measured: %s has no winner for %s; planned from estimates." % (bake_off, key)
    ranking = sorted(winner["ranking"], key=lambda r: r["value"], reverse=winner["better"] == "higher")
    if single_endpoint:
        ranking = [r for r in ranking if r["topology"] in SINGLE_ENDPOINT_TOPOLOGIES]
        if not ranking:
            return None, "measured: single_endpoint is set and %s measured no single-endpoint topology (%s); planned from estimates." % (
                bake_off,
                ", ".join(SINGLE_ENDPOINT_TOPOLOGIES),
            )
    return ranking, None


def measured_choice(data, estimate, *, objective, single_endpoint, gpu_memory_utilization, now, max_age_days, where):
    """What the measurements say for a plan whose estimate is ``estimate``.

    Returns ``(topology or None, reason)``: the measured winner for the objective
    (among single-endpoint topologies when one is asked for), or None with the
    reason the measurements do not apply (another model, other cards, other
    settings, too old, the objective not measured).
    """
    wanted = {
        "model": estimate["model"],
        "cards": estimate["cards"],
        "dtype": estimate["dtype"],
        "max_model_len": estimate["max_model_len"],
        "gpu_memory_utilization": gpu_memory_utilization,
    }
    matching, reason = _matching(data.get("measurements") or [], wanted, where)
    if reason:
        return None, reason
    entry = max(matching, key=lambda e: parse_measured_time(e["measured_at"]))
    age = now - parse_measured_time(entry["measured_at"])
    if age > datetime.timedelta(days=max_age_days):
        return None, "measured: the bake-off of %s on %s is %d days old, older than measured_max_age_days %d: planned from estimates; run it again." % (
            str(entry["measured_at"])[:10],
            entry["host"],
            age.days,
            max_age_days,
        )
    key = MEASURED_OBJECTIVES[objective]
    ranking, reason = _ranking(entry, key, single_endpoint)
    if reason:
        return None, reason
    first = ranking[0]
    second = ranking[1] if len(ranking) > 1 else None
    return first["topology"], "measured: " + _measured_words(entry, key, first, second)
