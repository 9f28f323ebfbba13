#!/usr/bin/env bash
# The method comparison's GPU budget (issue "comparison") on one H100/H200 in LIMIT seconds (default 480):
# tools/experiment.py --budget gpu (five methods x 2 seeds at 16 x 512 tokens, bf16, ZeRO stage auto), seed-major
# under --time-limit, so a budget too small for every run still compares every method at the first seed and says
# which runs it left out; then the extreme-ratio pair (dress vs the direct one-shot cut) if EXTREME_MIN_S (120)
# seconds are left.
# The final models are also scored on .cache/corpus_unseen (make corpus-unseen) when it is there.
#
#   LIMIT=480 bash tools/device/experiment_gpu.sh        # in the repository root of a machine with a GPU
#
# On the workplace's device machine, tools/device/device_session.sh brings the model, data and wheels and calls this.
# EXPERIMENT_ARGS_FILE, one argument per line, adds to both runs' arguments (the CPU rehearsal in
# tests/tools/test_device_session.py points them at a tiny model). Outputs: runs/experiment_gpu{,_extreme}/results.{md,json}, logs under $OUT.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/experiment_gpu}
PY=${PYTHON:-python3}
LIMIT=${LIMIT:-480}
EXTRA=()
[ -n "${EXPERIMENT_ARGS_FILE:-}" ] && mapfile -t EXTRA <"$EXPERIMENT_ARGS_FILE"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=disabled HF_HUB_OFFLINE=1 OMP_NUM_THREADS=8
mkdir -p "$OUT"
UNSEEN=.cache/corpus_unseen
[ -f "$UNSEEN/manifest.json" ] || UNSEEN=none  # no network on the device machine to build it
start=$(date +%s)
# --time-limit stops starting runs; timeout is the backstop for a run that overruns its estimate
timeout $(( LIMIT + 60 )) $PY tools/experiment.py --budget gpu --time-limit "$LIMIT" --unseen-corpus "$UNSEEN" \
  --run-dir runs/experiment_gpu "${EXTRA[@]}" >"$OUT/experiment.log" 2>&1
echo "main comparison: exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/status.txt"
left=$(( LIMIT - ($(date +%s) - start) ))
if [ "$left" -gt "${EXTREME_MIN_S:-120}" ]; then
  timeout $(( left + 30 )) $PY tools/experiment.py --budget gpu --time-limit "$left" --methods dress oneshot \
    --target extreme --unseen-corpus "$UNSEEN" --run-dir runs/experiment_gpu_extreme "${EXTRA[@]}" \
    >"$OUT/extreme.log" 2>&1
  echo "extreme ratio: exit $?" | tee -a "$OUT/status.txt"
else
  echo "extreme ratio: not run ($left s left)" | tee -a "$OUT/status.txt"
fi
