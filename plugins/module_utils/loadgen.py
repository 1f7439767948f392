# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A small load generator for OpenAI-compatible endpoints (vLLM, the gateways).

Standard library only, so that the same file runs on the control node, inside
a fleet host (``python3 loadgen.py ...``, or piped to ``python3 -``) and under
Ansible. Each request is a real HTTP request (``http.client``), streamed by
default, and leaves one record: when it started and ended (wall clock, so that
records line up with events such as a kill), its outcome, the time to the first
token and the number of output tokens.

The load is bounded in count and in time: requests are issued at ``rate`` per
second (0: back to back) by at most ``concurrency`` clients, until ``count``
requests were issued, ``duration`` seconds passed or ``stop_file`` appears.

``urls`` (several endpoints of one model, such as data-parallel instances with
no balancer in front) spreads the requests itself: each goes to the endpoint
with the fewest requests in flight, ties in turn (nginx's least_conn).

Outcomes: ``ok``; ``http_<status>`` (an answer other than 200);
``connect_error`` (no connection); ``reset`` (the connection broke before an
answer); ``incomplete`` (a stream that ended before ``[DONE]``); ``timeout``;
``bad_answer`` (200 without any token).
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import math
import os
import random
import re
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

PATHS = ("/v1/completions", "/v1/chat/completions")
# Bounds: the load always ends, and no request or answer grows without limit.
MAX_COUNT = 1000000
MAX_CONCURRENCY = 4096
MAX_PROMPT_WORDS = 100000
MAX_OUTPUT_TOKENS = 1000000
MAX_MIX_KINDS = 64
MAX_TIMEOUT = 86400.0
MAX_DURATION = 7 * 86400.0
MAX_RATE = 100000.0
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,254}$")
HOST_RE = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")
KEY_RE = re.compile(r"^[\x21-\x7e]{0,4096}$")
WORDS = ("fleet", "gateway", "token", "server", "card", "model", "batch", "cache", "link", "engine")


class LoadError(ValueError):
    """A bad setting; the message names it."""


def parse_mix(text):
    """'32:16,256:64' -> [(32, 16), (256, 64)]: prompt words and output tokens per request kind."""
    mix = []
    for raw in str(text).split(","):
        part = raw.strip()
        if not part:
            continue
        pieces = part.split(":")
        if len(pieces) != 2 or not all(p.strip().isdigit() and len(p.strip()) <= 9 for p in pieces):
            raise LoadError("mix: %r is not PROMPT_WORDS:OUTPUT_TOKENS (for example 32:16)" % part[:80])
        prompt, output = (int(x) for x in pieces)
        if prompt < 1 or output < 1:
            raise LoadError("mix: %r needs a prompt and an output of at least 1" % part)
        if prompt > MAX_PROMPT_WORDS or output > MAX_OUTPUT_TOKENS:
            raise LoadError("mix: %r asks for more than %d prompt words or %d output tokens per request" % (part, MAX_PROMPT_WORDS, MAX_OUTPUT_TOKENS))
        mix.append((prompt, output))
        if len(mix) > MAX_MIX_KINDS:
            raise LoadError("mix: give at most %d PROMPT_WORDS:OUTPUT_TOKENS kinds" % MAX_MIX_KINDS)
    if not mix:
        raise LoadError("mix: give at least one PROMPT_WORDS:OUTPUT_TOKENS pair")
    return mix


