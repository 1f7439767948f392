"""What balancing does to vLLM's prefix cache: a shared-prefix workload through the
fleet gateway under each balance mode, side by side in one run. A benchmark, not a test.

The workload is what chat fleets carry: a few long system prompts shared by many
conversations, each conversation several turns long (every turn sends the whole
history again). Per mode it reports vLLM's own prefix-cache hit rate (the
instances' `vllm:prefix_cache_hits_total` over `vllm:prefix_cache_queries_total`,
read from each instance's /metrics before and after), the median and p99 time to
first token, and the throughput; then each mode's figures divided by the first
mode's.

Modes are balance settings: least_conn, the default; hash_header, each
conversation pinned by its X-Session-ID, which the client sends in every mode;
cache_aware, vLLM's own router (a model's balance in gpufleet_models, given with
--models). Before each mode the script applies it (`site.yml --tags gateway`, a
reload; with --models `--tags cache,plan,vllm,gateway`, which restarts the instances of
a model entering or leaving cache_aware), and every mode has system prompts of
its own, so no mode finds what another cached.

It runs against a fleet that is up, from the repository root, with the
environment ansible-playbook needs for that fleet (the demo's is ansible.cfg's):

    tests/bench/prefix_bench.py --inventory inventory/demo --gateway gw1 --servers gpu1,gpu2 --key demo-key-0123456789

The client is plain Python started inside the gateway host with `podman exec`.
The gateway's rate limit caps what goes through it: the script stops at a 429
(raise gateway_rate_limit, or pass it with --extra-vars).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from prefix_bench_direct import line as figures_line  # the same one-line figures, both scripts (run from tests/bench)

ROOT = Path(__file__).resolve().parents[2]

# Runs inside the gateway host (python3 of the image, standard library only).
CLIENT = r"""
import http.client, json, random, sys, threading, time

cfg = json.loads(sys.argv[1])
rng = random.Random(cfg["seed"])
words = cfg["words"]
systems = [" ".join([cfg["salt"], "system", str(i)] + [rng.choice(words) for _ in range(cfg["system_words"])])
           for i in range(cfg["system_prompts"])]
results, errors = [], []
lock = threading.Lock()
todo = list(range(cfg["conversations"]))


def ask(conn, messages, session):
    body = json.dumps({"model": cfg["model"], "messages": messages, "max_tokens": cfg["max_tokens"], "stream": True,
                       "ignore_eos": True, "temperature": 0})
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + cfg["key"], "X-Session-ID": session}
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError("HTTP %d: %s" % (resp.status, resp.read()[:200]))
    first, text, buf = None, [], b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            data = event.decode().partition("data: ")[2]
            if not data or data == "[DONE]":
                continue
            choices = json.loads(data).get("choices") or []
            # vLLM sends its first event with the first token (a tiny model's token may decode to nothing).
            if choices and first is None:
                first = time.perf_counter() - start
            text.append((choices[0].get("delta") or {}).get("content") or "" if choices else "")
    return first, time.perf_counter() - start, "".join(text)


def worker():
    conn = http.client.HTTPConnection("127.0.0.1", cfg["port"], timeout=300)
    while True:
        with lock:
            if not todo:
                break
            c = todo.pop(0)
        local = random.Random(cfg["seed"] * 1000 + c)
        messages = [{"role": "system", "content": systems[c % len(systems)]}]
        for turn in range(cfg["turns"]):
            messages.append({"role": "user", "content": " ".join(local.choice(words) for _ in range(cfg["user_words"]))})
            try:
                ttft, total, text = ask(conn, messages, "conv-%s-%d" % (cfg["salt"], c))
            except Exception as exc:
                with lock:
                    errors.append(str(exc)[:300])
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", cfg["port"], timeout=300)
                break
            messages.append({"role": "assistant", "content": text})
            with lock:
                results.append({"ttft": ttft, "total": total, "turn": turn})
    conn.close()


start = time.perf_counter()
threads = [threading.Thread(target=worker) for _ in range(cfg["concurrency"])]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"wall": time.perf_counter() - start, "results": results, "errors": errors}))
"""

WORDS = (
    "the a an gpu card server fleet model token cache tensor data parallel vllm nginx upstream route request answer "
    "stream fast slow memory bandwidth link pcie nvlink plan host port user assistant system hello world one two three"
).split()


def podman(args, container, *command, stdin=None, timeout=3600):
    run = subprocess.run([args.podman, "exec", "-i", container, *command], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if run.returncode != 0:
        sys.exit("%s on %s failed: %s%s" % (" ".join(command)[:80], container, run.stdout[-500:], run.stderr[-1500:]))
    return run.stdout


def instance_ports(args, server):
    plan = json.loads(podman(args, server, "cat", "/etc/vllm/plan.json"))
    return [i["port"] for i in plan["instances"]]


def prefix_counters(args, instances):
    """(hits, queries) in tokens, summed over every instance's /metrics."""
    hits = queries = 0.0
    for server, port in instances:
        text = podman(args, server, "curl", "-sS", "--max-time", "30", "http://127.0.0.1:%d/metrics" % port)
        for line in text.splitlines():
            name, value = line.rpartition(" ")[0::2]
            if name.startswith("vllm:prefix_cache_hits_total{"):
                hits += float(value)
            elif name.startswith("vllm:prefix_cache_queries_total{"):
                queries += float(value)
    return hits, queries


