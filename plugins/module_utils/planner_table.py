# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A readable table of plans (used by the plan_table filter and playbooks/plan.yml)."""

from __future__ import annotations

import textwrap

from ansible_collections.gpufleet.serving.plugins.module_utils.planner_common import gib

TABLE_COLUMNS = ("HOST", "CARDS", "MODEL", "TOPOLOGY", "WEIGHTS/CARD", "KV TOKENS/INSTANCE", "MAX CONCURRENCY")


def model_words(vllm_plan):
    """The name clients send, and the model directory's name when it differs ("tiny-b (tiny-model-b)")."""
    directory = str(vllm_plan.get("model", ""))
    served = str((vllm_plan.get("launch") or {}).get("served_model_name") or directory)
    return served if served == directory else "%s (%s)" % (served, directory)


def topology_words(vllm_plan):
    topology = vllm_plan.get("topology")
    tp = vllm_plan.get("tensor_parallel_size", 1)
    dp = vllm_plan.get("data_parallel_size", 1)
    if topology == "dp":
        return "dp x%d" % dp
    if topology == "tp":
        return "tp %d" % tp
    if topology == "tp_dp":
        return "tp %d x dp %d" % (tp, dp)
    if topology == "vllm_dp":
        return "vllm_dp %d" % dp + ("" if tp == 1 else " x tp %d" % tp)
    if topology == "pp":
        # tensor parallel x pipeline parallel, the pipeline's name and this host's rank in it: "pp 2x2 big-0 rank 0"
        group = vllm_plan.get("group") or {}
        return "pp %dx%d %s rank %s" % (tp, vllm_plan.get("pipeline_parallel_size", 1), group.get("name", "?"), group.get("node_rank", "?"))
    return str(topology)


def rows_from_results(hosts, results):
    """Table rows from each host's plan (``results``: host -> a vllm_plan module result, a plan, a refusal or None).

    A refusal is the plan role's ``gpufleet_plan`` of a refused host: ``{"refused": message, "param": ..., "details": ...}``.
    """
    rows = []
    for host in hosts:
        result = results.get(host)
        if not isinstance(result, dict):
            rows.append({"host": host, "error": "no plan: the host failed or was unreachable before planning (see its error above)"})
            continue
        vllm_plan = result.get("plan") if "plan" in result else (result if "topology" in result else None)
        if isinstance(vllm_plan, dict):
            rows.append({"host": host, "plan": vllm_plan})
            continue
        details = result.get("details") or {}
        if result.get("skipped"):
            error = "no plan: skipped (%s)" % (result.get("skip_reason") or "condition false")
        else:
            error = result.get("refused") or result.get("msg") or "no plan"
        rows.append({"host": host, "error": error, "cards": details.get("cards"), "model": details.get("model")})
    return rows


def format_plan_table(rows, width=120):
    """Text table of plans, one row per host, then the reasons and warnings under it.

    ``rows``: dicts with ``host`` and either ``plan`` (a vllm_plan) or ``error`` (text).
    """
    table = []
    notes = []
    for row in rows:
        host = str(row.get("host", "?"))
        vllm_plan = row.get("plan")
        if isinstance(vllm_plan, dict) and vllm_plan.get("topology"):
            memory = vllm_plan.get("memory") or {}
            table.append(
                (
                    host,
                    str(vllm_plan.get("cards", "")),
                    model_words(vllm_plan),
                    topology_words(vllm_plan),
                    gib(memory.get("weights_bytes_per_gpu") or 0),
                    str(memory.get("kv_tokens_per_instance", "")),
                    "%.2fx" % (memory.get("max_concurrency") or 0),
                )
            )
            lines = [("why", text) for text in vllm_plan.get("reasons") or []]
            lines += [("warning", text) for text in vllm_plan.get("warnings") or []]
        else:
            table.append((host, str(row.get("cards") or "-"), str(row.get("model") or "-"), "REFUSED", "-", "-", "-"))
            lines = [("error", str(row.get("error") or "no plan (host unreachable, or its facts failed)"))]
        notes.append((host, lines))
    widths = [max(len(column), *(len(line[i]) for line in table)) if table else len(column) for i, column in enumerate(TABLE_COLUMNS)]
    out = ["  ".join(column.ljust(widths[i]) for i, column in enumerate(TABLE_COLUMNS)).rstrip()]
    out.append("  ".join("-" * widths[i] for i in range(len(TABLE_COLUMNS))))
    for line in table:
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
    for host, lines in notes:
        out.append("")
        out.append("%s:" % host)
        for label, text in lines:
            out.extend(textwrap.wrap(text, width=width, initial_indent="  %s: " % label, subsequent_indent=" " * (len(label) + 4)))
    return "\n".join(out)