def check_settings(settings):
    """Validate a settings dict (the CLI's options); returns it with defaults filled."""
    s = dict(DEFAULTS)
    s.update({k: v for k, v in settings.items() if v is not None})
    check_url(s["url"])
    if s["path"] not in PATHS:
        raise LoadError("path: %r is not one of %s" % (s["path"], ", ".join(PATHS)))
    if not isinstance(s["model"], str) or not MODEL_RE.match(s["model"]):
        raise LoadError("model: name the served model (up to 255 letters, digits and . _ : / @ + -, starting with a letter or digit), not %r" % (s["model"],))
    if not isinstance(s["key"], str) or not KEY_RE.match(s["key"]):
        raise LoadError("key: the API key must be up to 4096 printable ASCII characters without spaces or line breaks")
    _bounded_int(s, "concurrency", 1, MAX_CONCURRENCY)
    _bounded_int(s, "count", 0, MAX_COUNT)
    _bounded_number(s, "rate", 0.0, MAX_RATE)
    _bounded_number(s, "duration", 0.0, MAX_DURATION)
    _bounded_number(s, "timeout", 0.0, MAX_TIMEOUT)
    if isinstance(s["seed"], bool) or not isinstance(s["seed"], int) or abs(s["seed"]) > 2**63:
        raise LoadError("seed: must be a whole number within 64 bits, not %r" % (s["seed"],))
    if int(s["count"]) == 0 and float(s["duration"]) == 0 and not s["stop_file"]:
        raise LoadError("count, duration, stop_file: give at least one bound, the load must end")
    s["mix"] = parse_mix(s["mix"]) if isinstance(s["mix"], str) else list(s["mix"])
    s["urls"] = check_urls(s["urls"])
    return s


def _bounded_int(settings, key, low, high):
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LoadError("%s: must be a whole number from %d to %d, not %r" % (key, low, high, value))


def _bounded_number(settings, key, low, high):
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise LoadError("%s: must be a finite number from %g to %g, not %r" % (key, low, high, value))


