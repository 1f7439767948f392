"""The bake-off report: winners, the balancer ratio, Markdown, plots and the measurement file."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import bakeoff, nvml_facts
from ansible_collections.gpufleet.serving.plugins.module_utils import vllm_planner as vp

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
WHEN = "2026-11-27T05:40:00Z"


def summary(tok_s, ttft_p99, tpot_p50, *, ok=10, failed=0, latency_p99=1.0):
    return {
        "requests": ok + failed,
        "ok": ok,
        "failed": failed,
        "requests_per_s": tok_s / 8.0,
        "output_tokens_per_s": tok_s,
        "ttft_p50": ttft_p99 / 2,
        "ttft_p99": ttft_p99,
        "tpot_p50": tpot_p50,
        "tpot_p99": tpot_p50 * 1.5,
        "latency_p50": latency_p99 / 2,
        "latency_p99": latency_p99,
    }


# dp: best throughput (peak at 4); tp: best per-token time at 1; vllm_dp: best TTFT p99 at 4.
RESULTS = [
    {"topology": "dp", "concurrency": 1, "summary": summary(100.0, 0.050, 0.0100)},
    {"topology": "dp", "concurrency": 4, "summary": summary(300.0, 0.200, 0.0130)},
    {"topology": "tp", "concurrency": 1, "summary": summary(120.0, 0.040, 0.0080)},
    {"topology": "tp", "concurrency": 4, "summary": summary(200.0, 0.300, 0.0200)},
    {"topology": "vllm_dp", "concurrency": 1, "summary": summary(90.0, 0.060, 0.0110)},
    {"topology": "vllm_dp", "concurrency": 4, "summary": summary(280.0, 0.150, 0.0140)},
]


@pytest.fixture
def plan():
    gpus = nvml_facts.facts_from_raw(json.loads((FIXTURES / "nvml" / "h200x2-nvlink.nvml.json").read_text()), "snapshot")
    return vp.plan(gpus=gpus, model=str(FIXTURES / "models" / "Llama-3.1-8B"), max_model_len=8192)


def report_of(plan, balance=None):
    rows = bakeoff.check_results(RESULTS)
    return bakeoff.build_report(
        host="gpu1",
        measured_at=WHEN,
        plan=plan,
        rows=rows,
        plans={"dp": {"words": "dp x2"}, "tp": {"words": "tp 2"}, "vllm_dp": {"words": "vllm_dp 2"}},
        settings={"mix": "16:8", "concurrency": [1, 4], "requests_per_level": 10, "warmup_requests": 2, "client": "gpu1", "url": "http://127.0.0.1:8000"},
        balance=balance,
    )


def test_winner_per_objective():
    won = bakeoff.winners(bakeoff.check_results(RESULTS))
    assert won["throughput"]["winner"] == "dp"
    assert won["throughput"]["ranking"] == [
        {"topology": "dp", "value": 300.0, "concurrency": 4},
        {"topology": "vllm_dp", "value": 280.0, "concurrency": 4},
        {"topology": "tp", "value": 200.0, "concurrency": 4},
    ]
    assert won["latency"]["winner"] == "tp"
    assert [(r["topology"], r["value"], r["concurrency"]) for r in won["latency"]["ranking"]] == [("tp", 8.0, 1), ("dp", 10.0, 1), ("vllm_dp", 11.0, 1)]
    assert won["ttft"]["winner"] == "vllm_dp"
    assert [r["value"] for r in won["ttft"]["ranking"]] == [150.0, 200.0, 300.0]


def test_runs_with_failed_requests_cannot_win():
    results = [dict(r) for r in RESULTS]
    results[1] = {"topology": "dp", "concurrency": 4, "summary": summary(900.0, 0.01, 0.001, ok=9, failed=1)}
    won = bakeoff.winners(bakeoff.check_results(results))
    assert won["throughput"]["winner"] == "vllm_dp"
    assert ("dp", 100.0) in [(r["topology"], r["value"]) for r in won["throughput"]["ranking"]]
    assert won["ttft"]["excluded"] == ["dp"]


@pytest.mark.parametrize(
    ("results", "words"),
    [
        ([], "results: no topology was measured"),
        ([{"topology": "pp", "concurrency": 1, "summary": summary(1, 1, 1)}], "topology 'pp' is not one of"),
        ([{"topology": "dp", "concurrency": 0, "summary": summary(1, 1, 1)}], "concurrency must be a positive integer"),
        ([{"topology": "dp", "concurrency": 1, "summary": {}}], "summary must be the load generator's summary"),
        ([RESULTS[0], RESULTS[0]], "dp at concurrency 1 is measured twice"),
    ],
)
def test_bad_results_are_named(results, words):
    with pytest.raises(bakeoff.BakeoffError, match="results"):
        bakeoff.check_results(results)
    with pytest.raises(bakeoff.BakeoffError) as error:
        bakeoff.check_results(results)
    assert words in str(error.value)


def test_balance_ratio():
    runs = {"least_conn": summary(200, 0.1, 0.01, latency_p99=0.9), "round_robin": summary(190, 0.2, 0.01, latency_p99=1.2)}
    compared = bakeoff.balance_comparison(runs, topology="dp", mix="16:4,16:96", concurrency=4)
    assert compared["latency_p99_ratio"] == 0.75
    assert compared["ttft_p99_ratio"] == 0.5
    with pytest.raises(bakeoff.BakeoffError, match="balance: give the summaries of exactly least_conn and round_robin"):
        bakeoff.balance_comparison({"least_conn": runs["least_conn"]}, topology="dp", mix="x", concurrency=4)


def test_plot_series_per_topology():
    specs = bakeoff.plot_specs(bakeoff.check_results(RESULTS))
    assert [s["file"] for s in specs] == ["throughput.png", "ttft_p99.png"]
    throughput, ttft = specs
    assert [(s["topology"], s["color"], s["points"]) for s in throughput["series"]] == [
        ("dp", "#1f77b4", [[1, 100.0], [4, 300.0]]),
        ("tp", "#d62728", [[1, 120.0], [4, 200.0]]),
        ("vllm_dp", "#2ca02c", [[1, 90.0], [4, 280.0]]),
    ]
    assert ttft["series"][0]["points"] == [[1, 50.0], [4, 200.0]]


def test_markdown_names_the_winners_and_the_ratio(plan):
    balance = bakeoff.balance_comparison(
        {"least_conn": summary(200, 0.1, 0.01, latency_p99=0.9), "round_robin": summary(190, 0.2, 0.01, latency_p99=1.2)},
        topology="dp",
        mix="16:4,16:96",
        concurrency=4,
    )
    text = bakeoff.render_markdown(report_of(plan, balance=balance))
    assert text.startswith("# Bake-off on gpu1\n")
    assert "| dp | 4 | 10 / 0 | 37.50 | 300.0 | 100.0 | 200.0 | 13.0 | 19.5 |" in text
    assert "* **throughput**: `dp` (" in text and "dp 300, vllm_dp 280, tp 200 tok/s)" in text
    assert "* **latency**: `tp` (" in text
    assert "* **ttft**: `vllm_dp` (" in text
    assert "latency p99 ratio 0.750, TTFT p99 ratio 0.500" in text
    assert "![Output throughput vs concurrency](throughput.png)" in text
    assert "2 x NVIDIA H200" in text


def png_size(path):
    """(width, height) of a PNG, after checking its signature, IHDR first, IEND last and every chunk's CRC."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return struct.unpack(">II", chunks[0][1][:8])


