# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The bake-off's report: winners per objective, the measurement file, Markdown and plots.

Pure functions over the load generator's summaries (``loadgen.summarize``), one
per topology and concurrency level, plus the plans that were measured. The
measurement file is the one ``vllm_planner.plan(measured=...)`` reads; its shape
is described in docs/bakeoff.md. Only ``draw_plots`` needs matplotlib (on the
control node); everything else is the standard library.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile

from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_planner
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError, is_int, is_number, json_depth_ok, regular_file

# matplotlib is imported when a plot is drawn, not with this file: a report whose
# input is refused (or a check-mode run) does not pay for the import.
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
MATPLOTLIB_IMPORT_ERROR = None if HAS_MATPLOTLIB else "No module named 'matplotlib'"

TOPOLOGIES = ("dp", "tp", "vllm_dp")
BALANCES = ("least_conn", "round_robin")
# One colour per topology, the same in every plot (and named in the JSON sidecar).
COLORS = {"dp": "#1f77b4", "tp": "#d62728", "vllm_dp": "#2ca02c", "tp_dp": "#9467bd"}
SUMMARY_KEYS = (
    "requests",
    "ok",
    "failed",
    "requests_per_s",
    "output_tokens_per_s",
    "ttft_p50",
    "ttft_p99",
    "tpot_p50",
    "tpot_p99",
    "latency_p50",
    "latency_p99",
)

# Each objective: the figure compared, which way is better, and at which
# concurrency level. "peak" takes each topology's best level.
OBJECTIVES = {
    "throughput": {
        "metric": "output_tokens_per_s",
        "better": "higher",
        "level": "peak",
        "unit": "tok/s",
        "scale": 1.0,
        "words": "most output tokens per second, at the best concurrency level of each topology",
    },
    "latency": {
        "metric": "tpot_p50",
        "better": "lower",
        "level": "lowest",
        "unit": "ms per output token",
        "scale": 1000.0,
        "words": "lowest median time per output token at the lowest concurrency level (an interactive user alone)",
    },
    "ttft": {
        "metric": "ttft_p99",
        "better": "lower",
        "level": "highest",
        "unit": "ms TTFT p99",
        "scale": 1000.0,
        "words": "lowest p99 time to first token at the highest concurrency level (responsiveness under load)",
    },
}

PLOTS = (
    {"file": "throughput.png", "metric": "output_tokens_per_s", "scale": 1.0, "title": "Output throughput vs concurrency", "ylabel": "output tokens/s"},
    {"file": "ttft_p99.png", "metric": "ttft_p99", "scale": 1000.0, "title": "Time to first token (p99) vs concurrency", "ylabel": "TTFT p99 (ms)"},
)


class BakeoffError(ValueError):
    """Bad bake-off input; the message starts with the field to fix."""


# Bounds of a report's input (a bake-off measures a few topologies at a few levels).
MAX_RESULTS = 1000
MAX_CONCURRENCY = 100000
MAX_REQUESTS = 10**9
MAX_TOPOLOGIES = 16
MAX_SETTINGS_DEPTH = 8
MAX_TEXT = 1024
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
COUNT_KEYS = ("requests", "ok", "failed")


def check_summary(summary, where):
    """A load generator summary with counts and finite, non-negative figures (None where nothing was measured)."""
    if not isinstance(summary, dict) or "ok" not in summary:
        raise BakeoffError("%s: must be the load generator's summary" % where)
    for key in SUMMARY_KEYS:
        value = summary.get(key)
        if key in COUNT_KEYS:
            if value is not None and not is_int(value, 0, MAX_REQUESTS):
                raise BakeoffError("%s.%s: must be a whole number of requests from 0 to %d, not %r" % (where, key, MAX_REQUESTS, value))
        elif value is not None and not is_number(value, 0):
            raise BakeoffError("%s.%s: must be a finite number, 0 or more (or null), not %r" % (where, key, value))
    return summary


def _check_text(value, where, pattern=None):
    if not isinstance(value, str) or len(value) > MAX_TEXT or CONTROL_RE.search(value) or (pattern is not None and not pattern.match(value)):
        raise BakeoffError("%s: must be a string of at most %d characters without control characters, not %r" % (where, MAX_TEXT, value))
    return value


