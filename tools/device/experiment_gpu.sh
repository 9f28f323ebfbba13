#!/usr/bin/env bash
# The method comparison's GPU budget on one H100/H200 in LIMIT seconds (default 500): tools/experiment.py
# --budget gpu, i.e. the five methods x 2 seeds at the extreme target (0.29x non-embedding; DReSS against the
# direct one-shot cut is among them), 5 runs at once, each one process, sized before it starts from
# configs/gpu_timings.json (a plan that does not fit is refused, naming what to cut). Then the 0.60x target as a
# second arm, if its own plan fits the seconds left. Results are copied under PUBLISH (the device session's $OUT)
# after every finished run, so a call cut short still brings back every run finished by then.
#
#   LIMIT=500 bash tools/device/experiment_gpu.sh        # in the repository root of a machine with a GPU
#
# On the workplace's device machine, tools/device/device_session.sh brings the model, data and wheels and calls this.
# EXPERIMENT_ARGS_FILE, one argument per line, adds to both arms' arguments (the CPU rehearsal in
# tests/tools/test_device_session.py points them at a tiny model). Outputs: runs/experiment_gpu{,_060}/results.{md,json},
# logs under $OUT.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/experiment_gpu_out}
PUBLISH=${PUBLISH:-$OUT}
PY=${PYTHON:-python3}
LIMIT=${LIMIT:-500}
EXTRA=()
[ -n "${EXPERIMENT_ARGS_FILE:-}" ] && mapfile -t EXTRA <"$EXPERIMENT_ARGS_FILE"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=disabled HF_HUB_OFFLINE=1
mkdir -p "$OUT" "$PUBLISH"
UNSEEN=.cache/corpus_unseen
[ -f "$UNSEEN/manifest.json" ] || UNSEEN=none  # no network on the device machine to build it
start=$(date +%s)
# --time-limit starts no run it does not expect to finish and kills one still running at the limit; timeout is
# the backstop
timeout $(( LIMIT + 30 )) $PY tools/experiment.py --budget gpu --time-limit "$LIMIT" --unseen-corpus "$UNSEEN" \
  --run-dir runs/experiment_gpu --publish "$PUBLISH/experiment_gpu" "${EXTRA[@]}" >"$OUT/experiment.log" 2>&1
echo "extreme target (0.29x), five methods: exit $? after $(( $(date +%s) - start )) s" | tee -a "$OUT/status.txt"
left=$(( LIMIT - ($(date +%s) - start) ))
if [ "$left" -gt "${SECOND_ARM_MIN_S:-60}" ]; then  # its own plan decides whether it fits (exit 2: it does not)
  timeout $(( left + 20 )) $PY tools/experiment.py --budget gpu --target default --time-limit "$left" \
    --unseen-corpus "$UNSEEN" --run-dir runs/experiment_gpu_060 --publish "$PUBLISH/experiment_gpu_060" \
    "${EXTRA[@]}" >"$OUT/second_arm.log" 2>&1
  echo "0.60x target: exit $? ($left s were left; exit 2: its plan did not fit them)" | tee -a "$OUT/status.txt"
else
  echo "0.60x target: not run ($left s left)" | tee -a "$OUT/status.txt"
fi