def colours_in(path):
    from matplotlib import image  # noqa: PLC0415 - the control node's plotting library

    rgb = (image.imread(str(path))[:, :, :3].reshape(-1, 3) * 255).round().astype(int)
    return {"#%06x" % value for value in set((rgb[:, 0] * 65536 + rgb[:, 1] * 256 + rgb[:, 2]).tolist())}


def test_report_files_plots_and_measurement(tmp_path, plan):
    report = report_of(plan)
    measured = tmp_path / "fleet" / "measured.json"
    paths = bakeoff.write_report(report, str(tmp_path / "gpu1"), str(measured))
    assert sorted(Path(p).name for p in paths["plots"]) == ["throughput.png", "ttft_p99.png"]
    for path in paths["plots"]:
        assert png_size(path) == (800, 500)
        seen = colours_in(path)
        for colour in ("#1f77b4", "#d62728", "#2ca02c"):
            assert colour in seen, (path, colour)
        assert "#9467bd" not in seen  # no tp_dp series
    sidecar = json.loads(Path(paths["json"]).read_text())
    assert [[s["topology"] for s in p["series"]] for p in sidecar["plots"]] == [["dp", "tp", "vllm_dp"]] * 2
    data = json.loads(measured.read_text())
    assert data["format"] == vp.MEASURED_FORMAT and len(data["measurements"]) == 1
    entry = data["measurements"][0]
    assert (entry["host"], entry["model"], entry["max_model_len"]) == ("gpu1", "Llama-3.1-8B", 8192)
    # The planner reads what the bake-off wrote.
    now = vp.parse_measured_time("2026-11-28T00:00:00Z")
    gpus = nvml_facts.facts_from_raw(json.loads((FIXTURES / "nvml" / "h200x2-nvlink.nvml.json").read_text()), "snapshot")
    model = str(FIXTURES / "models" / "Llama-3.1-8B")
    latency = vp.plan(gpus=gpus, model=model, max_model_len=8192, objective="latency", measured=str(measured), now=now)
    assert (latency["topology"], latency["source"]) == ("tp", "measured")
    assert latency["reasons"][0] == (
        "measured: tp won latency, 8 vs 10 ms per output token (dp) at concurrency 1, bake-off of 2026-11-27 on gpu1; the estimate agrees."
    )
    other_len = vp.plan(gpus=gpus, model=model, max_model_len=4096, measured=str(measured), now=now)
    assert other_len["source"] == "estimated" and "max_model_len 8192, not 4096" in other_len["reasons"][0]