def _check_plan_fields(plan):
    """The plan's model, cards, dtype, max_model_len and gpu_memory_utilization, as the report prints them."""
    if not isinstance(plan, dict):
        raise BakeoffError("plan: must be a vllm_plan")
    for key in ("model", "cards", "dtype"):
        _check_text(plan.get(key), "plan.%s" % key)
    if not is_int(plan.get("max_model_len"), 1, vllm_planner.MAX_MODEL_LEN):
        raise BakeoffError("plan.max_model_len: must be a positive whole number of tokens, not %r" % (plan.get("max_model_len"),))
    if not is_number(plan.get("gpu_memory_utilization")) or not 0 < plan["gpu_memory_utilization"] <= 1:
        raise BakeoffError("plan.gpu_memory_utilization: must be a fraction in (0, 1], not %r" % (plan.get("gpu_memory_utilization"),))


def _check_topology_words(plans):
    """Each topology's name, and the words or refusal the planner gave it."""
    if not isinstance(plans, dict) or len(plans) > MAX_TOPOLOGIES:
        raise BakeoffError("topologies: must map at most %d topology names to what was planned" % MAX_TOPOLOGIES)
    for name, info in plans.items():
        _check_text(name, "topologies key")
        if not isinstance(info, dict):
            raise BakeoffError("topologies.%s: must be an object (words, or refused), not %r" % (name, info))
        for key in ("words", "refused"):
            if info.get(key) is not None and not isinstance(info[key], str):
                raise BakeoffError("topologies.%s.%s: must be a string, not %r" % (name, key, info[key]))


def _check_settings(settings):
    """The load settings: a shallow object, its concurrency levels, and text the report can print."""
    if not isinstance(settings, dict) or not json_depth_ok(settings, MAX_SETTINGS_DEPTH):
        raise BakeoffError("settings: must be an object nested at most %d levels deep" % MAX_SETTINGS_DEPTH)
    levels = settings.get("concurrency", [])
    if not isinstance(levels, list) or len(levels) > MAX_RESULTS or not all(is_int(c, 1, MAX_CONCURRENCY) for c in levels):
        raise BakeoffError("settings.concurrency: must be a list of concurrency levels (whole numbers from 1 to %d), not %r" % (MAX_CONCURRENCY, levels))
    for key, value in settings.items():
        _check_text(key, "settings key")
        if isinstance(value, str):
            _check_text(value, "settings.%s" % key)


def check_report_input(*, host, plan, plans, settings):
    """Refuse a host, plan, topologies or settings that the report cannot print safely."""
    _check_text(host, "host", HOST_RE)
    _check_plan_fields(plan)
    _check_topology_words(plans)
    _check_settings(settings)


def check_results(results):
    """Validate the measured runs: [{topology, concurrency, summary}], returns them as rows."""
    if not isinstance(results, list) or not results:
        raise BakeoffError("results: no topology was measured (every candidate was refused, or the list is empty)")
    if len(results) > MAX_RESULTS:
        raise BakeoffError("results: %d runs, more than the %d a report holds" % (len(results), MAX_RESULTS))
    rows = []
    seen = set()
    for position, item in enumerate(results):
        if not isinstance(item, dict):
            raise BakeoffError("results[%d]: must be a dict" % position)
        topology = item.get("topology")
        concurrency = item.get("concurrency")
        summary = item.get("summary")
        if topology not in COLORS:
            raise BakeoffError("results[%d]: topology %r is not one of %s" % (position, topology, ", ".join(COLORS)))
        if not is_int(concurrency, 1, MAX_CONCURRENCY):
            raise BakeoffError("results[%d]: concurrency must be a positive integer (at most %d), not %r" % (position, MAX_CONCURRENCY, concurrency))
        if not isinstance(summary, dict) or "ok" not in summary:
            raise BakeoffError("results[%d]: summary must be the load generator's summary" % position)
        check_summary(summary, "results[%d].summary" % position)
        if (topology, concurrency) in seen:
            raise BakeoffError("results[%d]: %s at concurrency %d is measured twice" % (position, topology, concurrency))
        seen.add((topology, concurrency))
        row = {"topology": topology, "concurrency": concurrency}
        row.update({key: summary.get(key) for key in SUMMARY_KEYS})
        rows.append(row)
    return sorted(rows, key=lambda r: (list(COLORS).index(r["topology"]), r["concurrency"]))


def usable(row):
    """A run counts towards a winner only when every request succeeded."""
    return bool(row["ok"]) and not row["failed"]


