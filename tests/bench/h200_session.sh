#!/usr/bin/env bash
# The 2026-12-03 session on a lent two-H200 machine (device-side; not for CI), run detached so that
# it outlives one device call: issue 21 (h200_router_run.sh: setup, start, bench, stop), then
# issue 23's probe (pp_probe.py: leader first with --kill, then follower first). Results under
# OUTROOT/A and OUTROOT/B, the log in OUTROOT/session.log, OUTROOT/done at the end.
#
#   setsid nohup bash tests/bench/h200_session.sh /root/session > /dev/null 2>&1 &
# Not under $OUT (on the lent machines $OUT is /root/out): each device call empties $OUT first.
set -uo pipefail
R=${1:?usage: h200_session.sh OUTROOT}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
export XFER=${XFER:-/root/xfer} RUN=${RUN:-/root/run}
# A copy to run from: the working tree that a later device call brings may replace the one this started from.
rm -rf /root/repo && mkdir -p /root/repo/tests "$R/A" "$R/B" && cp -r "$SRC/plugins" /root/repo/ && cp -r "$SRC/tests/bench" /root/repo/tests/
B=/root/repo/tests/bench
# On a one-GPU machine the four instances share the card, and so do the probe's two "nodes".
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then export GPU_LIST="0 0 1 1"; PP_GPUS=0,1; else export GPU_LIST="0 0 0 0"; PP_GPUS=0,0; fi
{
  echo "== GPUs: $(nvidia-smi -L | wc -l), instances on ${GPU_LIST}, probe on ${PP_GPUS}"
  echo "== setup $(date +%T)"; timeout 400 bash "$B/h200_router_run.sh" setup "$R/A"
  echo "== start $(date +%T)"; timeout 600 bash "$B/h200_router_run.sh" start "$R/A"
  echo "== bench $(date +%T)"; timeout 900 bash "$B/h200_router_run.sh" bench "$R/A"
  echo "== stop $(date +%T)"; bash "$B/h200_router_run.sh" stop "$R/A"
  echo "== job B $(date +%T)"
  cp "$RUN/vllm-serve-help.txt" "$R/B/" 2>/dev/null
  timeout 330 python3 "$B/pp_probe.py" --model "$XFER/extra/model" --out "$R/B" --tag leader_first --order leader --gap 30 --ready-limit 240 --kill --master-port 29555 --gpus "$PP_GPUS" --gpu-memory-utilization 0.4
  echo "== job B follower first $(date +%T)"
  timeout 270 python3 "$B/pp_probe.py" --model "$XFER/extra/model" --out "$R/B" --tag follower_first --order follower --gap 30 --ready-limit 200 --master-port 29655 --gpus "$PP_GPUS" --gpu-memory-utilization 0.4
  nvidia-smi
  echo "== done $(date +%T)"
} > "$R/session.log" 2>&1
touch "$R/done"
