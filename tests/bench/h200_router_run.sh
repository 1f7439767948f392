#!/usr/bin/env bash
# Issue 21 on a lent two-H200 machine (device-side; not for CI): vLLM's router (cache_aware, launched
# with cache_router.router_argv's arguments) against nginx least_conn over four vLLM 0.26 instances,
# two per card, with small KV caches, on prefix_bench.py's shared-prefix workload.
#
#   h200_router_run.sh setup OUT   reassemble the carried files, install vLLM + vllm-router, save --help texts
#   h200_router_run.sh start OUT   start 4 instances, nginx (least_conn + the routers' worker routes), the router
#   h200_router_run.sh bench OUT   the modes side by side, then the concurrency-1 TTFT overhead
#   h200_router_run.sh conf OUT    only write the router's arguments and nginx.conf to OUT
#   h200_router_run.sh extra OUT   after start: three more routers, their workers the instances (no nginx hop):
#                                  cache_aware, cache_aware with VLLM_ROUTER_TOKENIZER, round_robin (no render calls);
#                                  the collection's two nginx tiers (extra/gw)
#   h200_router_run.sh bench2 OUT  open-loop (Poisson) rounds after a rate calibration, the router variants,
#                                  a closed-loop pair, the concurrency-1 overhead of every path
#   h200_router_run.sh stop OUT    stop what start and extra started (by the process ids they saved)
#
# Carried files live in $XFER (default /root/xfer): wh/ (vLLM's wheels and install.sh, see
# ../shared/gpu/README.md), extra/whl (vllm-router, orjson), extra/nginx (Debian 12's nginx and
# its libraries; modules/ngx_http_js_module.so from Debian 12's libnginx-mod-http-js), extra/model (a
# Llama-3.2-1B config.json and a tiny tokenizer; weights are dummy), extra/gw (render_two_tier.py's output).
set -uo pipefail
step=${1:?usage: h200_router_run.sh setup|conf|start|bench|stop OUT}
OUT=${2:?usage: h200_router_run.sh setup|conf|start|bench|stop OUT}
XFER=${XFER:-/root/xfer}
RUN=${RUN:-/root/run}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
MODEL=$XFER/extra/model
PORTS=(8001 8002 8003 8004)
# Two instances per card; GPU_LIST="0 0 0 0" puts all four on one card (a one-GPU machine).
read -ra GPUS <<< "${GPU_LIST:-0 0 1 1}"
# KV cache per instance: 1600 blocks of 16 tokens (25,600 tokens; 32 KiB a token for this shape).
KV_BLOCKS=${KV_BLOCKS:-1600}
KV_BYTES=$((KV_BLOCKS * 16 * 32768))
NGINX_PORT=8080
WORKER_PORT=8199
ROUTER_PORT=8200
ROUTER_DIRECT_PORT=8210
ROUTER_TOK_PORT=8220
ROUTER_RR_PORT=8230
FLEET_PORT=80
SERVER_PORT=8000
mkdir -p "$OUT" "$RUN"

export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 CUDA_DEVICE_ORDER=PCI_BUS_ID
export VLLM_SERVER_DEV_MODE=1 PYTHONUNBUFFERED=1

wait_http() { # url seconds -> 0 when it answers 200 in time
  local url=$1 until=$((SECONDS + $2))
  while [ $SECONDS -lt $until ]; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url")" = 200 ] && return 0
    sleep 2
  done
  return 1
}

