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

Arrivals: --arrival closed (the default) runs `concurrency` clients, each taking the next
conversation as soon as its last one ended (closed loop). --arrival poisson --rate R starts
conversations at Poisson arrivals, R a second, whatever is in flight (open loop), each on a
connection of its own. --think T waits an exponential think time of mean T seconds between a
conversation's turns (both modes). The n-th round of every mode (a mode given again is a new
round) gets the same arrival times and think times. With --metrics, vLLM's running and waiting
request gauges are sampled during each phase (--sample-interval), to tell a busy fleet from a
saturated one. After the phases: per round and pooled per mode (all its rounds together), and
each mode over the first mode, round by round and pooled.

--overhead sends N requests one at a time (concurrency 1), each a fresh prompt of the
workload's shape, in turn to each of the given URLs (interleaved, so drift hits every
path alike), and reports TTFT median/p99 per path and over the first path.

    prefix_bench_direct.py --mode least_conn=http://127.0.0.1:8080 --mode cache_aware=http://127.0.0.1:8200 \\
        --metrics http://127.0.0.1:8001/metrics --metrics http://127.0.0.1:8002/metrics --json out.json
    prefix_bench_direct.py --mode least_conn=URL --mode cache_aware=URL --mode least_conn=URL --mode cache_aware=URL \\
        --arrival poisson --rate 12 --think 1 --metrics ... --reset-url ...
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
    if cfg.get("api_key"):
        headers["Authorization"] = "Bearer " + cfg["api_key"]
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


def conversation_messages(cfg, systems, conv):
    """The first message and a source of the user turns of conversation `conv` (the same in every mode)."""
    return [{"role": "system", "content": systems[conv % len(systems)]}], random.Random(cfg["seed"] * 1000 + conv)


def schedule(cfg):
    """Start offsets (open loop) and think times of every conversation, from the round's own seed."""
    rng = random.Random(cfg["seed"] * 7919 + cfg["round"])
    starts, clock = [], 0.0
    for _unused in range(cfg["conversations"]):
        starts.append(clock)
        clock += rng.expovariate(cfg["rate"]) if cfg["arrival"] == "poisson" else 0.0
    thinks = [[rng.expovariate(1.0 / cfg["think"]) if cfg["think"] > 0 else 0.0 for _unused in range(cfg["turns"])] for _unused2 in range(cfg["conversations"])]
    return starts, thinks


def converse(run, conn, prefix, conv):
    """The turns of conversation `conv` on `conn`; the connection to go on with (a new one after an error)."""
    cfg = run["cfg"]
    messages, local = conversation_messages(cfg, run["systems"], conv)
    for turn in range(cfg["turns"]):
        if turn and run["thinks"][conv][turn]:
            time.sleep(run["thinks"][conv][turn])
        messages.append({"role": "user", "content": " ".join(local.choice(WORDS) for _unused in range(cfg["user_words"]))})
        sent = time.perf_counter() - run["start"]
        try:
            ttft, total, text = ask(conn, prefix, cfg, messages, "conv-%s-%d" % (cfg["salt"], conv))
        except Exception as exc:
            with run["lock"]:
                run["errors"].append(str(exc)[:300])
            conn.close()
            return connect(run["base"])[0]
        messages.append({"role": "assistant", "content": text})
        with run["lock"]:
            run["results"].append({"ttft": ttft, "total": total, "turn": turn, "conversation": conv, "sent": sent})
    return conn


def run_workload(base, cfg):
    """prefix_bench.py's client, in-process. Closed loop: conversations taken in order by `concurrency`
    threads. Poisson: every conversation a thread of its own that starts at its arrival time."""
    starts, thinks = schedule(cfg)
    run = {"base": base, "cfg": cfg, "systems": system_prompts(cfg), "thinks": thinks, "lock": threading.Lock(), "results": [], "errors": []}
    todo = list(range(cfg["conversations"]))

    def closed_worker():
        conn, prefix = connect(base)
        while True:
            with run["lock"]:
                if not todo:
                    break
                conv = todo.pop(0)
            conn = converse(run, conn, prefix, conv)
        conn.close()

    def open_conversation(conv):
        delay = starts[conv] - (time.perf_counter() - run["start"])
        if delay > 0:
            time.sleep(delay)
        conn, prefix = connect(base)
        converse(run, conn, prefix, conv).close()

    if cfg["arrival"] == "poisson":
        threads = [threading.Thread(target=open_conversation, args=(conv,)) for conv in range(cfg["conversations"])]
    else:
        threads = [threading.Thread(target=closed_worker) for _unused in range(cfg["concurrency"])]
    run["start"] = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall": time.perf_counter() - run["start"], "results": run["results"], "errors": run["errors"], "last_arrival": starts[-1]}