def winners(rows):
    """Per objective: the topologies ranked best first, with the figure and level compared."""
    levels = sorted({r["concurrency"] for r in rows})
    out = {}
    for name, spec in OBJECTIVES.items():
        ranking = []
        excluded = []
        for topology in sorted({r["topology"] for r in rows}, key=list(COLORS).index):
            own = [r for r in rows if r["topology"] == topology]
            if spec["level"] == "lowest":
                candidates = [r for r in own if r["concurrency"] == levels[0]]
            elif spec["level"] == "highest":
                candidates = [r for r in own if r["concurrency"] == levels[-1]]
            else:
                candidates = own
            good = [r for r in candidates if usable(r) and r[spec["metric"]] is not None]
            if not good:
                excluded.append(topology)
                continue
            pick = max if spec["better"] == "higher" else min
            best = pick(good, key=lambda r, m=spec["metric"]: r[m])
            ranking.append({"topology": topology, "value": round(best[spec["metric"]] * spec["scale"], 4), "concurrency": best["concurrency"]})
        ranking.sort(key=lambda r: r["value"], reverse=spec["better"] == "higher")
        out[name] = {
            "metric": spec["metric"],
            "better": spec["better"],
            "unit": spec["unit"],
            "level": spec["level"],
            "words": spec["words"],
            "ranking": ranking,
            "winner": ranking[0]["topology"] if ranking else None,
            # Topologies with failed requests (or none measured at that level) cannot win.
            "excluded": excluded,
        }
    return out


def balance_comparison(runs, *, topology, mix, concurrency):
    """least_conn against round_robin on the same topology and mixed-length load."""
    if not isinstance(runs, dict) or set(runs) != set(BALANCES):
        raise BakeoffError("balance: give the summaries of exactly %s" % " and ".join(BALANCES))
    if not is_int(concurrency, 1, MAX_CONCURRENCY):
        raise BakeoffError("balance.concurrency: must be a whole number from 1 to %d, not %r" % (MAX_CONCURRENCY, concurrency))
    _check_text(topology, "balance.topology")
    _check_text(mix, "balance.mix")
    rows = {}
    for name in BALANCES:
        summary = check_summary(runs[name], "balance.%s" % name)
        rows[name] = {key: summary.get(key) for key in SUMMARY_KEYS}

    def ratio(metric):
        first, second = rows["least_conn"][metric], rows["round_robin"][metric]
        return round(first / second, 3) if first is not None and second else None

    return {
        "topology": topology,
        "mix": mix,
        "concurrency": concurrency,
        "runs": rows,
        "latency_p99_ratio": ratio("latency_p99"),
        "ttft_p99_ratio": ratio("ttft_p99"),
    }


def plot_specs(rows):
    """What each plot shows: one series per topology, its colour and its points (x concurrency)."""
    specs = []
    for plot in PLOTS:
        series = []
        for topology in sorted({r["topology"] for r in rows}, key=list(COLORS).index):
            points = [
                [r["concurrency"], round(r[plot["metric"]] * plot["scale"], 4)]
                for r in rows
                if r["topology"] == topology and usable(r) and r[plot["metric"]] is not None
            ]
            if points:
                series.append({"topology": topology, "color": COLORS[topology], "points": points})
        specs.append(dict(plot, xlabel="concurrency (clients)", series=series))
    return specs


def build_report(*, host, measured_at, plan, rows, plans, settings, balance=None):
    """The whole report as one dict (also the JSON sidecar next to the Markdown)."""
    check_report_input(host=host, plan=plan, plans=plans, settings=settings)
    vllm_planner.parse_measured_time(measured_at)
    return {
        "host": host,
        "measured_at": measured_at,
        "model": plan["model"],
        "cards": plan["cards"],
        "dtype": plan["dtype"],
        "max_model_len": plan["max_model_len"],
        "gpu_memory_utilization": plan["gpu_memory_utilization"],
        "settings": settings,
        "topologies": plans,
        "results": rows,
        "winners": winners(rows),
        "balance": balance,
        "plots": plot_specs(rows),
    }


def measurement(report):
    """The entry of the measurement file for this report (what the planner reads)."""
    keys = ("host", "measured_at", *vllm_planner.MEASURED_MATCH_KEYS, "settings", "results", "winners", "balance")
    return {key: report[key] for key in keys}


def merge_measurements(existing, entry):
    """The measurement file with ``entry`` in it, replacing an entry of the same host and match keys."""
    if existing is None:
        existing = {"format": vllm_planner.MEASURED_FORMAT, "version": vllm_planner.MEASURED_VERSION, "measurements": []}
    vllm_planner.check_measured(existing)
    key = [entry[k] for k in ("host", *vllm_planner.MEASURED_MATCH_KEYS)]
    kept = [e for e in existing["measurements"] if [e.get(k) for k in ("host", *vllm_planner.MEASURED_MATCH_KEYS)] != key]
    merged = dict(existing, measurements=[*kept, entry])
    vllm_planner.check_measured(merged)
    return merged