setup() {
  cd "$XFER" || exit 1
  find . -name '*.t00' | while read -r first; do
    base=${first%.t00}
    cat "$base".t[0-9][0-9] > "$base" && rm -f "$base".t[0-9][0-9]
  done
  chmod +x "$XFER/extra/nginx/nginx"
  bash "$XFER/wh/install.sh" "$XFER/wh" --no-optional > "$OUT/install.log" 2>&1 || { tail -40 "$OUT/install.log"; exit 1; }
  tail -5 "$OUT/install.log"
  python3 -m pip install -q --no-index --no-deps --disable-pip-version-check "$XFER"/extra/whl/*.whl >> "$OUT/install.log" 2>&1 || exit 1
  {
    echo "### python3 -c 'import vllm; print(vllm.__version__)'"; python3 -c 'import vllm; print(vllm.__version__)'
    echo "### vllm serve --help=all"; vllm serve --help=all 2>&1
    echo "### vllm serve --help"; vllm serve --help 2>&1
  } > "$RUN/vllm-serve-help.txt"
  { echo "### vllm-router --help"; vllm-router --help 2>&1; } > "$RUN/vllm-router-help.txt"
  cp "$RUN/vllm-serve-help.txt" "$RUN/vllm-router-help.txt" "$OUT/"
  grep -c -- "--enable-scale-out" "$OUT/vllm-serve-help.txt" | sed 's/^/--enable-scale-out mentions in help: /'
  grep -o -- "--kv-cache-memory-bytes\|--num-gpu-blocks-override\|--nnodes\|--node-rank\|--headless\|--master-addr\|--master-port" "$OUT/vllm-serve-help.txt" | sort | uniq -c
  LD_LIBRARY_PATH=$XFER/extra/nginx/lib "$XFER/extra/nginx/nginx" -V 2>&1 | head -1
  nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv
}

router_argv_json() { # PORT WORKER_URL... -> the collection's own router_argv for these workers
  mkdir -p "$RUN/ac/ansible_collections/gpufleet"
  ln -sfn "$REPO" "$RUN/ac/ansible_collections/gpufleet/serving"
  PYTHONPATH=$RUN/ac python3 - "$@" <<'PY'
import json, sys
from ansible_collections.gpufleet.serving.plugins.module_utils.cache_router import router_argv
port = int(sys.argv[1])
router = {
    "unit": "gpufleet-router-1", "policy": "cache_aware", "port": port, "metrics_port": port + 1,
    "health_interval": 5, "request_timeout": 300,  # gateway_router_health_interval, gateway_read_timeout (defaults)
    "workers": sys.argv[2:],
}
print(json.dumps(router_argv(router)))
PY
}

worker_routes() { # the loopback worker routes of nginx (the collection's shape)
  local i
  for i in "${!PORTS[@]}"; do echo "http://127.0.0.1:$WORKER_PORT/_gpufleet/worker/gpufleet_worker_1_$((i + 1))"; done
}

instance_urls() {
  local p
  for p in "${PORTS[@]}"; do echo "http://127.0.0.1:$p"; done
}

router_args() { # PORT POLICY WORKER_URL...: the collection's router_argv (made for the nginx worker routes, the only
  # workers it accepts), then its workers replaced by the URLs given and its policy by POLICY; one argument a line
  local port=$1 policy=$2 routes
  shift 2
  mapfile -t routes < <(worker_routes)
  router_argv_json "$port" "${routes[@]}" | python3 -c '
import json, sys
argv, policy, workers = json.load(sys.stdin), sys.argv[1], sys.argv[2:]
first = argv.index("--worker-urls") + 1
last = first
while last < len(argv) and not argv[last].startswith("--"):
    last += 1
argv[first:last] = workers
argv[argv.index("--policy") + 1] = policy
print("\n".join(argv))' "$policy" "$@"
}

launch_router() { # NAME PORT ENV(NAME=VALUE or -) POLICY WORKER_URL...: start one vllm-router, detached
  local name=$1 port=$2 setting=$3 policy=$4 rargv
  shift 4
  mapfile -t rargv < <(router_args "$port" "$policy" "$@")
  echo "router $name: ${setting#-} vllm-router ${rargv[*]}" | tee -a "$OUT/commands.txt"
  [ "${#rargv[@]}" -gt 4 ] || { echo "router $name: no arguments, not started"; return 1; }
  if [ "$setting" = - ]; then
    setsid nohup vllm-router "${rargv[@]}" > "$RUN/router-$name.log" 2>&1 < /dev/null &
  else
    setsid nohup env "$setting" vllm-router "${rargv[@]}" > "$RUN/router-$name.log" 2>&1 < /dev/null &
  fi
  echo $! >> "$RUN/pids"
  if wait_http "http://127.0.0.1:$port/health" 90; then echo "router $name healthy at ${SECONDS}s"; else echo "router $name not healthy"; tail -30 "$RUN/router-$name.log"; fi
}

nginx_conf() {
  local i
  echo "user root; worker_processes 4; pid $RUN/nginx/nginx.pid; error_log $RUN/nginx/error.log warn;"
  echo "events { worker_connections 8192; }"
  echo "http {"
  echo "  access_log off; client_body_temp_path $RUN/nginx/body; proxy_temp_path $RUN/nginx/proxy;"
  echo "  fastcgi_temp_path $RUN/nginx/fcgi; uwsgi_temp_path $RUN/nginx/uwsgi; scgi_temp_path $RUN/nginx/scgi;"
  echo "  client_max_body_size 64m; client_body_buffer_size 4m;"
  echo "  proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; proxy_request_buffering on;"
  echo "  proxy_connect_timeout 5s; proxy_read_timeout 300s; proxy_send_timeout 300s; gzip off;"
  echo "  upstream gpufleet_local { least_conn;"
  for i in "${!PORTS[@]}"; do echo "    server 127.0.0.1:${PORTS[$i]} max_fails=0;"; done
  echo "    keepalive 64; keepalive_timeout 60s; }"
  for i in "${!PORTS[@]}"; do
    echo "  upstream gpufleet_worker_1_$((i + 1)) { server 127.0.0.1:${PORTS[$i]} max_fails=0; keepalive 32; keepalive_timeout 60s; }"
  done
  echo "  server { listen 127.0.0.1:$NGINX_PORT; location / { proxy_pass http://gpufleet_local; } }"
  echo "  server { listen 127.0.0.1:$WORKER_PORT;"
  for i in "${!PORTS[@]}"; do
    echo "    location /_gpufleet/worker/gpufleet_worker_1_$((i + 1))/ { proxy_pass http://gpufleet_worker_1_$((i + 1))/; }"
  done
  echo "    location / { return 404; } }"
  echo "}"
}

start() {
  local i kvflag scale
  if grep -q -- "--kv-cache-memory-bytes" "$RUN/vllm-serve-help.txt"; then
    kvflag=(--kv-cache-memory-bytes "$KV_BYTES")
  else
    kvflag=(--num-gpu-blocks-override "$KV_BLOCKS")
  fi
  scale=(--enable-scale-out)
  grep -q -- "--enable-scale-out" "$RUN/vllm-serve-help.txt" || { echo "NO --enable-scale-out in vllm serve --help: started without it"; scale=(); }
  : > "$RUN/pids"
  for i in "${!PORTS[@]}"; do
    argv=(vllm serve "$MODEL" --served-model-name model --load-format dummy --dtype bfloat16 --max-model-len 8192
      --gpu-memory-utilization 0.12 "${kvflag[@]}" "${scale[@]}" --port "${PORTS[$i]}" --host 127.0.0.1)
    echo "instance $i on GPU ${GPUS[$i]}: ${argv[*]}" | tee -a "$OUT/commands.txt"
    VLLM_CACHE_ROOT=$RUN/cache-$i CUDA_VISIBLE_DEVICES=${GPUS[$i]} setsid nohup "${argv[@]}" > "$RUN/instance-$i.log" 2>&1 < /dev/null &
    echo $! >> "$RUN/pids"
  done
  for i in "${!PORTS[@]}"; do
    if wait_http "http://127.0.0.1:${PORTS[$i]}/health" 420; then echo "instance $i healthy at ${SECONDS}s"; continue; fi
    echo "instance $i not healthy at ${SECONDS}s; started again alone"; tail -30 "$RUN/instance-$i.log"
    mv "$RUN/instance-$i.log" "$RUN/instance-$i-first.log"
    pkill_group=$(sed -n "$((i + 1))p" "$RUN/pids"); kill -9 -- "-$pkill_group" 2>/dev/null; sleep 3
    argv=(vllm serve "$MODEL" --served-model-name model --load-format dummy --dtype bfloat16 --max-model-len 8192
      --gpu-memory-utilization 0.12 "${kvflag[@]}" "${scale[@]}" --port "${PORTS[$i]}" --host 127.0.0.1)
    VLLM_CACHE_ROOT=$RUN/cache-$i CUDA_VISIBLE_DEVICES=${GPUS[$i]} setsid nohup "${argv[@]}" > "$RUN/instance-$i.log" 2>&1 < /dev/null &
    echo $! >> "$RUN/pids"
    wait_http "http://127.0.0.1:${PORTS[$i]}/health" 300 && echo "instance $i healthy at ${SECONDS}s (second start)"
  done
  mkdir -p "$RUN/nginx"
  nginx_conf > "$RUN/nginx/nginx.conf"
  cp "$RUN/nginx/nginx.conf" "$OUT/nginx.conf"
  if LD_LIBRARY_PATH=$XFER/extra/nginx/lib "$XFER/extra/nginx/nginx" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf"; then
    echo "nginx up: $(cat "$RUN/nginx/nginx.pid")"
  else
    echo "NGINX FAILED"
  fi
  mapfile -t workers < <(worker_routes)
  launch_router nginx "$ROUTER_PORT" - cache_aware "${workers[@]}"
  for url in "http://127.0.0.1:${PORTS[0]}" "http://127.0.0.1:$NGINX_PORT" "http://127.0.0.1:$WORKER_PORT/_gpufleet/worker/gpufleet_worker_1_1" "http://127.0.0.1:$ROUTER_PORT"; do
    code=$(curl -s -o "$RUN/smoke.json" -w '%{http_code}' --max-time 60 "$url/v1/chat/completions" -H 'Content-Type: application/json' \
      -d '{"model":"model","messages":[{"role":"user","content":"hello world"}],"max_tokens":8}')
    echo "smoke $url -> $code $(head -c 200 "$RUN/smoke.json")"
  done
  code=$(curl -s -o "$RUN/render.json" -w '%{http_code}' --max-time 30 "http://127.0.0.1:${PORTS[0]}/v1/chat/completions/render" -H 'Content-Type: application/json' \
    -d '{"model":"model","messages":[{"role":"user","content":"hello world"}]}')
  echo "render on an instance -> $code $(head -c 300 "$RUN/render.json")"
  curl -s "http://127.0.0.1:${PORTS[0]}/metrics" | grep -i "prefix_cache" | grep -v "^#" | head -8
}

bench() {
  local metrics=() resets=() p
  for p in "${PORTS[@]}"; do metrics+=(--metrics "http://127.0.0.1:$p/metrics"); resets+=(--reset-url "http://127.0.0.1:$p/reset_prefix_cache"); done
  local workload=(--model model --system-prompts "${SYSTEM_PROMPTS:-48}" --system-words "${SYSTEM_WORDS:-1200}" --conversations "${CONVERSATIONS:-384}"
    --turns 4 --user-words 30 --max-tokens "${MAX_TOKENS:-32}" --concurrency "${CONCURRENCY:-24}" --seed 7)
  curl -s "http://127.0.0.1:${PORTS[0]}/metrics" | grep -E "^# (HELP|TYPE) vllm:prefix_cache|^vllm:prefix_cache|^vllm:cache_config_info|^vllm:num_gpu_blocks" > "$OUT/metric-names.txt"
  local modes=(--mode "least_conn=http://127.0.0.1:$NGINX_PORT" --mode "cache_aware=http://127.0.0.1:$ROUTER_PORT")
  echo "bench: prefix_bench_direct.py ${modes[*]} ${modes[*]} ${workload[*]}" | tee -a "$OUT/commands.txt"
  python3 "$REPO/tests/bench/prefix_bench_direct.py" "${modes[@]}" "${modes[@]}" "${metrics[@]}" "${resets[@]}" "${workload[@]}" \
    --json "$OUT/jobA-modes.json" 2>&1 | tee "$OUT/jobA.txt"
  local ovh=(--overhead "direct=http://127.0.0.1:${PORTS[0]}" --overhead "nginx=http://127.0.0.1:$NGINX_PORT" --overhead "router=http://127.0.0.1:$ROUTER_PORT"
    --requests 50 --warmup 3 --model model --system-words "${SYSTEM_WORDS:-1200}" --user-words 30 --max-tokens "${MAX_TOKENS:-32}")
  echo "overhead: prefix_bench_direct.py ${ovh[*]}" | tee -a "$OUT/commands.txt"
  python3 "$REPO/tests/bench/prefix_bench_direct.py" "${ovh[@]}" --json "$OUT/jobA-overhead.json" 2>&1 | tee -a "$OUT/jobA.txt"
  curl -s "http://127.0.0.1:$((ROUTER_PORT + 1))/metrics" > "$RUN/router-metrics.txt"
}

conf() { # what start launches, without launching it
  mapfile -t workers < <(worker_routes)
  mapfile -t direct < <(instance_urls)
  router_argv_json "$ROUTER_PORT" "${workers[@]}" > "$OUT/router-argv.json"
  router_args "$ROUTER_DIRECT_PORT" cache_aware "${direct[@]}" > "$OUT/router-argv-direct.txt"
  router_args "$ROUTER_RR_PORT" round_robin "${direct[@]}" > "$OUT/router-argv-rr.txt"
  nginx_conf > "$OUT/nginx.conf"
}

smoke() { # URL [KEY]: one short chat completion
  local key=() code
  [ -n "${2:-}" ] && key=(-H "Authorization: Bearer $2")
  code=$(curl -s -o "$RUN/smoke.json" -w '%{http_code}' --max-time 60 "$1/v1/chat/completions" -H 'Content-Type: application/json' "${key[@]}" \
    -d '{"model":"model","messages":[{"role":"user","content":"hello world"}],"max_tokens":8}')
  echo "smoke $1 -> $code $(head -c 160 "$RUN/smoke.json")"
}

extra() { # after start: routers without the nginx hop (cache_aware, with its own tokenizer, round_robin), the two nginx tiers
  local gw=$RUN/gw tier nginx=$XFER/extra/nginx/nginx port
  mapfile -t direct < <(instance_urls)
  launch_router direct "$ROUTER_DIRECT_PORT" - cache_aware "${direct[@]}"
  launch_router tok "$ROUTER_TOK_PORT" "VLLM_ROUTER_TOKENIZER=$MODEL" cache_aware "${direct[@]}"
  launch_router rr "$ROUTER_RR_PORT" - round_robin "${direct[@]}"
  for port in "$ROUTER_DIRECT_PORT" "$ROUTER_TOK_PORT" "$ROUTER_RR_PORT"; do smoke "http://127.0.0.1:$port"; done
  grep -i "tokeniz\|error\|warn" "$RUN/router-tok.log" | head -20
  for port in $((ROUTER_PORT + 1)) $((ROUTER_DIRECT_PORT + 1)) $((ROUTER_TOK_PORT + 1)) $((ROUTER_RR_PORT + 1)); do
    echo "router metrics $port: $(curl -s "http://127.0.0.1:$port/metrics" | grep kv_routing_inputs | grep -v '^#' | tr '\n' ' ')"
  done
  # The collection's own two tiers (render_two_tier.py): fleet tier on 80 (njs, keys) -> server tier on 8000 -> 8001, 8002.
  mkdir -p "$gw/log" "$gw/tmp"
  cp "$XFER/extra/gw/"* "$gw/"
  sed -i "s#@GW@#$gw#g; s#@NJS@#$XFER/extra/nginx/modules/ngx_http_js_module.so#g" "$gw"/*.conf
  for tier in server fleet; do
    if LD_LIBRARY_PATH=$XFER/extra/nginx/lib "$nginx" -p "$gw" -c "$gw/$tier-main.conf"; then echo "$tier tier up"; else echo "$tier TIER FAILED"; fi
  done
  sleep 1
  smoke "http://127.0.0.1:$SERVER_PORT"
  smoke "http://127.0.0.1:$FLEET_PORT" "$(cat "$gw/api-key.txt")"
  curl -s --max-time 10 "http://127.0.0.1:$FLEET_PORT/health"; echo
}

router_metrics() { # TAG: the routers' routing counters now
  local port
  for port in $((ROUTER_PORT + 1)) $((ROUTER_DIRECT_PORT + 1)) $((ROUTER_TOK_PORT + 1)) $((ROUTER_RR_PORT + 1)); do
    curl -s "http://127.0.0.1:$port/metrics" > "$RUN/router-metrics-$1-$port.txt"
    grep -E "^vllm_router_(kv_routing_inputs|prefix_routing_decisions|policy_decisions|cache_aware)" "$RUN/router-metrics-$1-$port.txt" | sed "s/^/$1 $port /"
  done >> "$OUT/router-counters.txt"
}

bench2() {
  local metrics=() resets=() p rate bench=$REPO/tests/bench/prefix_bench_direct.py think=${THINK:-1} rates=${CAL_RATES:-8 16 24 32}
  for p in "${PORTS[@]}"; do metrics+=(--metrics "http://127.0.0.1:$p/metrics"); resets+=(--reset-url "http://127.0.0.1:$p/reset_prefix_cache"); done
  local shape=(--model model --system-prompts 48 --system-words 1200 --turns 4 --user-words 30 --max-tokens 32 --seed 7 "${metrics[@]}" "${resets[@]}")
  local lc=least_conn=http://127.0.0.1:$NGINX_PORT ca=cache_aware=http://127.0.0.1:$ROUTER_PORT
  echo "== calibration $(date +%T): least_conn, Poisson, 128 conversations at each rate, think ${think}s" | tee -a "$OUT/bench2.txt"
  for rate in $rates; do
    echo "calibration: prefix_bench_direct.py --mode $lc ${shape[*]} --conversations 128 --arrival poisson --rate $rate --think $think" >> "$OUT/commands.txt"
    timeout 120 python3 "$bench" --mode "$lc" "${shape[@]}" --conversations 128 --arrival poisson --rate "$rate" --think "$think" --json "$OUT/cal-$rate.json" > "$RUN/cal-$rate.txt" 2>&1
    head -1 "$RUN/cal-$rate.txt" | sed "s/^/rate $rate: /" | tee -a "$OUT/bench2.txt"
  done
  # The highest rate at which the instances did not queue (vLLM's waiting gauge, summed, under 0.5 on average)
  # and the median TTFT stayed within 1.5x of the lowest rate's.
  # shellcheck disable=SC2086 # $rates: one argument a rate
  rate=$(python3 - "$OUT" $rates <<'PY'
import json, sys
out, rates = sys.argv[1], sys.argv[2:]
found = []
for rate in rates:
    try:
        phase = json.load(open("%s/cal-%s.json" % (out, rate)))["modes"][0]
    except (OSError, KeyError, IndexError, ValueError):
        continue
    found.append((float(rate), phase["gauges"].get("waiting_mean", 0.0), phase["ttft_median"]))
good = [rate for rate, waiting, ttft in found if waiting < 0.5 and ttft <= 1.5 * found[0][2]]
print("%g" % (max(good) if good else float(rates[0])))
PY
)
  RATE=${RATE:-$rate}
  echo "== rate chosen by the calibration: $rate conversations/s; used: $RATE" | tee -a "$OUT/bench2.txt"
  local modes=()
  for p in 1 2 3 4; do modes+=(--mode "$lc" --mode "$ca"); done
  echo "== poisson $(date +%T)" | tee -a "$OUT/bench2.txt"
  echo "poisson: prefix_bench_direct.py ${modes[*]} ${shape[*]} --conversations 384 --arrival poisson --rate $RATE --think $think" >> "$OUT/commands.txt"
  timeout 900 python3 "$bench" "${modes[@]}" "${shape[@]}" --conversations 384 --arrival poisson --rate "$RATE" --think "$think" --json "$OUT/poisson.json" 2>&1 | tee -a "$OUT/bench2.txt"
  router_metrics poisson
  echo "== overhead $(date +%T)" | tee -a "$OUT/bench2.txt"
  local ovh=(--overhead "direct=http://127.0.0.1:${PORTS[0]}" --overhead "nginx=http://127.0.0.1:$NGINX_PORT"
    --overhead "router_nginx=http://127.0.0.1:$ROUTER_PORT" --overhead "router_direct=http://127.0.0.1:$ROUTER_DIRECT_PORT"
    --overhead "router_tok=http://127.0.0.1:$ROUTER_TOK_PORT" --overhead "router_rr=http://127.0.0.1:$ROUTER_RR_PORT"
    --overhead "two_tier=http://127.0.0.1:$FLEET_PORT"
    --api-key "$(cat "$RUN/gw/api-key.txt")" --requests "${OVH_REQUESTS:-100}" --warmup 5 --model model --system-words 1200 --user-words 30 --max-tokens 8)
  echo "overhead: prefix_bench_direct.py ${ovh[*]}" >> "$OUT/commands.txt"
  timeout 300 python3 "$bench" "${ovh[@]}" --json "$OUT/overhead.json" 2>&1 | tee -a "$OUT/bench2.txt"
  router_metrics overhead
  echo "== closed loop $(date +%T)" | tee -a "$OUT/bench2.txt"
  echo "closed: prefix_bench_direct.py --mode $lc --mode $ca ${shape[*]} --conversations 384 --concurrency 24" >> "$OUT/commands.txt"
  timeout 300 python3 "$bench" --mode "$lc" --mode "$ca" "${shape[@]}" --conversations 384 --concurrency 24 --json "$OUT/closed.json" 2>&1 | tee -a "$OUT/bench2.txt"
  router_metrics closed
  echo "== router with VLLM_ROUTER_TOKENIZER, Poisson rounds 1-2 $(date +%T)" | tee -a "$OUT/bench2.txt"
  local tok=cache_aware_tok=http://127.0.0.1:$ROUTER_TOK_PORT
  echo "tok: prefix_bench_direct.py --mode $tok --mode $tok ${shape[*]} --conversations 384 --arrival poisson --rate $RATE --think $think" >> "$OUT/commands.txt"
  timeout 300 python3 "$bench" --mode "$tok" --mode "$tok" "${shape[@]}" --conversations 384 --arrival poisson --rate "$RATE" --think "$think" --json "$OUT/poisson-tok.json" 2>&1 | tee -a "$OUT/bench2.txt"
  router_metrics tok
  echo "== bench2 done $(date +%T)" | tee -a "$OUT/bench2.txt"
}

stop() {
  local pid
  mkdir -p "$OUT/logs"
  cp "$RUN"/*.log "$RUN"/router-metrics*.txt "$OUT/logs/" 2>/dev/null
  cp "$RUN/nginx/error.log" "$OUT/logs/nginx-error.log" 2>/dev/null
  cp "$RUN/gw/log/"*error*.log "$OUT/logs/" 2>/dev/null
  [ -f "$RUN/nginx/nginx.pid" ] && kill "$(cat "$RUN/nginx/nginx.pid")"
  for pid in "$RUN/gw/fleet.pid" "$RUN/gw/server.pid"; do [ -f "$pid" ] && kill "$(cat "$pid")"; done
  while read -r pid; do kill -- "-$pid" 2>/dev/null; done < "$RUN/pids"
  sleep 8
  while read -r pid; do kill -9 -- "-$pid" 2>/dev/null; done < "$RUN/pids"
  sleep 2
  nvidia-smi --query-gpu=index,memory.used --format=csv
}

"$step"
