"""The thin modules of the bake-off: load_generate against a fake vLLM, bakeoff_report on plain data."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.gpufleet.serving.plugins.modules import bakeoff_report, load_generate
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import patch_module_args, run_as_module


class FakeVLLM(BaseHTTPRequestHandler):
    """Streams max_tokens text chunks, then the usage and [DONE], as vLLM does."""

    protocol_version = "HTTP/1.1"
    seen = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeVLLM.seen.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for n in range(body["max_tokens"]):
            self.wfile.write(b"data: " + json.dumps({"choices": [{"text": "t%d" % n}]}).encode() + b"\n\n")
        usage = {"choices": [], "usage": {"completion_tokens": body["max_tokens"]}}
        self.wfile.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")


def summary(tok_s, ttft_p99, tpot_p50):
    keys = ("requests_per_s", "ttft_p50", "tpot_p99", "latency_p50", "latency_p99")
    return dict(dict.fromkeys(keys, 1.0), requests=4, ok=4, failed=0, output_tokens_per_s=tok_s, ttft_p99=ttft_p99, tpot_p50=tpot_p50)


RESULTS = [
    {"topology": "dp", "concurrency": 1, "summary": summary(100.0, 0.05, 0.010)},
    {"topology": "tp", "concurrency": 1, "summary": summary(80.0, 0.04, 0.008)},
]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    run_as_module(monkeypatch)


@pytest.fixture
def fake_vllm():
    FakeVLLM.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeVLLM)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def run_module(module, capsys, args):
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def test_load_generate_summarises_real_requests(capsys, fake_vllm):
    result = run_module(load_generate, capsys, {"url": fake_vllm, "model": "tiny", "mix": "4:5,4:3", "concurrency": 2, "count": 6})
    assert result["summary"]["ok"] == 6 and result["summary"]["failed"] == 0
    assert result["summary"]["outcomes"] == {"ok": 6}
    assert sorted(body["max_tokens"] for body in FakeVLLM.seen) == [3, 3, 3, 5, 5, 5]
    assert "records" not in result and result["changed"] is False


def test_load_generate_returns_records_when_asked(capsys, fake_vllm):
    result = run_module(load_generate, capsys, {"url": fake_vllm, "model": "tiny", "count": 2, "return_records": True})
    assert [r["outcome"] for r in result["records"]] == ["ok", "ok"]


def test_load_generate_check_mode_sends_nothing(capsys, fake_vllm):
    result = run_module(load_generate, capsys, {"url": fake_vllm, "model": "tiny", "count": 6, "_ansible_check_mode": True})
    assert result["skipped"] and FakeVLLM.seen == []


@pytest.mark.parametrize(("args", "words"), [({"mix": "16"}, "mix: '16' is not"), ({"count": 0}, "count: must be 1 or more"), ({"url": "ftp://x"}, "url:")])
def test_load_generate_bad_settings_are_named(capsys, args, words):
    result = run_module(load_generate, capsys, dict({"url": "http://127.0.0.1:9", "model": "tiny", "count": 1}, **args))
    assert result["failed"] and words in result["msg"]


def report_args(tmp_path):
    plan = {"model": "tiny", "cards": "2 x NVIDIA H200 (140.4 GiB each, NVLink)", "dtype": "bfloat16", "max_model_len": 512, "gpu_memory_utilization": 0.9}
    return {
        "host": "gpu1",
        "plan": plan,
        "topologies": {"dp": {"words": "dp"}, "tp": {"words": "tp"}},
        "results": RESULTS,
        "balance": {"topology": "dp", "mix": "16:4,16:96", "concurrency": 4, "runs": {"least_conn": summary(1, 1, 1), "round_robin": summary(1, 2, 1)}},
        "measured_at": "2026-11-27T05:40:00Z",
        "report_dir": str(tmp_path / "gpu1"),
        "measured_file": str(tmp_path / "measured.json"),
    }


def test_bakeoff_report_check_mode_writes_nothing(capsys, tmp_path):
    result = run_module(bakeoff_report, capsys, dict(report_args(tmp_path), _ansible_check_mode=True))
    assert result["changed"] is False
    assert (result["winners"]["throughput"]["winner"], result["winners"]["latency"]["winner"]) == ("dp", "tp")
    assert result["balance"]["ttft_p99_ratio"] == 0.5
    assert not (tmp_path / "gpu1").exists() and not (tmp_path / "measured.json").exists()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"results": []}, "results: no topology was measured"),
        ({"plan": {"model": "tiny"}}, "plan: not a vllm_plan (no cards, dtype"),
        ({"measured_at": "yesterday"}, "measured: measured_at: 'yesterday' is not an ISO 8601 time"),
        ({"balance": {"runs": {"least_conn": {}}}}, "balance: give the summaries of exactly least_conn and round_robin"),
    ],
)
def test_bakeoff_report_bad_input_is_named(capsys, tmp_path, change, words):
    result = run_module(bakeoff_report, capsys, dict(report_args(tmp_path), **change))
    assert result["failed"] and words in result["msg"], result["msg"]
    assert not (tmp_path / "measured.json").exists()