def test_a_new_run_replaces_the_same_host_and_keeps_others(tmp_path, plan):
    measured = tmp_path / "measured.json"
    bakeoff.write_report(report_of(plan), str(tmp_path / "a"), str(measured))
    other = report_of(plan)
    other["host"] = "gpu2"
    bakeoff.write_report(other, str(tmp_path / "b"), str(measured))
    again = report_of(plan)
    again["measured_at"] = "2026-11-28T00:00:00Z"
    bakeoff.write_report(again, str(tmp_path / "c"), str(measured))
    entries = json.loads(measured.read_text())["measurements"]
    assert sorted((e["host"], e["measured_at"]) for e in entries) == [("gpu1", "2026-11-28T00:00:00Z"), ("gpu2", WHEN)]


def test_a_broken_measurement_file_is_not_overwritten(tmp_path, plan):
    measured = tmp_path / "measured.json"
    measured.write_text("{broken")
    with pytest.raises(bakeoff.BakeoffError, match=r"measured_file: measured: .* is not readable JSON"):
        bakeoff.write_report(report_of(plan), str(tmp_path / "r"), str(measured))
    assert measured.read_text() == "{broken"


def test_markdown_says_the_served_dtype_when_it_differs_from_the_plan(plan):
    report = report_of(plan)
    planned = report["dtype"]
    assert "(%s, max_model_len" % planned in bakeoff.render_markdown(report)
    report["settings"] = dict(report["settings"], served_dtype="float32")
    assert "(planned for %s, served as float32, max_model_len" % planned in bakeoff.render_markdown(report)
    report["settings"]["served_dtype"] = "auto"
    assert "(%s, max_model_len" % planned in bakeoff.render_markdown(report)
