"""Issue 23's probe (device-side, not for CI): vLLM's own multi-node launch, pipeline parallel over two
"nodes" of one host, one GPU each. A leader (`--node-rank 0`, the API server) and a headless follower
(`--node-rank 1 --headless`) are started in the given order with a gap; the probe records when each
process starts, whether the leader comes up and serves a completion, and, with --kill, what the leader
does over --watch seconds after the follower's whole process group is killed with SIGKILL while
requests stream: does its process exit (and with which code), does /health answer, do the streams and
new requests fail or hang. Everything lands in OUT (logs of both processes and a JSON timeline).

    pp_probe.py --model /root/xfer/extra/model --out /root/out/B --tag leader_first --order leader --gap 30 --kill
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    "PYTHONUNBUFFERED": "1",
}


class Probe:
    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.events = []
        self.procs = {}
        self.lock = threading.Lock()

    def now(self):
        return round(time.monotonic() - self.t0, 2)

    def event(self, what, **more):
        with self.lock:
            self.events.append(dict({"t": self.now(), "event": what}, **more))
        print("%7.2fs %s %s" % (self.now(), what, json.dumps(more) if more else ""), flush=True)

    def argv(self, rank):
        a = self.args
        argv = ["vllm", "serve", a.model, "--served-model-name", "model", "--load-format", "dummy", "--dtype", "bfloat16"]
        argv += ["--max-model-len", "4096", "--gpu-memory-utilization", str(a.gpu_memory_utilization)]
        argv += ["--pipeline-parallel-size", "2", "--nnodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1"]
        argv += ["--master-port", str(a.master_port), "--port", str(a.port)]
        return argv + (["--headless"] if rank else []) + a.extra

    def start(self, role):
        rank = 0 if role == "leader" else 1
        gpus = self.args.gpus.split(",")
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpus[rank], VLLM_HOST_IP="127.0.0.1", GLOO_SOCKET_IFNAME="lo", **ENV)
        if gpus[0] == gpus[1]:
            # One card for both "nodes": NCCL refuses two ranks of one host on one GPU ("Duplicate GPU detected"),
            # so each process gets a host id of its own and NCCL joins them as two hosts, over loopback sockets.
            env.update(NCCL_HOSTID="gpufleet-probe-node-%d" % rank, NCCL_SOCKET_IFNAME="lo", NCCL_IB_DISABLE="1")
        log = open(Path(self.args.out) / ("%s-%s.log" % (self.args.tag, role)), "w")
        argv = self.argv(rank)
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[role] = proc
        self.event("start " + role, pid=proc.pid, argv=" ".join(argv))
        return proc

    def health(self):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.args.port, timeout=2)
            conn.request("GET", "/health")
            code = conn.getresponse().status
            conn.close()
            return code
        except Exception as exc:
            return type(exc).__name__

    def states(self):
        return {role: ("alive" if p.poll() is None else "exited %s" % p.returncode) for role, p in self.procs.items()}

    def complete(self, timeout, max_tokens=8):
        body = json.dumps({"model": "model", "prompt": "hello world one two three", "max_tokens": max_tokens, "ignore_eos": True})
        start = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.args.port, timeout=timeout)
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()[:300].decode(errors="replace")
            conn.close()
            return {"status": resp.status, "seconds": round(time.monotonic() - start, 2), "body": data}
        except Exception as exc:
            return {"status": type(exc).__name__, "seconds": round(time.monotonic() - start, 2), "error": str(exc)[:200]}

    def stream(self, index, results):
        body = json.dumps({"model": "model", "prompt": "stream %d hello world" % index, "max_tokens": 3500, "ignore_eos": True, "stream": True})
        out = {"index": index, "chunks": 0, "first": None, "last": None, "end": None, "outcome": None}
        results.append(out)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.args.port, timeout=self.args.watch + 30)
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            out["status"] = resp.status
            tail = b""
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    break
                out["chunks"] += chunk.count(b"data: ")
                out["first"] = out["first"] or self.now()
                out["last"] = self.now()
                tail = (tail + chunk)[-400:]
            out["outcome"] = "ended"
            out["tail"] = tail.decode(errors="replace")
        except Exception as exc:
            out["outcome"] = "%s: %s" % (type(exc).__name__, str(exc)[:200])
        out["end"] = self.now()

    def wait_ready(self, limit):
        until = time.monotonic() + limit
        last = None
        while time.monotonic() < until:
            states = self.states()
            if states != last:
                self.event("states", **states)
                last = states
            if any(s.startswith("exited") for s in states.values()):
                return False
            if self.health() == 200:
                self.event("leader /health 200")
                return True
            time.sleep(1)
        return False

    def kill_follower(self):
        results = []
        threads = [threading.Thread(target=self.stream, args=(i, results), daemon=True) for i in range(self.args.streams)]
        for thread in threads:
            thread.start()
        time.sleep(6)
        self.event("streams before kill", chunks=[r["chunks"] for r in results])
        follower = self.procs["follower"]
        os.killpg(follower.pid, signal.SIGKILL)
        self.event("SIGKILL follower process group", pgid=follower.pid)
        kill_t = self.now()
        checks = []
        while self.now() - kill_t < self.args.watch:
            row = {"t": self.now(), "since_kill": round(self.now() - kill_t, 2), "health": self.health(), "states": self.states()}
            row["stream_chunks"] = [r["chunks"] for r in results]
            row["streams_ended"] = [r["outcome"] for r in results]
            checks.append(row)
            print(json.dumps(row), flush=True)
            if len(checks) in (5, 20, 45):
                self.event("new completion after kill", since_kill=row["since_kill"], result=self.complete(timeout=8))
            time.sleep(1)
        return {"kill_t": kill_t, "checks": checks, "streams": results}

    def stop_all(self):
        for role, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
                self.event("stopped " + role, returncode=proc.returncode)
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tag", default="run")
    p.add_argument("--order", choices=("leader", "follower"), default="leader", help="which process starts first")
    p.add_argument("--gap", type=float, default=30, help="seconds between the two starts")
    p.add_argument("--ready-limit", type=float, default=420)
    p.add_argument("--kill", action="store_true", help="SIGKILL the follower's process group while requests stream")
    p.add_argument("--watch", type=float, default=60, help="seconds to watch the leader after the kill")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--gpus", default="0,1", help="CUDA_VISIBLE_DEVICES of the leader and the follower (0,0 on a one-GPU machine)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--master-port", type=int, default=29555)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument("extra", nargs="*", help="more vllm serve arguments (after --)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    # timeout(1) ends the probe with SIGTERM: stop both processes (the finally below) before going.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    probe = Probe(args)
    found = {"tag": args.tag, "order": args.order, "gap_s": args.gap}
    first, second = ("leader", "follower") if args.order == "leader" else ("follower", "leader")
    try:
        probe.start(first)
        until = time.monotonic() + args.gap
        while time.monotonic() < until:
            time.sleep(1)
        found["before_second"] = {"states": probe.states(), "health": probe.health()}
        probe.event("before second start", **found["before_second"])
        probe.start(second)
        start_second = probe.now()
        found["ready"] = probe.wait_ready(args.ready_limit)
        found["ready_after_second_start_s"] = round(probe.now() - start_second, 2) if found["ready"] else None
        if found["ready"]:
            found["completion"] = probe.complete(timeout=60)
            probe.event("first completion", **found["completion"])
            if args.kill:
                found["kill"] = probe.kill_follower()
        found["final_states"] = probe.states()
    finally:
        probe.stop_all()
        found["events"] = probe.events
        Path(args.out, "%s.json" % args.tag).write_text(json.dumps(found, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
