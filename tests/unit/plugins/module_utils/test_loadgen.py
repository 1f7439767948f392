"""The load generator against a real local HTTP server that behaves like vLLM, or breaks."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import loadgen


class FakeVLLM(BaseHTTPRequestHandler):
    """Streams `max_tokens` chunks, or misbehaves as the prompt's first word says."""

    protocol_version = "HTTP/1.1"
    mode = "ok"
    seen = []

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeVLLM.seen.append((self.path, body, dict(self.headers)))
        mode = FakeVLLM.mode
        if mode == "http500":
            payload = b'{"error": "boom"}'
            self.send_response(500)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if not body.get("stream"):
            payload = json.dumps({"choices": [{"text": "x"}], "usage": {"completion_tokens": body["max_tokens"]}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        chat = self.path == "/v1/chat/completions"
        for n in range(0 if mode == "empty" else body["max_tokens"]):
            choice = {"delta": {"content": "t%d" % n}} if chat else {"text": "t%d" % n}
            self.wfile.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
            self.wfile.flush()
            if mode == "drop" and n == 1:
                self.connection.shutdown(socket.SHUT_RDWR)
                return
        if mode == "empty":
            self.wfile.write(b"data: [DONE]\n\n")
            return
        usage = {"choices": [], "usage": {"completion_tokens": body["max_tokens"]}}
        self.wfile.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")


@pytest.fixture()
def server():
    FakeVLLM.mode = "ok"
    FakeVLLM.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeVLLM)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def settings(url, **extra):
    s = {"url": url, "model": "tiny", "count": 6, "concurrency": 3, "mix": "4:5,8:3"}
    s.update(extra)
    return s


def test_streamed_completions_are_timed_and_counted(server):
    records = loadgen.run(settings(server, key="k1"))
    assert [r["i"] for r in records] == list(range(6))
    assert all(r["outcome"] == "ok" for r in records)
    assert [r["tokens"] for r in records] == [5, 3, 5, 3, 5, 3]
    assert all(0 < r["ttft"] <= r["latency"] for r in records)
    assert all(r["tpot"] is not None and r["tpot"] >= 0 for r in records)
    path, body, headers = FakeVLLM.seen[0]
    assert path == "/v1/completions" and body["stream"] and body["stream_options"] == {"include_usage": True}
    assert headers["Authorization"] == "Bearer k1"
    assert body["ignore_eos"] is True
    assert len(body["prompt"].split()) in (4, 8)
    summary = loadgen.summarize(records)
    assert summary["ok"] == 6 and summary["failed"] == 0 and summary["outcomes"] == {"ok": 6}
    assert summary["output_tokens_per_s"] > 0 and summary["ttft_p50"] <= summary["ttft_p99"]


def test_chat_path_reads_deltas(server):
    records = loadgen.run(settings(server, path="/v1/chat/completions", count=2))
    assert [r["tokens"] for r in records] == [5, 3]
    assert FakeVLLM.seen[0][1]["messages"][0]["role"] == "user"


def test_not_streamed(server):
    records = loadgen.run(settings(server, stream=False, count=2))
    assert [(r["outcome"], r["tokens"]) for r in records] == [("ok", 5), ("ok", 3)]


@pytest.mark.parametrize(("mode", "outcome"), [("http500", "http_500"), ("drop", "incomplete"), ("empty", "bad_answer")])
def test_broken_answers_are_failures(server, mode, outcome):
    FakeVLLM.mode = mode
    records = loadgen.run(settings(server, count=2, mix="4:5"))
    assert [r["outcome"] for r in records] == [outcome, outcome]
    assert loadgen.summarize(records)["failed"] == 2


def test_refused_connection_is_a_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    records = loadgen.run(settings("http://127.0.0.1:%d" % port, count=2))
    assert [r["outcome"] for r in records] == ["connect_error", "connect_error"]
    assert records[0]["error"]


def test_stop_file_and_rate_bound_the_load(server, tmp_path):
    stop = tmp_path / "stop"
    seen = []

    def on_record(record):
        seen.append(record)
        if len(seen) == 3:
            stop.write_text("")

    before = time.time()
    records = loadgen.run(settings(server, count=0, stop_file=str(stop), rate=50, concurrency=1), on_record)
    assert 3 <= len(records) <= 4
    # Request i is not sent before its time, i / rate after the load began (a late one may follow
    # the one before at once: the schedule catches up, as a fixed-rate client should; the gaps
    # between starts are no bound on a loaded machine, 2026-12-02).
    assert all(r["start"] >= before + r["i"] / 50 for r in records), [(r["i"], r["start"] - before) for r in records]


def test_in_flight_and_percentiles():
    records = [{"start": 0.0, "end": 2.0}, {"start": 1.0, "end": 1.5}, {"start": 3.0, "end": 4.0}]
    assert loadgen.in_flight(records, 1.2) == records[:2]
    assert loadgen.in_flight(records, 2.5) == []
    assert loadgen.percentile([1, 2, 3, 4], 50) == 2.5
    assert loadgen.percentile([5], 99) == 5
    assert loadgen.percentile([None], 50) is None


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"url": "ftp://x"}, "url"),
        ({"path": "/v1/embeddings"}, "path"),
        ({"model": ""}, "model"),
        ({"concurrency": 0}, "concurrency"),
        ({"rate": -1}, "rate"),
        ({"count": 0}, "bound"),
        ({"mix": "4x5"}, "mix"),
        ({"mix": "0:5"}, "mix"),
    ],
)
def test_bad_settings_name_the_setting(change, word):
    with pytest.raises(loadgen.LoadError, match=word):
        loadgen.check_settings(dict(settings("http://127.0.0.1:1"), **change))


