#!/usr/bin/env bash
# Measure models' shapes on a lent GPU box with tools/measure_box.py (random
# weights: --load-format dummy with the real config.json), from the root of a
# checkout, after vLLM's CUDA build was installed there
# (../shared/gpu/README.md: carried wheels, install.sh).
#   docs/bakeoff-h200x1/measure.sh OUTDIR MODEL:CONCURRENCY:REQUESTS ...
# MODEL is a folder of tests/fixtures/models; each model's results go to
# OUTDIR/MODEL.tar.gz (report, measurement file, box.json, logs).
# MEASURE_BOX_ARGS adds options to every run (for example --python).
set -eu
# The extra options, split on blanks (none when unset).
read -r -a extra <<<"${MEASURE_BOX_ARGS:-}"
out=${1:?usage: measure.sh OUTDIR MODEL:CONCURRENCY:REQUESTS ...}; shift
work=/tmp/measure-box
mkdir -p "$work" "$out"
python3 tests/model/make_tiny_model.py "$work/tiny" >/dev/null
cat > "$work/settings.json" <<'JSON'
{"plan_max_model_len": 8192, "plan_gpu_memory_utilization": 0.9, "plan_shutdown_timeout_sec": 0,
 "plan_extra_args": ["--load-format", "dummy"],
 "plan_extra_env": {"VLLM_USE_FLASHINFER_SAMPLER": "0"}}
JSON
facts=()
if ! python3 -c 'import pynvml; pynvml.nvmlInit()' 2>/dev/null; then
  # No nvidia-ml-py on the box: the lent machine's own capture, cut to the cards this box has.
  n=$(nvidia-smi -L | wc -l)
  python3 - "$n" > "$work/facts.json" <<'PY'
import json, sys
facts = json.load(open("tests/fixtures/nvml/h200x2-device.facts.json"))
n = int(sys.argv[1])
facts.update(gpus=facts["gpus"][:n], count=n, pairs=[p for p in facts.get("pairs", []) if max(p["from"], p["to"]) < n])
print(json.dumps(facts))
PY
  facts=(--facts "$work/facts.json")
fi
for spec in "$@"; do
  IFS=: read -r model levels requests <<< "$spec"
  dir="$work/models/$model"
  mkdir -p "$dir"
  cp "tests/fixtures/models/$model/config.json" "$dir/"
  cp "$work"/tiny/tokenizer.json "$work"/tiny/tokenizer_config.json "$work"/tiny/special_tokens_map.json "$dir/"
  start=$(date +%s)
  rc=0
  python3 tools/measure_box.py --model "$dir" --settings "$work/settings.json" "${facts[@]}" \
    --concurrency "$levels" --prompt-words 224 --output-tokens 256 --requests "$requests" --warmup 2 \
    --start-timeout 600 --host "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' _)x$(nvidia-smi -L | wc -l)" \
    --cache-dir "$work/cache" --out "$work/out/$model" "${extra[@]}" || rc=$?
  echo "=== $model: rc=$rc in $(( $(date +%s) - start )) s"
  tar -C "$work/out" -czf "$out/$model.tar.gz" "$model"
done
