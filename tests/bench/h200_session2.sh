# shellcheck shell=bash
# The second router session on a lent H200 machine (device-side; not for CI), run detached so that it
# outlives one device call: h200_router_run.sh setup, start, extra (two more routers, the collection's
# two nginx tiers), bench2 (rate calibration, Poisson rounds, overhead, closed-loop pair, router with
# its own tokenizer), stop. Results under OUTROOT/A, the log in OUTROOT/session.log, OUTROOT/done at the end.
#
#   setsid nohup bash tests/bench/h200_session2.sh /root/s2 > /dev/null 2>&1 &
# Not under $OUT (on the lent machines $OUT is /root/out): each device call empties $OUT first.
set -uo pipefail
R=${1:?usage: h200_session2.sh OUTROOT}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
export XFER=${XFER:-/root/xfer} RUN=${RUN:-/root/run}
# A copy to run from: the working tree that a later device call brings may replace the one this started from.
rm -rf /root/repo && mkdir -p /root/repo/tests "$R/A" && cp -r "$SRC/plugins" /root/repo/ && cp -r "$SRC/tests/bench" /root/repo/tests/
B=/root/repo/tests/bench
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then export GPU_LIST="0 0 1 1"; else export GPU_LIST="0 0 0 0"; fi
{
  echo "== GPUs: $(nvidia-smi -L | wc -l), instances on ${GPU_LIST}"
  echo "== setup $(date +%T)"; timeout 400 bash "$B/h200_router_run.sh" setup "$R/A"
  echo "== start $(date +%T)"; timeout 600 bash "$B/h200_router_run.sh" start "$R/A"
  echo "== extra $(date +%T)"; timeout 240 bash "$B/h200_router_run.sh" extra "$R/A"
  echo "== bench2 $(date +%T)"; timeout 1500 bash "$B/h200_router_run.sh" bench2 "$R/A"
  echo "== stop $(date +%T)"; bash "$B/h200_router_run.sh" stop "$R/A"
  echo "== done $(date +%T)"
} > "$R/session.log" 2>&1
touch "$R/done"
