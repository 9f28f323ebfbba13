#!/usr/bin/env bash
# The GPU rows of docs/BENCHMARKS.md (issue "speed") in one run of a few minutes on one H100/H200:
#   1. SmolLM2-135M prune vs dense step, MFU: plain torch (fused and unfused CE), and DeepSpeed under ZeRO stage
#      "auto" (stage 1 here)
#   2. 0.94B LLaMA shape prune vs dense, MFU: plain torch, DeepSpeed ZeRO-3 and ZeRO "auto" at world size 1
#   3. fused linear + CE against logits-then-CE: peak memory and time, 8k tokens x 128k vocab (Llama-3-1B head)
#   4. the GPU parity tests of the kernels and of the fused CE (pytest -m gpu)
# Every row writes its JSON under $OUT (the device tool's output folder; default runs/bench/gpu), a summary of
# the numbers goes to $OUT/gpu_summary.json, and a row that fails is recorded and skipped, not fatal.
#
#   bash tools/device/gpu_check.sh                       # in the repository root on the GPU machine
#   STEPS=4 bash tools/device/gpu_check.sh               # fewer timed steps
#   QUICK=1 bash tools/device/gpu_check.sh               # smoke run of the script itself on CPU (tiny shapes)
#
# On the workplace's device machine, tools/device/device_session.sh brings DeepSpeed (not in the GPU image), the model
# and the data, and calls this; without DeepSpeed the DeepSpeed rows are skipped. DEADLINE (epoch seconds) cuts
# every row's time limit to what is left, and skips the rows that no longer fit.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/bench/gpu}
PY=${PYTHON:-python3}
STEPS=${STEPS:-6}
DEADLINE=${DEADLINE:-$(( $(date +%s) + 900 ))}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=disabled HF_HUB_OFFLINE=1
mkdir -p "$OUT"
: > "$OUT/failed.txt"

HAVE_DS=0
$PY -c "import deepspeed" 2>/dev/null && HAVE_DS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1

row() {  # row NAME TIMEOUT_S COMMAND...: run one measurement, keep its log, record a failure and go on
  local name=$1 limit=$2 left=$(( DEADLINE - $(date +%s) - 10 ))
  shift 2
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "== $name: skipped, $left s left before DEADLINE"; echo "$name (no time)" >>"$OUT/failed.txt"; return
  fi
  echo "== $name: $*"
  if ! timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    echo "$name" >>"$OUT/failed.txt"
    tail -5 "$OUT/$name.log"
  else
    grep -E "^\||step time|fused / unfused|passed|failed" "$OUT/$name.log" | tail -12
  fi
}

BENCH=(tools/bench_train.py --precision bf16 --steps "$STEPS" --warmup 2 --rounds 1)
SMALL=smollm2-135m; LARGE=llama-1b; SEQ=2048; TOKENS=8192; HIDDEN=2048
if [ "${QUICK:-0}" = 1 ]; then
  BENCH=(tools/bench_train.py --precision bf16 --steps 1 --warmup 1 --rounds 1); SMALL=tiny; LARGE=tiny; SEQ=32
  TOKENS=64; HIDDEN=32
fi
# 1. SmolLM2-135M: 8 x 2048 tokens per step, tied 49k-vocab head
row smollm2_torch 150 $PY "${BENCH[@]}" --shape $SMALL --seq $SEQ --micro-batch 8 --no-deepspeed \
  --out "$OUT/smollm2_torch.json"
row smollm2_torch_unfused_ce 150 $PY "${BENCH[@]}" --shape $SMALL --seq $SEQ --micro-batch 8 --no-deepspeed \
  --unfused-ce --out "$OUT/smollm2_torch_unfused_ce.json"
if [ $HAVE_DS = 1 ]; then
  row smollm2_zero_auto 150 $PY "${BENCH[@]}" --shape $SMALL --seq $SEQ --micro-batch 8 --zero-stage auto \
    --out "$OUT/smollm2_zero_auto.json"
fi
# 2. 0.94B: 4 x 2048 tokens per step
row llama1b_torch 180 $PY "${BENCH[@]}" --shape $LARGE --seq $SEQ --micro-batch 4 --no-deepspeed \
  --out "$OUT/llama1b_torch.json"
if [ $HAVE_DS = 1 ]; then
  row llama1b_zero3 180 $PY "${BENCH[@]}" --shape $LARGE --seq $SEQ --micro-batch 4 --zero-stage 3 \
    --out "$OUT/llama1b_zero3.json"
  row llama1b_zero_auto 180 $PY "${BENCH[@]}" --shape $LARGE --seq $SEQ --micro-batch 4 --zero-stage auto \
    --out "$OUT/llama1b_zero_auto.json"
fi
# 3. fused CE: Llama-3-1B's head (d 2048, vocab 128256), one 8k-token micro-batch, bf16
row loss_8k_128k 120 $PY tools/bench_loss.py --tokens $TOKENS --hidden $HIDDEN --vocab 128256 --dtype bf16 --reps 5 \
  --out "$OUT/loss_8k_128k.json"
# 4. parity on the device
row gpu_tests 240 $PY -m pytest -q -m gpu tests/kernels/test_kernels_gpu.py tests/kernels/test_speed_fused_ce.py

$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
summary = {"failed": [l.strip() for l in (out / "failed.txt").read_text().splitlines() if l.strip()]}
for path in sorted(out.glob("*.json")):
    if path.name == "gpu_summary.json":
        continue
    r = json.loads(path.read_text())
    if r.get("benchmark") == "train_step":
        summary[path.stem] = {"device": r["device"], "zero_stage": r["zero_stage"], "zero_reason": r.get("zero_reason"),
                              "prune_mfu": r["results"]["prune"]["mfu"], "cpt_mfu": r["results"]["cpt"]["mfu"],
                              "prune_tokens_per_s": r["results"]["prune"]["tokens_per_s"],
                              "prune_over_cpt": r["ratio_prune_over_cpt"]}
    elif r.get("benchmark") == "lm_head_loss":
        summary[path.stem] = {"device": r["device"], "fp32_logits_gib": r["fp32_logits_bytes"] / 2 ** 30,
                              "peak_unfused_gib": r["results"]["unfused"]["peak_bytes"] / 2 ** 30,
                              "peak_fused_gib": r["results"]["fused"]["peak_bytes"] / 2 ** 30,
                              "time_fused_over_unfused": r["time_ratio_fused_over_unfused"]}
(out / "gpu_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
EOF
