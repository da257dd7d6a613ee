#!/usr/bin/env bash
# One-GPU check, under 5 minutes (not run by CI; nothing in the tests needs a GPU):
#   1. jobs/benchmark_generation.py --device cuda: the engine in bfloat16 with CUDA graphs
#      (the engine's defaults on CUDA) against HF generate in bfloat16, the small captioner;
#   2. the same on the random T5 (t5-small shape) and BART (bart-base shape) of the
#      CTranslate2 comparison (jobs/peer_models.py), without the CPU-only peer;
#   3. the caption job on the bundled sample with --set resources.num_gpus=1.
# Prints one JSON line at the end with each step's key figures.
#
#   bash scripts/gpu_check.sh                      # on the GPU machine, from the repository root
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh # the same steps on CPU (float32, no GPUs), to check the logic
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
LOGS=$(mktemp -d -t gpu-check-XXXXXX)
if [[ "$DEVICE" == cuda ]]; then
  DTYPE=bfloat16
  GPUS=1
  BENCH_ROWS=(--batch 64)
else
  DTYPE=float32
  GPUS=0
  BENCH_ROWS=(--batch 8 --rows 16 --runs 1 --max-new-tokens 16)
fi

step() {  # step NAME SECONDS CMD...: run with a time limit, keep its output in $LOGS/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" >&2
  local start=$SECONDS
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1 || {
    local rc=$?
    tail -20 "$LOGS/$name.log" >&2
    echo "$name failed (exit $rc, $((SECONDS - start)) s)" >&2
    exit "$rc"
  }
  echo "$((SECONDS - start))" > "$LOGS/$name.seconds"
  tail -1 "$LOGS/$name.log" >&2
}

step small 70 "$PY" jobs/benchmark_generation.py --device "$DEVICE" --dtype "$DTYPE" "${BENCH_ROWS[@]}"
step t5 70 "$PY" jobs/benchmark_generation.py --device "$DEVICE" --dtype "$DTYPE" --model t5 "${BENCH_ROWS[@]}"
step bart 80 "$PY" jobs/benchmark_generation.py --device "$DEVICE" --dtype "$DTYPE" --model bart "${BENCH_ROWS[@]}"
step caption 60 "$PY" jobs/caption_dataset.py --set "resources.num_gpus=$GPUS" \
  --set "output.uri=$LOGS/caption_out"

"$PY" - "$LOGS" "$DEVICE" <<'PYEOF'
import json
import sys
from pathlib import Path

logs, device = Path(sys.argv[1]), sys.argv[2]
out = {"device": device}
for name in ("small", "t5", "bart"):
    r = json.loads((logs / f"{name}.log").read_text().strip().splitlines()[-1])
    out[name] = {k: r[k] for k in ("ratio", "hf_tokens_per_s", "engine_tokens_per_s", "outputs_identical", "dtype",
                                   "decoder_efficiency", "engine_peak_mib", "hf_peak_mib")}
    out[name]["wall_s"] = int((logs / f"{name}.seconds").read_text())
summary = next(line for line in reversed((logs / "caption.log").read_text().splitlines()) if line.startswith("SUMMARY "))
s = json.loads(summary[len("SUMMARY "):])
out["caption"] = {k: s[k] for k in ("rows_in", "rows_ok", "rows_errored", "seconds", "rows_per_s") if k in s}
out["caption"]["wall_s"] = int((logs / "caption.seconds").read_text())
print(json.dumps(out))
PYEOF