GAUGES = {"running": "vllm:num_requests_running", "waiting": "vllm:num_requests_waiting", "kv_usage": "vllm:kv_cache_usage_perc"}


def gauges(url):
    """vLLM's running and waiting requests and KV cache use from one instance's /metrics."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    found = dict.fromkeys(GAUGES, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for key, gauge in GAUGES.items():
            if name == gauge:
                found[key] += float(line.rpartition(" ")[2])
    return found


class Sampler:
    """Samples every instance's gauges every `interval` seconds in a thread until stopped."""

    def __init__(self, urls, interval):
        self.urls, self.interval, self.samples = urls, interval, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.done.wait(self.interval):
            try:
                self.samples.append([gauges(url) for url in self.urls])
            except Exception:
                continue

    def __enter__(self):
        if self.urls and self.interval > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def summary(self):
        if not self.samples:
            return {}
        totals = {key: [sum(instance[key] for instance in sample) for sample in self.samples] for key in ("running", "waiting")}
        busiest = [max(instance["kv_usage"] for instance in sample) for sample in self.samples]
        return {
            "samples": len(self.samples),
            "running_mean": statistics.fmean(totals["running"]),
            "running_max": max(totals["running"]),
            "waiting_mean": statistics.fmean(totals["waiting"]),
            "waiting_max": max(totals["waiting"]),
            "waiting_share": sum(1 for value in totals["waiting"] if value > 0) / len(self.samples),
            "kv_usage_max_instance_mean": statistics.fmean(busiest),
            "per_instance_running_mean": [statistics.fmean(sample[i]["running"] for sample in self.samples) for i in range(len(self.urls))],
        }


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


def phase(name, base, index, round_index, args):
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
        "arrival": args.arrival,
        "rate": args.rate,
        "think": args.think,
        "round": round_index,
        "api_key": args.api_key,
    }
    with Sampler(args.metrics, args.sample_interval) as sampler:
        out = run_workload(base, cfg)
    time.sleep(2)
    after = [counters(url) for url in args.metrics]
    per_instance = [{"url": url, "hits": a["hits"] - b["hits"], "queries": a["queries"] - b["queries"]} for url, b, a in zip(args.metrics, before, after)]
    hits = sum(i["hits"] for i in per_instance)
    queries = sum(i["queries"] for i in per_instance)
    ttfts = [r["ttft"] for r in out["results"] if r["ttft"] is not None]
    return {
        "mode": name,
        "round": round_index + 1,
        "url": base,
        "arrival": args.arrival,
        "rate": args.rate if args.arrival == "poisson" else None,
        "think": args.think,
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
        "last_arrival_s": out["last_arrival"],
        "requests_per_s": len(out["results"]) / out["wall"],
        # Little's law: requests in flight on average, as the client saw them.
        "in_flight_mean": sum(r["total"] for r in out["results"]) / out["wall"],
        "gauges": sampler.summary(),
        "ttfts_ms": [round(1000 * value, 2) for value in ttfts],
    }


def overhead(paths, args):
    """TTFT at concurrency 1 per path, interleaved, each request a fresh prompt (no prefix shared)."""
    conns = {name: connect(base) for name, base in paths}
    cfg = {"model": args.model, "max_tokens": args.max_tokens, "api_key": args.api_key}
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


def line(found):
    gauge = found.get("gauges") or {}
    extra = "  running %.1f waiting %.1f (max %d)" % (gauge["running_mean"], gauge["waiting_mean"], gauge["waiting_max"]) if gauge else ""
    return "%-12s r%-2s %4d requests %d errors  hit rate %5.1f%% (%d of %d prompt tokens)  TTFT median %7.1f ms  p99 %7.1f ms  %6.2f req/s%s" % (
        found["mode"],
        found.get("round", ""),
        found["requests"],
        found["errors"],
        100 * found["hit_rate"],
        found["cached_tokens"],
        found["prompt_tokens"],
        1000 * found["ttft_median"],
        1000 * found["ttft_p99"],
        found["requests_per_s"],
        extra,
    )


