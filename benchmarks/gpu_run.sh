#!/usr/bin/env bash
# One prepared run on a GPU machine (16 cores, one large GPU, ~10 minutes, nothing fetched from outside):
# install from the repo, build a small benchmark, train a ResNet-50 and an EfficientNet-Lite0 for one epoch
# each with AMP, score 10,000 images with CPU decode and with GPU decode (nvJPEG in the model actors), run the
# Serve load test, and write every figure (images/s per stage, GPU utilisation) to one JSON file.
#
#   bash benchmarks/gpu_run.sh                # OUT=gpu_run_out; WHEELS=dir installs offline from wheels there
#   OUT=$OUT bash benchmarks/gpu_run.sh       # on the device machine: results come back from $OUT
#
# Each stage has its own time limit (STAGE_S, default 150 s); a stage that fails or runs out records it and the
# run goes on, so the JSON always says what ran. The GPU is sampled once a second with nvidia-smi.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_run_out}
PY=${PYTHON:-python3}
STAGE_S=${STAGE_S:-150}
mkdir -p "$OUT"
STAGES="$OUT/stages.jsonl"
: > "$STAGES"
export PYTHONUNBUFFERED=1 RAY_TRAIN_V2_ENABLED=1

stage() {  # stage NAME CMD...: run with a time limit, record wall time and exit code
  local name=$1; shift
  local start end rc
  start=$(date +%s.%N)
  timeout "$STAGE_S" "$@" > "$OUT/$name.log" 2>&1; rc=$?
  end=$(date +%s.%N)
  printf '{"stage": "%s", "rc": %d, "wall_s": %.1f}\n' "$name" "$rc" "$(echo "$end - $start" | bc)" >> "$STAGES"
  echo "$name: rc=$rc"
}

if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 \
    > "$OUT/gpu_util.csv" 2> /dev/null &
  SMI=$!
fi

stage install "$PY" -m pip install -q ${WHEELS:+--no-index --find-links "$WHEELS"} -e .
stage version "$PY" -m raydetect.cli version
stage benchmark "$PY" -m raydetect.cli data build-benchmark "$OUT/bench" --n-pairs 400 \
  --generators esrgan,waifu2x --sizes 224 --test-sizes 224,448
for backbone in resnet50 efficientnet_lite0; do
  stage "train_$backbone" "$PY" -m raydetect.cli train "$OUT/bench" --backbone "$backbone" --weights none \
    --epochs 1 --cv 1 --output "$OUT/models/$backbone" --set precision=auto --set workdir="$OUT/work"
done
for where in cpu model; do
  stage "score_$where" "$PY" benchmarks/score_throughput.py --n 10000 --side 512 --backbone resnet50 \
    --set "score.preprocess_on=$where" --json "$OUT/score_$where.json"
done
for where in ingress model; do  # JPEG decode in the HTTP ingress (PIL) or batched in the model replica (nvJPEG)
  stage "serve_load_$where" "$PY" benchmarks/serve_load.py --backbone resnet50 --requests 256 --rounds 1 \
    --num-cpus 16 --replica-cpus 4 --preprocess-on "$where" --json "$OUT/serve_load_$where.json"
done

[ -n "${SMI:-}" ] && kill "$SMI" 2> /dev/null
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
figures = {"stages": [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]}
for name in ("score_cpu", "score_model", "serve_load_ingress", "serve_load_model"):
    path = out / f"{name}.json"
    figures[name] = json.loads(path.read_text()) if path.exists() else None
util = out / "gpu_util.csv"
if util.exists():
    rows = [line.split(",") for line in util.read_text().splitlines() if line.count(",") == 2]
    busy = [float(r[1]) for r in rows]
    figures["gpu"] = {"samples": len(busy), "mean_util_pct": sum(busy) / max(1, len(busy)),
                      "max_memory_mib": max((float(r[2]) for r in rows), default=0.0)}
(out / "gpu_run.json").write_text(json.dumps(figures, indent=2))
print(json.dumps(figures["stages"], indent=1))
PY
