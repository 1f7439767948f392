"""prefix_bench.py's shared-prefix workload against balancers given by URL: no podman, no ansible.
A benchmark, not a test.

Same workload as tests/bench/prefix_bench.py (a few long system prompts shared by many
conversations, each several turns long, every turn sending the whole history again),
sent in-process to each mode's base URL in turn. Per mode it reports vLLM's own
prefix-cache hit rate (the instances' prefix-cache hit and query counters, read from
each instance's /metrics before and after, per instance too), the median and p99 time
to first token (first streamed event), the throughput; then each mode's figures over
the first mode's. Every mode has system prompts of its own (a salt), and with
--reset-url each instance's prefix cache is emptied before each mode
(POST /reset_prefix_cache, which vLLM serves with VLLM_SERVER_DEV_MODE=1).

--overhead sends N requests one at a time (concurrency 1), each a fresh prompt of the
workload's shape, in turn to each of the given URLs (interleaved, so drift hits every
path alike), and reports TTFT median/p99 per path and over the first path.

    prefix_bench_direct.py --mode least_conn=http://127.0.0.1:8080 --mode cache_aware=http://127.0.0.1:8200 \\
        --metrics http://127.0.0.1:8001/metrics --metrics http://127.0.0.1:8002/metrics --json out.json
    prefix_bench_direct.py --overhead direct=http://127.0.0.1:8001 --overhead router=http://127.0.0.1:8200 --requests 50
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

# The words of tests/bench/prefix_bench.py's workload (a tiny tokenizer makes about one token of each).
WORDS = (
    "the a an gpu card server fleet model token cache tensor data parallel vllm nginx upstream route request answer "
    "stream fast slow memory bandwidth link pcie nvlink plan host port user assistant system hello world one two three"
).split()
COUNTERS = {"hits": "vllm:prefix_cache_hits", "queries": "vllm:prefix_cache_queries"}


def connect(base, timeout=600):
    parts = urlsplit(base)
    return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout), parts.path.rstrip("/")


def ask(conn, prefix, cfg, messages, session):
    """One streamed chat completion: (seconds to the first event with a choice, total seconds, text)."""
    body = json.dumps({"model": cfg["model"], "messages": messages, "max_tokens": cfg["max_tokens"], "stream": True, "ignore_eos": True, "temperature": 0})
    headers = {"Content-Type": "application/json", "X-Session-ID": session}
    start = time.perf_counter()
    conn.request("POST", prefix + "/v1/chat/completions", body, headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError("HTTP %d: %s" % (resp.status, resp.read()[:300]))
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
            if choices and first is None:
                first = time.perf_counter() - start
            text.append((choices[0].get("delta") or {}).get("content") or "" if choices else "")
    return first, time.perf_counter() - start, "".join(text)


def system_prompts(cfg):
    rng = random.Random(cfg["seed"])
    return [" ".join([cfg["salt"], "system", str(i)] + [rng.choice(WORDS) for _unused in range(cfg["system_words"])]) for i in range(cfg["system_prompts"])]


def run_workload(base, cfg):
    """prefix_bench.py's client, in-process: conversations taken in order by `concurrency` threads."""
    systems = system_prompts(cfg)
    results, errors = [], []
    lock = threading.Lock()
    todo = list(range(cfg["conversations"]))

    def worker():
        conn, prefix = connect(base)
        while True:
            with lock:
                if not todo:
                    break
                conv = todo.pop(0)
            local = random.Random(cfg["seed"] * 1000 + conv)
            messages = [{"role": "system", "content": systems[conv % len(systems)]}]
            for turn in range(cfg["turns"]):
                messages.append({"role": "user", "content": " ".join(local.choice(WORDS) for _unused in range(cfg["user_words"]))})
                try:
                    ttft, total, text = ask(conn, prefix, cfg, messages, "conv-%s-%d" % (cfg["salt"], conv))
                except Exception as exc:
                    with lock:
                        errors.append(str(exc)[:300])
                    conn.close()
                    conn, prefix = connect(base)
                    break
                messages.append({"role": "assistant", "content": text})
                with lock:
                    results.append({"ttft": ttft, "total": total, "turn": turn, "conversation": conv})
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _unused in range(cfg["concurrency"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall": time.perf_counter() - start, "results": results, "errors": errors}


def counters(url):
    """{hits, queries} in tokens from one instance's /metrics (the counter's samples, `_total` or not)."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode()
    found = {"hits": 0.0, "queries": 0.0}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for key, base in COUNTERS.items():
            if name in (base, base + "_total"):
                found[key] += float(line.rpartition(" ")[2])
    return found


def reset_caches(urls):
    done = []
    for url in urls:
        req = urllib.request.Request(url, data=b"", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                done.append(resp.status)
        except Exception as exc:
            done.append(str(exc)[:120])
    return done


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def phase(name, base, index, args):
    reset = reset_caches(args.reset_url) if args.reset_url else []
    time.sleep(1)
    before = [counters(url) for url in args.metrics]
    cfg = {
        "model": args.model,
        "seed": args.seed,
        "salt": "phase%d%s" % (index, name.replace("_", "")),
        "system_prompts": args.system_prompts,
        "system_words": args.system_words,
        "user_words": args.user_words,
        "conversations": args.conversations,
        "turns": args.turns,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
    }
    out = run_workload(base, cfg)
    time.sleep(2)
    after = [counters(url) for url in args.metrics]
    per_instance = [{"url": url, "hits": a["hits"] - b["hits"], "queries": a["queries"] - b["queries"]} for url, b, a in zip(args.metrics, before, after)]
    hits = sum(i["hits"] for i in per_instance)
    queries = sum(i["queries"] for i in per_instance)
    ttfts = [r["ttft"] for r in out["results"] if r["ttft"] is not None]
    return {
        "mode": name,
        "url": base,
        "requests": len(out["results"]),
        "errors": len(out["errors"]),
        "first_errors": out["errors"][:5],
        "hit_rate": hits / queries if queries else 0.0,
        "cached_tokens": hits,
        "prompt_tokens": queries,
        "per_instance": per_instance,
        "reset": reset,
        "ttft_median": statistics.median(ttfts),
        "ttft_p99": pct(ttfts, 0.99),
        "ttft_mean": statistics.fmean(ttfts),
        "ttft_by_turn_median": {str(t): statistics.median([r["ttft"] for r in out["results"] if r["turn"] == t]) for t in range(args.turns)},
        "wall_s": out["wall"],
        "requests_per_s": len(out["results"]) / out["wall"],
    }


def overhead(paths, args):
    """TTFT at concurrency 1 per path, interleaved, each request a fresh prompt (no prefix shared)."""
    conns = {name: connect(base) for name, base in paths}
    cfg = {"model": args.model, "max_tokens": args.max_tokens}
    rng = random.Random(args.seed + 99)
    ttfts = {name: [] for name, _unused in paths}
    errors = []
    for i in range(args.warmup + args.requests):
        for name, _unused in paths:
            system = " ".join(["overhead", name, str(i)] + [rng.choice(WORDS) for _unused in range(args.system_words)])
            user = " ".join(rng.choice(WORDS) for _unused in range(args.user_words))
            conn, prefix = conns[name]
            try:
                ttft = ask(conn, prefix, cfg, [{"role": "system", "content": system}, {"role": "user", "content": user}], "ovh-%s-%d" % (name, i))[0]
            except Exception as exc:
                errors.append("%s: %s" % (name, str(exc)[:200]))
                conns[name] = connect(dict(paths)[name])
                continue
            if i >= args.warmup:
                ttfts[name].append(ttft)
    for conn, _unused in conns.values():
        conn.close()
    first = paths[0][0]
    figures = {}
    for name, values in ttfts.items():
        if values:
            figures[name] = {"requests": len(values), "ttft_median": statistics.median(values), "ttft_p99": pct(values, 0.99)}
            figures[name]["ttft_mean"] = statistics.fmean(values)
    for found in figures.values():
        found["median_over_%s" % first] = found["ttft_median"] / figures[first]["ttft_median"]
        found["mean_over_%s" % first] = found["ttft_mean"] / figures[first]["ttft_mean"]
        found["added_median_ms"] = 1000 * (found["ttft_median"] - figures[first]["ttft_median"])
    return {"paths": dict(paths), "figures": figures, "errors": errors, "prompt_words": args.system_words + args.user_words}


def pairs(values):
    out = []
    for value in values:
        name, sep, url = value.partition("=")
        if not sep:
            sys.exit("expected NAME=URL, not %s" % value)
        out.append((name, url))
    return out


def report(figures):
    for found in figures:
        print(
            "%-12s %4d requests %d errors  prefix-cache hit rate %5.1f%% (%d of %d prompt tokens)  TTFT median %7.1f ms  p99 %7.1f ms  %6.2f req/s"
            % (
                found["mode"],
                found["requests"],
                found["errors"],
                100 * found["hit_rate"],
                found["cached_tokens"],
                found["prompt_tokens"],
                1000 * found["ttft_median"],
                1000 * found["ttft_p99"],
                found["requests_per_s"],
            )
        )
    base = figures[0]
    ratios = {}
    for found in figures[1:]:
        ratios[found["mode"]] = {
            "hit_rate": found["hit_rate"] / base["hit_rate"] if base["hit_rate"] else None,
            "ttft_median": found["ttft_median"] / base["ttft_median"],
            "ttft_p99": found["ttft_p99"] / base["ttft_p99"],
            "requests_per_s": found["requests_per_s"] / base["requests_per_s"],
        }
        print("%s / %s: %s" % (found["mode"], base["mode"], ", ".join("%s %.2fx" % (k, v) for k, v in ratios[found["mode"]].items() if v is not None)))
    return ratios


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--mode", action="append", default=[], help="NAME=BASE_URL, repeatable, in order; the first is the baseline")
    p.add_argument("--metrics", action="append", default=[], help="an instance's /metrics URL, repeatable")
    p.add_argument("--reset-url", action="append", default=[], help="an instance's /reset_prefix_cache URL, repeatable")
    p.add_argument("--overhead", action="append", default=[], help="NAME=BASE_URL for the concurrency-1 TTFT comparison; the first is the reference")
    p.add_argument("--requests", type=int, default=50, help="requests per path for --overhead")
    p.add_argument("--warmup", type=int, default=3, help="requests per path sent first and not counted, for --overhead")
    p.add_argument("--model", default="model")
    p.add_argument("--system-prompts", type=int, default=3)
    p.add_argument("--system-words", type=int, default=200)
    p.add_argument("--conversations", type=int, default=24)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--user-words", type=int, default=12)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    out = {"workload": {k: v for k, v in vars(args).items() if k not in ("json",)}}
    if args.mode:
        figures = [phase(name, base, index, args) for index, (name, base) in enumerate(pairs(args.mode))]
        out["modes"] = figures
        out["ratios_over_%s" % figures[0]["mode"]] = report(figures)
    if args.overhead:
        found = overhead(pairs(args.overhead), args)
        out["overhead"] = found
        for name, fig in found["figures"].items():
            ms = [1000 * fig[k] for k in ("ttft_median", "ttft_p99", "ttft_mean")]
            print("overhead %-8s TTFT median %7.2f ms  p99 %7.2f ms  mean %7.2f ms" % (name, *ms))
            print("    %s" % json.dumps(fig))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