def ratio(found, base):
    return {
        "hit_rate": found["hit_rate"] / base["hit_rate"] if base["hit_rate"] else None,
        "ttft_median": found["ttft_median"] / base["ttft_median"],
        "ttft_p99": found["ttft_p99"] / base["ttft_p99"],
        "requests_per_s": found["requests_per_s"] / base["requests_per_s"],
    }


def pooled(figures):
    """Every mode's rounds together: hit rate over all its tokens, TTFT over all its requests, requests over all its time."""
    out = []
    for mode in dict.fromkeys(f["mode"] for f in figures):
        rounds = [f for f in figures if f["mode"] == mode]
        ttfts = [value / 1000 for f in rounds for value in f["ttfts_ms"]]
        hits, queries = sum(f["cached_tokens"] for f in rounds), sum(f["prompt_tokens"] for f in rounds)
        requests, wall = sum(f["requests"] for f in rounds), sum(f["wall_s"] for f in rounds)
        out.append(
            {
                "mode": mode,
                "round": "all",
                "rounds": len(rounds),
                "requests": requests,
                "errors": sum(f["errors"] for f in rounds),
                "hit_rate": hits / queries if queries else 0.0,
                "hit_rate_min": min(f["hit_rate"] for f in rounds),
                "hit_rate_max": max(f["hit_rate"] for f in rounds),
                "cached_tokens": hits,
                "prompt_tokens": queries,
                "ttft_median": statistics.median(ttfts),
                "ttft_p99": pct(ttfts, 0.99),
                "requests_per_s": requests / wall,
            }
        )
    return out


def report(figures):
    for found in figures:
        print(line(found))
    base = figures[0]
    ratios = {"rounds": [], "pooled": {}}
    for found in figures:
        if found["mode"] == base["mode"]:
            continue
        same = [f for f in figures if f["mode"] == base["mode"] and f["round"] == found["round"]]
        if same:
            got = ratio(found, same[0])
            ratios["rounds"].append(dict(got, mode=found["mode"], round=found["round"]))
            shown = ", ".join("%s %.2fx" % (k, v) for k, v in got.items() if v is not None)
            print("round %d %s / %s: %s" % (found["round"], found["mode"], base["mode"], shown))
    together = pooled(figures)
    for found in together:
        print(line(found) + "  (%d rounds; hit rate %.1f%%-%.1f%%)" % (found["rounds"], 100 * found["hit_rate_min"], 100 * found["hit_rate_max"]))
    for found in together[1:]:
        got = ratio(found, together[0])
        ratios["pooled"][found["mode"]] = got
        print("pooled %s / %s: %s" % (found["mode"], together[0]["mode"], ", ".join("%s %.2fx" % (k, v) for k, v in got.items() if v is not None)))
    return ratios, together


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
    p.add_argument("--arrival", choices=("closed", "poisson"), default="closed", help="closed: --concurrency clients; poisson: --rate conversations a second")
    p.add_argument("--rate", type=float, default=4.0, help="conversations started a second, for --arrival poisson")
    p.add_argument("--think", type=float, default=0.0, help="mean think time between a conversation's turns, seconds (exponential; 0: none)")
    p.add_argument("--api-key", default="", help="sent as Authorization: Bearer KEY")
    p.add_argument("--sample-interval", type=float, default=0.5, help="seconds between samples of the instances' gauges (0: none)")
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    out = {"workload": {k: v for k, v in vars(args).items() if k not in ("json",)}}
    if args.mode:
        figures, seen = [], {}
        for index, (name, base) in enumerate(pairs(args.mode)):
            seen[name] = seen.get(name, -1) + 1
            figures.append(phase(name, base, index, seen[name], args))
            print(line(figures[-1]), flush=True)
        print()
        out["modes"] = figures
        out["ratios_over_%s" % figures[0]["mode"]], out["pooled"] = report(figures)
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
