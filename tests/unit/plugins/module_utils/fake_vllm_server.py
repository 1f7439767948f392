"""A stand-in for vLLM's OpenAI server, started by box_measure as ``PYTHON -m vllm.entrypoints.openai.api_server ...``.

The test's "interpreter" is a shell script that runs this file with the same
arguments. It checks the entry point, logs vLLM-like KV-cache lines, starts a
child (as vLLM starts its engine core) and serves /health, /metrics and
completions (streamed or not) on --port. What it was started with is written to
FAKE_VLLM_RECORD_DIR/<port>.json. FAKE_VLLM_MODE changes its behaviour:

* ``ok`` (default);
* ``exit_on:PORT``: the instance on PORT logs vLLM's out-of-memory refusal and exits 1;
* ``never_ready``: never listens;
* ``stubborn_child``: the child ignores SIGTERM (only SIGKILL ends it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KV_TOKENS = 123456


def option(argv, name, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    model = ""

    def log_message(self, *args):
        pass

    def reply(self, status, payload, kind="application/json"):
        data = payload.encode() if isinstance(payload, str) else payload
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, b"")
        elif self.path == "/metrics":
            self.reply(200, 'vllm:cache_config_info{block_size="16",num_gpu_blocks="7716"} 1.0\n', "text/plain")
        else:
            self.reply(404, "{}")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("model") != Handler.model:
            self.reply(404, json.dumps({"error": "model %r not served" % body.get("model")}))
            return
        tokens = int(body.get("max_tokens", 16))
        if not body.get("stream"):
            self.reply(200, json.dumps({"choices": [{"text": "x" * tokens}], "usage": {"completion_tokens": tokens}}))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for n in range(tokens):
            time.sleep(0.002)
            self.wfile.write(b"data: " + json.dumps({"choices": [{"text": "t%d" % n}]}).encode() + b"\n\n")
            self.wfile.flush()
        usage = {"choices": [], "usage": {"completion_tokens": tokens}}
        self.wfile.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        self.close_connection = True


def main(argv):
    if argv[:2] != ["-m", "vllm.entrypoints.openai.api_server"]:
        sys.stderr.write("fake vLLM: started without vLLM's entry point: %r\n" % argv[:2])
        return 3
    args = argv[2:]
    port = int(option(args, "--port"))
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    child_code = "import signal, time\n%stime.sleep(600)\n" % ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if mode == "stubborn_child" else "")
    child = subprocess.Popen([sys.executable, "-c", child_code])  # the engine core stand-in, in this process group
    record_dir = os.environ.get("FAKE_VLLM_RECORD_DIR")
    if record_dir:
        # Written whole, then renamed: a test polling the folder never reads half a record.
        final = os.path.join(record_dir, "%d.json" % port)
        with open(final + ".part", "w", encoding="utf-8") as out:
            json.dump({"argv": argv, "env": dict(os.environ), "pid": os.getpid(), "child": child.pid, "cwd": os.getcwd()}, out)
        os.replace(final + ".part", final)
    print("INFO 12-01 03:00:00 [api_server.py:1] vLLM API server version 0.0.fake", flush=True)
    if mode == "exit_on:%d" % port:
        print(
            "ValueError: To serve at least one request with the models's max seq len (8192), (1.0 GiB KV cache is needed, "
            "which is larger than the available KV cache memory (0.5 GiB)",
            flush=True,
        )
        child.kill()
        return 1
    if mode == "never_ready":
        time.sleep(600)
        return 0
    time.sleep(0.3)
    print("(EngineCore_DP0 pid=%d) INFO 12-01 03:00:01 [kv_cache_utils.py:1087] GPU KV cache size: %s tokens" % (child.pid, format(KV_TOKENS, ",")), flush=True)
    max_len = int(option(args, "--max-model-len", "8192"))
    print(
        "(EngineCore_DP0 pid=%d) INFO 12-01 03:00:01 [kv_cache_utils.py:1091] Maximum concurrency for %s tokens per request: %.2fx"
        % (child.pid, format(max_len, ","), KV_TOKENS / max_len),
        flush=True,
    )
    Handler.model = option(args, "--served-model-name")
    server = ThreadingHTTPServer((option(args, "--host", "127.0.0.1"), port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
