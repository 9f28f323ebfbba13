#!/usr/bin/env bash
# The method comparison's GPU budget (issue "comparison") in one run of <= 9 minutes on one H100/H200, set-up
# included: tools/experiment.py --budget gpu (five methods x 2 seeds, 150 pruning + 100 recovery steps at
# 16 x 512 tokens, bf16, ZeRO stage auto), then the extreme-ratio pair (dress vs the direct one-shot cut) if time
# is left. The final models are also scored on .cache/corpus_unseen (make corpus-unseen) when it is there.
# Outputs are small: results.md / results.json and the per-run eval JSON, copied under $OUT; no weights.
#
#   OUT=/tmp/out bash tools/experiment_gpu.sh       # in the repository root on the GPU machine
#
# Needs the model and corpus `make model corpus` builds (.cache/models/smollm2-135m, .cache/corpus) on the GPU
# machine, and DeepSpeed's wheel in wheels/ as for tools/gpu_check.sh. Not run yet: no GPU was lent to the
# sessions since it was written, and the workplace's device tool carries at most 64 MiB per call while the
# model is 270 MB in bf16 (93 MB as the 4-bit GGUF it is converted from): getting it there takes several
# calls into a machine kept warm between them (docs/RESULTS.md).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/experiment_gpu}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
LIMIT=${LIMIT:-480}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=disabled HF_HUB_OFFLINE=1 OMP_NUM_THREADS=8
mkdir -p "$OUT"
if ! $PY -c "import deepspeed" 2>/dev/null && ls "$WHEELS"/deepspeed-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps "$WHEELS"/*.whl >"$OUT/pip.log" 2>&1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
UNSEEN=.cache/corpus_unseen
[ -f "$UNSEEN/manifest.json" ] || UNSEEN=none  # no network there to build it
start=$(date +%s)
timeout "$LIMIT" $PY tools/experiment.py --budget gpu --unseen-corpus "$UNSEEN" --run-dir runs/experiment_gpu \
  >"$OUT/experiment.log" 2>&1
echo "main comparison: exit $? after $(( $(date +%s) - start )) s" >>"$OUT/status.txt"
left=$(( LIMIT - ($(date +%s) - start) ))
if [ "$left" -gt 60 ]; then
  timeout "$left" $PY tools/experiment.py --budget gpu --methods dress oneshot --target extreme \
    --unseen-corpus "$UNSEEN" --run-dir runs/experiment_gpu_extreme >"$OUT/extreme.log" 2>&1
  echo "extreme ratio: exit $?" >>"$OUT/status.txt"
fi
for d in runs/experiment_gpu runs/experiment_gpu_extreme; do
  [ -d "$d" ] || continue
  mkdir -p "$OUT/$(basename "$d")"
  cp "$d"/results.* "$OUT/$(basename "$d")/" 2>/dev/null
  (cd "$d" && find . -name 'eval*.json' -exec cp --parents {} "$OUT/$(basename "$d")/" \;)
done
tail -3 "$OUT/status.txt"
