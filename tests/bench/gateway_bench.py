"""What the gateway costs: time to first streamed token and requests per second
through the fleet gateway, each divided by the same figure measured directly
against one vLLM backend. A benchmark, not a test.

It runs against a fleet that is up: the demo fleet (`make demo`, whose host
names are the defaults), or the molecule `site` scenario kept up with
`molecule converge -s site`. The client is plain
Python (http.client) started inside the hosts with `podman exec`: on the GPU
server for the direct figures (vLLM listens on loopback only), on the gateway
host for the gateway figures, so both sides use the same client code and the
same loopback path.

    tests/bench/gateway_bench.py --gateway t-site-gw1 --backend t-site-gpu1 --key KEY

The gateway's rate limit caps what goes through it: run against a gateway
whose gateway_rate_limit is above the rates measured here (the script stops
when it sees a 429 instead of reporting a ratio that measures the limit).
Rounds alternate direct and gateway measurements, so that drift on a busy
machine affects both sides alike.

What the ratio means depends on what the gateway fronts. To measure what the
two nginx hops cost, point the gateway at the one server measured directly
(gateway_backends: [{address: t-site-gpu1}]) and give all of its instances with
--backend-ports 8001,8002: both sides then reach the same engines. Against the
whole fleet the ratio also holds the other servers' speed (on the 2-core test
machine every "GPU" is a shared CPU core, so engines slow each other down).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

# Runs inside the hosts (python3 of the image, standard library only).
CLIENT = r'''
import http.client, json, sys, threading, time

cfg = json.loads(sys.argv[1])
headers = {"Content-Type": "application/json"}
if cfg["key"]:
    headers["Authorization"] = "Bearer " + cfg["key"]


ports = cfg["ports"]


def ttft(i):
    """Seconds from sending a streamed completion to its first token event."""
    body = json.dumps({"model": cfg["model"], "prompt": "The gateway bench says", "max_tokens": cfg["max_tokens"],
                       "stream": True, "ignore_eos": True})
    conn = http.client.HTTPConnection(cfg["host"], ports[i % len(ports)], timeout=300)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit("HTTP %d: %s" % (resp.status, resp.read()[:200]))
    first = None
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        if first is None and b'"text"' in buf:
            first = time.perf_counter() - start
    conn.close()
    return first


def load(n, concurrency):
    """Requests per second of n short completions over `concurrency` kept-alive connections."""
    body = json.dumps({"model": cfg["model"], "prompt": "hello", "max_tokens": cfg["load_tokens"], "ignore_eos": True})
    todo = list(range(n))
    lock = threading.Lock()
    statuses = []

    def worker():
        # One kept-alive connection per port; requests take the ports in turn.
        conns = [http.client.HTTPConnection(cfg["host"], port, timeout=300) for port in ports]
        while True:
            with lock:
                if not todo:
                    break
                i = todo.pop()
            conn = conns[i % len(conns)]
            conn.request("POST", "/v1/completions", body, headers)
            resp = conn.getresponse()
            resp.read()
            with lock:
                statuses.append(resp.status)
        for conn in conns:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"rps": n / wall, "statuses": {str(s): statuses.count(s) for s in set(statuses)}}


for i in range(len(ports)):
    ttft(i)  # warm the connection path and the engines
out = {"ttft": [ttft(i) for i in range(cfg["ttft_requests"])]}
out.update(load(cfg["load_requests"], cfg["concurrency"]))
print(json.dumps(out))
'''


def backend_key(container, args):
    """The instances' own key (the vllm role's root-only file on the GPU server): vLLM answers /v1 to its holder alone."""
    run = subprocess.run([args.podman, "exec", container, "cat", args.backend_key_file], capture_output=True, text=True, timeout=60, check=False)
    key = run.stdout.strip().partition("VLLM_API_KEY=")[2]
    if run.returncode != 0 or not key:
        sys.exit("cannot read the instances' key %s on %s: %s" % (args.backend_key_file, container, run.stderr[-300:]))
    return key


def measure(container, host, ports, args):
    cfg = {
        "host": host,
        "ports": ports,
        "key": args.key if container == args.gateway else backend_key(container, args),
        "model": args.model,
        "max_tokens": args.max_tokens,
        "ttft_requests": args.ttft_requests,
        "load_requests": args.load_requests,
        "load_tokens": args.load_tokens,
        "concurrency": args.concurrency,
    }
    run = subprocess.run([args.podman, "exec", container, "python3", "-c", CLIENT, json.dumps(cfg)], capture_output=True, text=True, timeout=3600, check=False)
    if run.returncode != 0:
        sys.exit("client on %s failed: %s%s" % (container, run.stdout[-500:], run.stderr[-1500:]))
    result = json.loads(run.stdout)
    bad = {s: c for s, c in result["statuses"].items() if s != "200"}
    if bad:
        sys.exit("%s:%s answered %s: raise the gateway's rate limit (gateway_rate_limit) or lower --concurrency" % (host, ports, bad))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--gateway", default="gw1", help="gateway host (container name)")
    p.add_argument("--gateway-port", type=int, default=80, help="plain HTTP port of the fleet tier")
    p.add_argument("--backend", default="gpu1", help="GPU server (container name) for the direct figures")
    p.add_argument("--backend-ports", default="8001", help="ports of vLLM instances on that server, comma-separated; the direct client takes them in turn")
    p.add_argument("--key", default="", help="API key of the gateway")
    p.add_argument("--backend-key-file", default="/etc/vllm/instance-api-key", help="the instances' key on the GPU server, for the direct figures")
    p.add_argument("--model", default="tiny", help="the model both sides ask for (at a gateway of several models, the one the backend serves)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ttft-requests", type=int, default=10, help="streamed requests per round and side")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per streamed request")
    p.add_argument("--load-requests", type=int, default=40, help="requests per round and side for the rate")
    p.add_argument("--load-tokens", type=int, default=8, help="tokens per request for the rate")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--podman", default="podman")
    args = p.parse_args(argv)

    backend_ports = [int(x) for x in args.backend_ports.split(",")]
    sides = {"direct": (args.backend, "127.0.0.1", backend_ports), "gateway": (args.gateway, "127.0.0.1", [args.gateway_port])}
    ttft = {side: [] for side in sides}
    rps = {side: [] for side in sides}
    for r in range(args.rounds):
        for side, (container, host, ports) in sides.items():
            res = measure(container, host, ports, args)
            ttft[side] += res["ttft"]
            rps[side].append(res["rps"])
            print("round %d %-7s  median TTFT %6.1f ms  %6.1f req/s" % (r + 1, side, 1000 * statistics.median(res["ttft"]), res["rps"]))

    t_direct, t_gw = statistics.median(ttft["direct"]), statistics.median(ttft["gateway"])
    r_direct, r_gw = statistics.median(rps["direct"]), statistics.median(rps["gateway"])
    print()
    print("direct:  %s port(s) %s (vLLM itself, from its own host, ports taken in turn)" % (args.backend, args.backend_ports))
    print("gateway: %s:%d (nginx: fleet tier -> server tier -> the instances behind it)" % (args.gateway, args.gateway_port))
    print("median time to first token: direct %.1f ms, gateway %.1f ms over %d requests each" % (1000 * t_direct, 1000 * t_gw, len(ttft["direct"])))
    for side in sides:
        q = statistics.quantiles(ttft[side], n=10)
        print("  %-7s TTFT p10 %.1f ms, p90 %.1f ms" % (side, 1000 * q[0], 1000 * q[-1]))
    print("requests per second (concurrency %d, %d tokens): direct %.1f, gateway %.1f" % (args.concurrency, args.load_tokens, r_direct, r_gw))
    print("TTFT gateway/direct = %.3f" % (t_gw / t_direct))
    print("req/s gateway/direct = %.3f" % (r_gw / r_direct))
    return 0


if __name__ == "__main__":
    sys.exit(main())