def _ms(value):
    return "-" if value is None else "%.1f" % (value * 1000.0)


def _num(value, fmt="%.2f"):
    return "-" if value is None else fmt % value


def _dtype_words(planned, served):
    """The weight type the plan was made for, and the one vLLM served when it differs (``--dtype``)."""
    if not served or served in ("auto", planned):
        return planned
    return "planned for %s, served as %s" % (planned, served)


def _md_heading(report):
    """The title and the two sentences that say what was measured and under which load."""
    s = report["settings"]
    return [
        "# Bake-off on %s" % report["host"],
        "",
        "Measured %s: model `%s` (%s, max_model_len %d) on %s, gpu_memory_utilization %s."
        % (
            report["measured_at"],
            report["model"],
            _dtype_words(report["dtype"], s.get("served_dtype")),
            report["max_model_len"],
            report["cards"],
            report["gpu_memory_utilization"],
        ),
        "Load: request mix `%s` (prompt words:output tokens), %s requests per level after %s warm-up, concurrency %s; "
        "client on %s against %s (%s)."
        % (
            s.get("mix"),
            s.get("requests_per_level"),
            s.get("warmup_requests"),
            ", ".join(str(c) for c in s.get("concurrency", [])),
            s.get("client"),
            s.get("url"),
            s.get("front", "the server tier's nginx in front of the topology"),
        ),
    ]


def _md_topologies(report):
    lines = ["", "## Topologies", ""]
    for topology, info in report["topologies"].items():
        if info.get("refused"):
            lines.append("* `%s`: not measured, the planner refuses it: %s" % (topology, info["refused"]))
        else:
            lines.append("* `%s`: %s" % (topology, info.get("words", "")))
    return lines


def _md_results(report):
    lines = [
        "",
        "## Results",
        "",
        "| topology | concurrency | ok / failed | requests/s | output tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        lines.append(
            "| %s | %d | %s / %s | %s | %s | %s | %s | %s | %s |"
            % (
                r["topology"],
                r["concurrency"],
                r["ok"],
                r["failed"],
                _num(r["requests_per_s"]),
                _num(r["output_tokens_per_s"], "%.1f"),
                _ms(r["ttft_p50"]),
                _ms(r["ttft_p99"]),
                _ms(r["tpot_p50"]),
                _ms(r["tpot_p99"]),
            )
        )
    return lines


def _md_winners(report):
    lines = ["", "## Winners", ""]
    for name, winner in report["winners"].items():
        if not winner["ranking"]:
            lines.append("* **%s**: no winner, no topology completed every request at the level compared." % name)
            continue
        ranking = ", ".join("%s %s" % (r["topology"], _num(r["value"], "%.4g")) for r in winner["ranking"])
        lines.append("* **%s**: `%s` (%s; %s %s)" % (name, winner["winner"], winner["words"], ranking, winner["unit"]))
        if winner["excluded"]:
            lines.append("  (not ranked, failed requests or not measured at that level: %s)" % ", ".join(winner["excluded"]))
    return lines