def check_url(url):
    """(scheme, host, port) of an endpoint URL, http(s)://HOST[:PORT] and nothing else; LoadError naming url otherwise."""
    if not isinstance(url, str) or len(url) > 2048 or any(ord(c) < 0x21 or ord(c) > 0x7E for c in url):
        raise LoadError("url: %r is not http(s)://HOST[:PORT] (no spaces, control or non-ASCII characters)" % (url,))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise LoadError("url: %r is not http(s)://HOST[:PORT]: %s" % (url, exc)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not HOST_RE.match(parts.hostname):
        raise LoadError("url: %r is not http(s)://HOST[:PORT]" % url)
    if parts.username is not None or parts.password is not None:
        raise LoadError("url: %r carries credentials; give the API key in api_key instead" % url)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise LoadError("url: %r must be the endpoint's base, http(s)://HOST[:PORT], without a path or query (the path option chooses the API)" % url)
    if port is not None and not 1 <= port <= 65535:
        raise LoadError("url: port %d is not a TCP port (1-65535)" % port)
    if port is None and parts.netloc.endswith(":"):
        raise LoadError("url: %r has an empty port" % url)
    return parts.scheme, parts.hostname, port


def check_urls(urls):
    """The endpoints to spread the load over (empty: ``url`` alone); each is http(s)://HOST[:PORT] (``check_url``)."""
    if not isinstance(urls, (list, tuple)) or len(urls) > 1024:
        raise LoadError("urls: give a list of at most 1024 http(s)://HOST[:PORT], not %r" % (urls,))
    for url in urls:
        try:
            check_url(url)
        except LoadError as exc:
            raise LoadError("urls: " + str(exc)) from None
    return list(urls)


DEFAULTS = {
    "url": "http://127.0.0.1",
    "path": "/v1/completions",
    "model": "",
    "key": "",
    "mix": "16:8",
    "stream": True,
    "concurrency": 4,
    "rate": 0.0,
    "count": 0,
    "duration": 0.0,
    "stop_file": "",
    "timeout": 120.0,
    "seed": 0,
    "headers": {},
    "urls": [],
}


def request_body(settings, kind, index):
    """The JSON body of request ``index`` for a (prompt_words, output_tokens) kind."""
    prompt_words, output_tokens = kind
    rng = random.Random("%s-%d" % (settings["seed"], index))
    # A per-request prefix keeps prompts from hitting the prefix cache alike.
    prompt = " ".join([str(index)] + [rng.choice(WORDS) for _word in range(prompt_words - 1)])
    body = {"model": settings["model"], "max_tokens": output_tokens, "ignore_eos": True, "temperature": 0}
    if settings["path"] == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if settings["stream"]:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def chunk_text(event, path):
    """The text a streamed event carries ('' for none)."""
    choices = event.get("choices") or []
    if not choices:
        return ""
    if path == "/v1/chat/completions":
        return (choices[0].get("delta") or {}).get("content") or ""
    return choices[0].get("text") or ""


def read_stream(lines, path, clock):
    """Read server-sent events; returns (first_token_at, last_token_at, tokens, done).

    ``lines`` yields raw lines; ``clock`` gives the time each token arrived.
    The token count is the usage the server reports, else the chunks with text.
    """
    first = last = None
    chunks = 0
    usage_tokens = None
    done = False
    for raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        event = json.loads(data)
        if event.get("usage"):
            usage_tokens = event["usage"].get("completion_tokens", usage_tokens)
        if chunk_text(event, path):
            now = clock()
            first = now if first is None else first
            last = now
            chunks += 1
    return first, last, (usage_tokens if usage_tokens is not None else chunks), done


def classify_error(exc):
    """The outcome name for an exception raised while talking to the server."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, http.client.IncompleteRead):
        return "incomplete"
    if isinstance(exc, ConnectionRefusedError):
        return "connect_error"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED):
        return "connect_error"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected, http.client.BadStatusLine)):
        return "reset"
    return "error"


def _abort(conn, state):
    """Cut a request that ran out of time: shutting the socket down wakes a read blocked in another thread."""
    state["cut"] = True
    # http.client drops conn.sock once a response that ends with the connection is read; the socket kept at connect still works.
    sock = state.get("sock") or getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _bounded_lines(resp):
    """The lines of a streamed answer, each at most MAX_LINE_BYTES, MAX_BODY_BYTES in all."""
    total = 0
    while True:
        line = resp.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        total += len(line)
        if len(line) > MAX_LINE_BYTES or total > MAX_BODY_BYTES:
            raise ValueError("the streamed answer exceeds %d bytes per line or %d in all" % (MAX_LINE_BYTES, MAX_BODY_BYTES))
        yield line


def _request_headers(settings):
    headers = {"Content-Type": "application/json"}
    headers.update(settings["headers"])
    if settings["key"]:
        headers["Authorization"] = "Bearer %s" % settings["key"]
    return headers


def _new_record(index, kind):
    """The record of request ``index`` before it is sent: its kind and start, no outcome yet."""
    return {
        "i": index,
        "prompt_words": kind[0],
        "max_tokens": kind[1],
        "start": time.time(),
        "status": None,
        "outcome": None,
        "ttft": None,
        "tpot": None,
        "latency": None,
        "tokens": 0,
        "error": None,
    }


def _start_watchdog(limits, conn, state):
    """A timer that cuts the request off when the shortest of ``limits`` (seconds) has passed; None without limits."""
    if not limits:
        return None
    watchdog = threading.Timer(max(0.0, min(limits)), _abort, (conn, state))
    watchdog.daemon = True
    watchdog.start()
    return watchdog


def _read_answer(resp, settings, record, began):
    """Fill the record's status, tokens, TTFT, TPOT and outcome from the server's answer."""
    record["status"] = resp.status
    if resp.status != 200:
        resp.read(MAX_BODY_BYTES)
        record["outcome"] = "http_%d" % resp.status
    elif settings["stream"]:
        first, last, tokens, done = read_stream(_bounded_lines(resp), settings["path"], time.perf_counter)
        record["tokens"] = tokens
        if first is not None:
            record["ttft"] = first - began
            if tokens > 1:
                record["tpot"] = (last - first) / (tokens - 1)
        record["outcome"] = "ok" if done and tokens > 0 else ("incomplete" if not done else "bad_answer")
    else:
        body = resp.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise ValueError("the answer exceeds %d bytes" % MAX_BODY_BYTES)
        answer = json.loads(body)
        record["tokens"] = (answer.get("usage") or {}).get("completion_tokens", 0)
        record["ttft"] = time.perf_counter() - began
        record["outcome"] = "ok" if answer.get("choices") else "bad_answer"


def one_request(settings, index, kind, connection_factory=None, deadline=None):
    """Send one request; returns its record (never raises for server trouble).

    The request ends by ``timeout`` seconds in all (not only between bytes) and by
    ``deadline`` (a ``time.monotonic()`` value) when one is given: a server that
    trickles bytes is cut off, and the record's outcome is ``timeout``.
    """
    parts = urlsplit(settings["url"])
    factory = connection_factory or (http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection)
    headers = _request_headers(settings)
    body = json.dumps(request_body(settings, kind, index))
    record = _new_record(index, kind)
    began = time.perf_counter()
    limits = [t for t in (float(settings["timeout"]) or None, None if deadline is None else deadline - time.monotonic()) if t is not None]
    conn = factory(parts.hostname, parts.port, timeout=max(0.001, min(limits)) if limits else None)
    connected = False
    state = {"cut": False}
    watchdog = _start_watchdog(limits, conn, state)
    try:
        conn.connect()
        state["sock"] = getattr(conn, "sock", None)
        connected = True
        if state["cut"]:  # the time ran out while connecting
            _abort(conn, state)
        conn.request("POST", settings["path"], body, headers)
        _read_answer(conn.getresponse(), settings, record, began)
    except Exception as exc:  # pylint: disable=broad-except
        # Whatever stopped the connection itself (refused, unreachable, timed out) is a connect error.
        record["outcome"] = classify_error(exc) if connected else "connect_error"
        record["error"] = "%s: %s" % (type(exc).__name__, exc)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        conn.close()
    if state["cut"]:
        record["outcome"] = "timeout"
        record["error"] = "cut off after its time limit (timeout %s s or the load's deadline)" % settings["timeout"]
    record["latency"] = time.perf_counter() - began
    record["end"] = time.time()
    return record


class DeadlineError(LoadError):
    """The load did not end by its deadline; ``records`` holds the requests that ended."""

    def __init__(self, message, records):
        super().__init__(message)
        self.records = records


class _Clients:
    """What the clients of one load share: the next request's number, the requests in flight per endpoint, the records.

    Each client thread runs ``work``; ``lock`` guards the numbering, the counts in flight and the records.
    """

    def __init__(self, s, ends_at, on_record, connection_factory):
        self.s = s
        self.ends_at = ends_at
        self.on_record = on_record
        self.connection_factory = connection_factory
        self.lock = threading.Lock()
        self.records = []
        self.next_index = 0
        self.late = False
        self.t0 = time.time()
        self.rate = float(s["rate"])
        self.count = int(s["count"])
        self.duration = float(s["duration"])
        # Several endpoints: each request goes to the one with the fewest in flight, ties in turn.
        self.urls = s["urls"] or [s["url"]]
        self.busy = [0] * len(self.urls)
        self.turn = 0

    def _pick(self):
        chosen = min(range(len(self.urls)), key=lambda k: (self.busy[k], (k - self.turn) % len(self.urls)))
        self.busy[chosen] += 1
        self.turn = chosen + 1
        return chosen

    def _stopping(self, index):
        if self.count and index >= self.count:
            return True
        if self.ends_at is not None and time.monotonic() >= self.ends_at:
            self.late = True
            return True
        if self.duration and time.time() - self.t0 >= self.duration:
            return True
        return bool(self.s["stop_file"]) and os.path.exists(self.s["stop_file"])

    def _take(self):
        """(number, endpoint) of the next request, or None when the load is to stop."""
        with self.lock:
            index = self.next_index
            if self._stopping(index):
                return None
            self.next_index += 1
            return index, self._pick()

    def _wait_turn(self, index, target):
        """Wait for the request's time at ``rate``; False (its endpoint released) when the load is to stop by then."""
        delay = self.t0 + index / self.rate - time.time()
        if delay > 0:
            time.sleep(delay)
        if self._stopping(index):
            with self.lock:
                self.busy[target] -= 1
            return False
        return True

    def _send(self, index, target):
        one = dict(self.s, url=self.urls[target]) if len(self.urls) > 1 else self.s
        mix = self.s["mix"]
        record = one_request(one, index, mix[index % len(mix)], self.connection_factory, deadline=self.ends_at)
        if self.ends_at is not None and time.monotonic() >= self.ends_at and record["outcome"] == "timeout":
            self.late = True
        with self.lock:
            self.busy[target] -= 1
            if len(self.urls) > 1:
                record["url"] = self.urls[target]
            self.records.append(record)
            if self.on_record:
                self.on_record(record)

    def work(self):
        """One client: take the next request, wait for its time, send it; until the load is to stop."""
        while True:
            taken = self._take()
            if taken is None:
                return
            index, target = taken
            if self.rate and not self._wait_turn(index, target):
                return
            self._send(index, target)


def run(settings, on_record=None, connection_factory=None, deadline=None):
    """Drive the load; returns the list of records, in the order requests were issued.

    ``deadline``: seconds the whole load may take. No request is issued after it,
    every request in flight is cut off at it, and DeadlineError is raised when
    requests had to be cut (or the clients did not end a few seconds later).
    """
    s = check_settings(settings)
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline <= MAX_DURATION):
        raise LoadError("deadline: must be a number of seconds above 0 and at most %d, not %r" % (MAX_DURATION, deadline))
    ends_at = None if deadline is None else time.monotonic() + float(deadline)
    clients = _Clients(s, ends_at, on_record, connection_factory)
    threads = [threading.Thread(target=clients.work, daemon=True) for _client in range(int(s["concurrency"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(None if ends_at is None else max(0.0, ends_at - time.monotonic()) + 5.0)
    with clients.lock:
        done = sorted(clients.records, key=lambda r: r["i"])
    if ends_at is not None and (clients.late or any(t.is_alive() for t in threads)):
        raise DeadlineError(
            "deadline: the load did not end within %g s (%d of %s requests ended); raise deadline, or lower count or the mix's output tokens"
            % (float(deadline), len(done), clients.count or "unbounded"),
            done,
        )
    return done


def percentile(values, q):
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    pos = (len(values) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def summarize(records):
    """Counts per outcome and the usual serving figures over the successful requests."""
    outcomes = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    ok = [r for r in records if r["outcome"] == "ok"]
    span = (max(r["end"] for r in records) - min(r["start"] for r in records)) if records else 0.0
    tokens = sum(r["tokens"] for r in ok)
    return {
        "requests": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "outcomes": outcomes,
        "seconds": span,
        "requests_per_s": (len(ok) / span) if span > 0 else None,
        "output_tokens_per_s": (tokens / span) if span > 0 else None,
        "ttft_p50": percentile([r["ttft"] for r in ok], 50),
        "ttft_p99": percentile([r["ttft"] for r in ok], 99),
        "tpot_p50": percentile([r["tpot"] for r in ok], 50),
        "tpot_p99": percentile([r["tpot"] for r in ok], 99),
        "latency_p50": percentile([r["latency"] for r in ok], 50),
        "latency_p99": percentile([r["latency"] for r in ok], 99),
    }


def in_flight(records, at):
    """The records of requests that had started and not ended at time ``at``."""
    return [r for r in records if r["start"] <= at < r["end"]]


def main(argv=None):
    p = argparse.ArgumentParser(description="Bounded load against an OpenAI-compatible endpoint; prints a JSON summary.")
    p.add_argument("--url", default=DEFAULTS["url"], help="http(s)://HOST[:PORT] of the endpoint")
    p.add_argument("--path", default=DEFAULTS["path"], choices=PATHS)
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--key", default=os.environ.get("GPUFLEET_API_KEY", ""), help="API key (or GPUFLEET_API_KEY)")
    p.add_argument("--mix", default=DEFAULTS["mix"], help="PROMPT_WORDS:OUTPUT_TOKENS[,...], cycled")
    p.add_argument("--no-stream", dest="stream", action="store_false")
    p.add_argument("--concurrency", type=int, default=DEFAULTS["concurrency"])
    p.add_argument("--rate", type=float, default=DEFAULTS["rate"], help="requests per second (0: back to back)")
    p.add_argument("--count", type=int, default=0, help="stop after this many requests")
    p.add_argument("--duration", type=float, default=0.0, help="stop issuing after this many seconds")
    p.add_argument("--stop-file", default="", help="stop issuing once this file exists")
    p.add_argument("--timeout", type=float, default=DEFAULTS["timeout"], help="socket timeout per request, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--records", default="", help="write one JSON record per request to this file as they end")
    args = p.parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k != "records"}
    out = open(args.records, "w") if args.records else None  # pylint: disable=consider-using-with

    def on_record(record):
        if out:
            out.write(json.dumps(record) + "\n")
            out.flush()

    try:
        records = run(settings, on_record)
    except LoadError as exc:
        sys.stderr.write("loadgen: %s\n" % exc)
        return 2
    finally:
        if out:
            out.close()
    sys.stdout.write(json.dumps(summarize(records), sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