def switch(args, mode):
    """The fleet to balance `mode`. Without --models: both tiers' gateway_balance with the gateway role
    (site.yml --tags gateway: a reload, no restart). With --models (gpufleet_models as JSON): every model's
    own balance, cache_aware included (vLLM's router), with site.yml --tags cache,plan,vllm,gateway (the cache play
    publishes the pins its servers install against; a model
    that enters or leaves cache_aware restarts its instances: its launch gains or loses --enable-scale-out)."""
    if args.models:
        models = [dict(m, balance=mode) for m in json.loads(args.models)]
        chosen = ["--tags", "cache,plan,vllm,gateway", "-e", json.dumps({"gpufleet_models": models})]
    elif mode == "cache_aware":
        sys.exit("cache_aware is a model's balance: pass the fleet's gpufleet_models with --models")
    else:
        chosen = ["--tags", "gateway", "-e", "gateway_balance=" + mode]
    argv = ["ansible-playbook", "-i", args.inventory, str(ROOT / "site.yml"), "-e", "gpufleet_serial=100%", *chosen]
    for extra in args.extra_vars:
        argv += ["-e", extra]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False, cwd=str(ROOT))
    if run.returncode != 0:
        sys.exit("switching the gateways to %s failed:\n%s%s" % (mode, run.stdout[-3000:], run.stderr[-1500:]))


def phase(args, mode, index, instances):
    before = prefix_counters(args, instances)
    cfg = {
        "port": args.gateway_port,
        "key": args.key,
        "model": args.model,
        "seed": args.seed,
        "salt": "phase%d%s" % (index, mode.replace("_", "")),
        "words": WORDS,
        "system_prompts": args.system_prompts,
        "system_words": args.system_words,
        "user_words": args.user_words,
        "conversations": args.conversations,
        "turns": args.turns,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
    }
    out = json.loads(podman(args, args.gateway, "python3", "-", json.dumps(cfg), stdin=CLIENT).strip().splitlines()[-1])
    if out["errors"]:
        sys.exit("%s: %d requests failed, first: %s" % (mode, len(out["errors"]), out["errors"][0]))
    after = prefix_counters(args, instances)
    hits, queries = after[0] - before[0], after[1] - before[1]
    ttfts = sorted(r["ttft"] for r in out["results"])
    return {
        "mode": mode,
        "requests": len(out["results"]),
        "errors": 0,  # a failed request ends the run above
        "hit_rate": hits / queries if queries else 0.0,
        "cached_tokens": hits,
        "prompt_tokens": queries,
        "ttft_median": statistics.median(ttfts),
        "ttft_p99": ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))],
        "requests_per_s": len(out["results"]) / out["wall"],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--inventory", default="inventory/demo", help="the fleet's inventory, for switching the balance mode")
    p.add_argument("--extra-vars", action="append", default=[], help="more -e for the switching runs (repeatable)")
    p.add_argument("--gateway", default="gw1", help="fleet gateway host (container name): the client runs there")
    p.add_argument("--gateway-port", type=int, default=80)
    p.add_argument("--servers", default="gpu1,gpu2", help="the GPU servers (container names) behind it, comma-separated")
    p.add_argument("--key", default="", help="API key of the gateway")
    p.add_argument("--model", default="tiny")
    p.add_argument("--modes", default="least_conn,hash_header", help="balance modes, comma-separated; the first is the baseline")
    p.add_argument("--models", default="", help="the fleet's gpufleet_models as JSON: modes become each model's balance (cache_aware needs it)")
    p.add_argument("--system-prompts", type=int, default=3)
    p.add_argument("--system-words", type=int, default=200, help="words per system prompt (the tiny model's tokenizer: about a token each)")
    p.add_argument("--conversations", type=int, default=24)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--user-words", type=int, default=12)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--podman", default="podman")
    args = p.parse_args(argv)

    instances = [(server, port) for server in args.servers.split(",") for port in instance_ports(args, server)]
    figures = []
    for index, mode in enumerate(args.modes.split(",")):
        switch(args, mode)
        found = phase(args, mode, index, instances)
        figures.append(found)
        print(figures_line(found))
    base = figures[0]
    print()
    print("%d instance(s): %s" % (len(instances), ", ".join("%s:%d" % i for i in instances)))
    for found in figures[1:]:
        print(
            "%s / %s: hit rate %.2fx, TTFT median %.2fx, TTFT p99 %.2fx, throughput %.2fx"
            % (
                found["mode"],
                base["mode"],
                found["hit_rate"] / base["hit_rate"] if base["hit_rate"] else float("inf"),
                found["ttft_median"] / base["ttft_median"],
                found["ttft_p99"] / base["ttft_p99"],
                found["requests_per_s"] / base["requests_per_s"],
            )
        )
    if len(figures) > 1:
        switch(args, figures[0]["mode"])
        print("gateways back to %s" % figures[0]["mode"])
    if args.json:
        Path(args.json).write_text(json.dumps({"instances": ["%s:%d" % i for i in instances], "modes": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