def _md_balance(balance):
    """The least_conn against round_robin section; none without a balancer comparison."""
    if not balance:
        return []
    runs = balance["runs"]
    lines = [
        "",
        "## least_conn vs round_robin",
        "",
        "Topology `%s`, mixed-length mix `%s` at concurrency %d, the server tier's upstream switched between the two."
        % (balance["topology"], balance["mix"], balance["concurrency"]),
        "",
        "| balance | ok / failed | requests/s | latency p50 ms | latency p99 ms | TTFT p99 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in BALANCES:
        r = runs[name]
        lines.append(
            "| %s | %s / %s | %s | %s | %s | %s |"
            % (name, r["ok"], r["failed"], _num(r["requests_per_s"]), _ms(r["latency_p50"]), _ms(r["latency_p99"]), _ms(r["ttft_p99"]))
        )
    lines += [
        "",
        "least_conn / round_robin: latency p99 ratio %s, TTFT p99 ratio %s (below 1: least_conn is better)."
        % (_num(balance["latency_p99_ratio"], "%.3f"), _num(balance["ttft_p99_ratio"], "%.3f")),
    ]
    return lines


def _md_plots(report):
    """Links to the plots, or (where matplotlib was missing) what each would have shown."""
    drawn = report.get("plots_drawn") is not False
    lines = ["", "## Plots", ""]
    if not drawn:
        lines += ["Not drawn: matplotlib is not installed where this report was written; each plot's series are in report.json.", ""]
    for plot in report["plots"]:
        names = ", ".join("%s (%s)" % (x["topology"], x["color"]) for x in plot["series"])
        if drawn:
            lines += ["![%s](%s)" % (plot["title"], plot["file"]), "", "Series: %s." % names, ""]
        else:
            lines += ["%s. Series: %s." % (plot["title"], names), ""]
    return lines


def render_markdown(report):
    """The report as Markdown: settings, the table, winners, the balancer comparison, the plots."""
    lines = [
        *_md_heading(report),
        *_md_topologies(report),
        *_md_results(report),
        *_md_winners(report),
        *_md_balance(report.get("balance")),
        *_md_plots(report),
    ]
    return "\n".join(lines).rstrip() + "\n"


def draw_plots(report, directory, width=8.0, height=5.0, dpi=100):
    """Write each plot of the report as a PNG in ``directory``; returns the paths."""
    if not HAS_MATPLOTLIB:
        raise BakeoffError("matplotlib is not installed on the control node: pip install matplotlib (requirements.txt pins it)")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - only drawing needs it
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the control node
        raise BakeoffError("matplotlib cannot be imported on the control node (%s): pip install matplotlib again" % exc) from None
    paths = []
    for plot in report["plots"]:
        figure = Figure(figsize=(width, height), dpi=dpi)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        for series in plot["series"]:
            xs = [p[0] for p in series["points"]]
            ys = [p[1] for p in series["points"]]
            axes.plot(xs, ys, color=series["color"], marker="o", markersize=7, linewidth=2.5, label=series["topology"])
        axes.set_xscale("log", base=2)
        levels = sorted({p[0] for series in plot["series"] for p in series["points"]})
        axes.set_xticks(levels)
        axes.set_xticklabels([str(x) for x in levels])
        axes.set_xlabel(plot["xlabel"])
        axes.set_ylabel(plot["ylabel"])
        axes.set_title("%s (%s, %s)" % (plot["title"], report["host"], report["model"]))
        axes.grid(True, alpha=0.3)
        if plot["series"]:
            axes.legend(title="topology")
        path = os.path.join(directory, plot["file"])
        figure.savefig(path, format="png")
        paths.append(path)
    return paths


def write_text(path, text):
    """Write a file atomically (a temporary file in the same folder, then a rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".bakeoff-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_target_folder(path, option):
    """Refuse a path whose existing part is not a folder where one is needed."""
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise BakeoffError("%s: %s is not a folder; choose another path" % (option, probe))


def prepare_report(report, directory, measured_file):
    """Everything ``write_report`` writes, checked and rendered before anything is written: (texts, merged measurements)."""
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise BakeoffError("report_dir: %s exists and is not a folder; remove it or choose another report_dir" % directory)
    _check_target_folder(directory, "report_dir")
    if os.path.isdir(measured_file):
        raise BakeoffError("measured_file: %s is a folder; give the path of the measurement file" % measured_file)
    _check_target_folder(os.path.dirname(os.path.abspath(measured_file)), "measured_file")
    existing = None
    if os.path.lexists(measured_file):
        try:
            regular_file(measured_file, vllm_planner.MAX_MEASURED_BYTES, "measured_file")
            existing = vllm_planner.load_measured(measured_file)
        except InputError as exc:
            raise BakeoffError("%s; remove it or choose another measured_file" % exc) from None
        except vllm_planner.PlanError as exc:
            raise BakeoffError("measured_file: %s" % exc) from exc
    merged = merge_measurements(existing, measurement(report))
    texts = {"markdown": render_markdown(report), "json": json.dumps(report, indent=2, sort_keys=True) + "\n"}
    return texts, merged


def write_report(report, directory, measured_file, extra_markdown=""):
    """Write report.md, report.json, the plots and the merged measurement file; returns the paths.

    Every input is checked, and the texts rendered, before the first file is written.
    A report whose ``plots_drawn`` is False (made where matplotlib is missing)
    gets no PNG files; ``extra_markdown`` is appended to report.md.
    """
    texts, merged = prepare_report(report, directory, measured_file)
    os.makedirs(directory, exist_ok=True)
    paths = {"markdown": os.path.join(directory, "report.md"), "json": os.path.join(directory, "report.json")}
    paths["plots"] = draw_plots(report, directory) if report.get("plots_drawn") is not False else []
    write_text(paths["markdown"], texts["markdown"] + extra_markdown)
    write_text(paths["json"], texts["json"])
    os.makedirs(os.path.dirname(os.path.abspath(measured_file)), exist_ok=True)
    write_text(measured_file, json.dumps(merged, indent=2, sort_keys=True) + "\n")
    paths["measured"] = measured_file
    return paths