def test_cli_prints_a_summary_and_writes_records(server, tmp_path, capsys):
    out = tmp_path / "records.jsonl"
    assert loadgen.main(["--url", server, "--model", "tiny", "--count", "3", "--records", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == 3
    assert len(out.read_text().splitlines()) == 3
    assert loadgen.main(["--url", server, "--model", "tiny"]) == 2
    assert "bound" in capsys.readouterr().err


def test_a_trickling_server_cannot_hold_the_load_past_its_deadline():
    """A server that sends a byte a second, forever: the deadline cuts the requests and names itself."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _addr = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
            while not stop.is_set():
                try:
                    conn.sendall(b"d")
                except OSError:
                    break
                time.sleep(0.5)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    began = time.monotonic()
    try:
        with pytest.raises(loadgen.DeadlineError, match="deadline: the load did not end within 2 s") as late:
            loadgen.run({"url": "http://127.0.0.1:%d" % listener.getsockname()[1], "model": "m", "count": 1, "concurrency": 1, "timeout": 60}, deadline=2)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - began < 10
    assert [r["outcome"] for r in late.value.records] == ["timeout"]


@pytest.mark.parametrize(
    ("url", "words"),
    [("http://[::1", "url:"), ("http://127.0.0.1:99999", "url:"), ("http://u:p@127.0.0.1", "credentials"), ("http://h/v1?x", "without a path")],
)
def test_urls_that_cannot_be_an_endpoint_are_named(url, words):
    with pytest.raises(loadgen.LoadError, match=words.replace("?", r"\?")):
        loadgen.check_url(url)


@pytest.fixture()
def two_servers():
    FakeVLLM.mode = "ok"
    FakeVLLM.seen = []
    started = []
    for _n in range(2):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeVLLM)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
    yield ["http://127.0.0.1:%d" % httpd.server_address[1] for httpd in started]
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def test_several_urls_share_the_load_in_turn_when_idle(two_servers):
    records = loadgen.run(settings("http://127.0.0.1:1", urls=two_servers, count=6, concurrency=1))
    assert all(r["outcome"] == "ok" for r in records)
    # One client: every endpoint is idle when a request starts, so they take turns.
    assert [r["url"] for r in records] == two_servers * 3


def test_several_urls_go_to_the_least_busy(two_servers):
    records = loadgen.run(settings("http://127.0.0.1:1", urls=two_servers, count=8, concurrency=2))
    assert all(r["outcome"] == "ok" for r in records)
    # How many each gets depends on how long each answer takes (a starved server thread keeps its
    # endpoint busy, and the other one takes the next requests: least busy at work); the first two
    # always go to both, in flight or in turn. The rule itself: test_the_pick_is_least_busy_then_in_turn.
    per_url = [sum(1 for r in records if r["url"] == url) for url in two_servers]
    assert sum(per_url) == 8 and min(per_url) >= 1, per_url
    assert {records[0]["url"], records[1]["url"]} == set(two_servers), records[:2]


def test_the_pick_is_least_busy_then_in_turn():
    clients = loadgen._Clients(loadgen.check_settings(settings("http://127.0.0.1:1", urls=["http://a:1", "http://b:2", "http://c:3"])), None, None, None)
    assert [clients._pick() for _n in range(3)] == [0, 1, 2]  # all idle: in turn
    clients.busy = [2, 0, 1]
    assert clients._pick() == 1 and clients.busy == [2, 1, 1]  # the least busy
    assert clients._pick() == 2  # tie between 1 and 2: the turn has moved past 1
    clients.busy = [0, 0, 0]
    assert [clients._pick() for _n in range(4)] == [0, 1, 2, 0]


def test_one_url_leaves_records_as_they_were(server):
    records = loadgen.run(settings(server, count=2))
    assert all("url" not in r for r in records)


@pytest.mark.parametrize("urls", ["http://a:1", ["http://a:1", "ftp://b"], [7]])
def test_bad_urls_are_refused(urls):
    with pytest.raises(loadgen.LoadError, match="urls"):
        loadgen.check_settings(dict(settings("http://127.0.0.1:1"), urls=urls))
