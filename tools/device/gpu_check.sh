#!/usr/bin/env bash
# The GPU rows of docs/BENCHMARKS.md (issue "training speed") on one H100/H200, short rows first, so that a
# call cut short still brings back the most:
#   1. the GPU tests (at most 35 s): the kernels' and the fused CE's bf16 parity, and the trainer step under CUDA's
#      sync debug mode (pytest -m gpu, verbose: a timed-out run still shows which passed)
#   2. fused linear + CE against logits-then-CE (15 s): peak memory and time, 8k tokens x 128k vocab (Llama-3-1B's head)
#   3. the real trainer's step (tools/bench_train.py: Trainer, masks, DRO, DeepSpeed, logging), SmolLM2-135M,
#      8 x 2048 tokens, cpt and prune, ZeRO "auto" (stage 1 at world size 1) (45 s)
#   4. the same at the 0.94B LLaMA shape (random weights, SmolLM2's tokenizer), 4 x 2048 tokens: ZeRO "auto"
#      against ZeRO-3 at world size 1 (60 s)
#   5. what time is left: SmolLM2-135M under ZeRO stage 0 (DeepSpeed's per-step work without ZeRO's partitioned
#      optimizer), then with model.compile (torch.compile per decoder layer over the plain-torch masked ops)
# Every row writes its log and JSON under $OUT as it finishes (bench_train.py rewrites its JSON after each of
# its own rows), a row that fails is recorded and skipped, and $OUT/gpu_summary.json sums up the numbers.
# DEADLINE (epoch seconds) cuts every row to the time left; bench_train.py skips its rows that no longer fit.
#
#   DEADLINE=$(( $(date +%s) + 150 )) bash tools/device/gpu_check.sh   # in the repository root on the GPU machine
#   QUICK=1 BENCH_MODEL=DIR bash tools/device/gpu_check.sh   # smoke run on CPU with a tiny HF model folder
#
# On the workplace's device machine, tools/device/device_session.sh brings DeepSpeed, the model and the data,
# and calls this with DEADLINE set (CHECK_S); without DeepSpeed the trainer rows fail (the trainer needs it)
# and are recorded.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/bench/gpu}
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-$(( $(date +%s) + 240 ))}
MODEL=${BENCH_MODEL:-.cache/models/smollm2-135m}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
: > "$OUT/failed.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1

row() {  # row NAME TIMEOUT_S COMMAND...: run one measurement, keep its log, record a failure and go on
  local name=$1 limit=$(( $2 * SCALE )) left=$(( DEADLINE - $(date +%s) - 5 ))
  shift 2
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped, $left s left before DEADLINE"; echo "$name (no time)" >>"$OUT/failed.txt"; return
  fi
  echo "== $name ($limit s): $*"
  if ! timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    echo "$name" >>"$OUT/failed.txt"
    tail -5 "$OUT/$name.log"
  else
    grep -E "^\||step time|fused / unfused|passed|failed| / " "$OUT/$name.log" | tail -14
  fi
  summarise
}

summarise() {  # $OUT/gpu_summary.json from what has finished so far: a call cut short still has one
  $PY - "$OUT" <<'EOF' >/dev/null
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
summary = {"failed": [l.strip() for l in (out / "failed.txt").read_text().splitlines() if l.strip()]}
tests = out / "gpu_tests.log"
if tests.is_file():
    lines = tests.read_text(errors="replace").splitlines()
    summary["gpu_tests"] = {"passed": sum(" PASSED" in l for l in lines), "failed": [l for l in lines if " FAILED" in l],
                            "last": lines[-1] if lines else ""}
for path in sorted(out.glob("*.json")):
    if path.name == "gpu_summary.json":
        continue
    r = json.loads(path.read_text())
    if r.get("benchmark") == "trainer_step":
        summary[path.stem] = {"device": r["device"], "params": r["params"], "ratios": r["ratios"], "rows": [
            {k: row.get(k) for k in ("variant", "mode", "zero_stage", "step_s", "tokens_per_s", "mfu",
                                      "peak_memory_gib", "skipped", "error")} for row in r["rows"]]}
    elif r.get("benchmark") == "lm_head_loss":
        summary[path.stem] = {"device": r["device"], "fp32_logits_gib": r["fp32_logits_bytes"] / 2 ** 30,
                              "peak_unfused_gib": r["results"]["unfused"]["peak_bytes"] / 2 ** 30,
                              "peak_fused_gib": r["results"]["fused"]["peak_bytes"] / 2 ** 30,
                              "time_fused_over_unfused": r["time_ratio_fused_over_unfused"]}
(out / "gpu_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
EOF
}

SCALE=1  # the rows' time caps are sized for the GPU machine (16 idle cores); QUICK=1 on a CPU gets 4x
SEQ=2048; SMALL_MB=8; LARGE_MB=4; TOKENS=8192; HIDDEN=2048; STEPS=(--steps 6 --chunks 2 --warmup 2)
LARGE="hidden_size=2048,intermediate_size=5504,num_attention_heads=16,num_key_value_heads=16,num_hidden_layers=16"
LARGE="$LARGE,head_dim=128,tie_word_embeddings=false"
LARGE_VARIANTS=(--variant auto=deepspeed.config=ds_configs/auto.json --variant zero3=zero_stage=3)
if [ "${QUICK:-0}" = 1 ]; then  # the script's paths on CPU in about a minute: rows 1-4, one variant and mode at 4
  SEQ=32; SMALL_MB=2; LARGE_MB=2; TOKENS=64; HIDDEN=32; STEPS=(--steps 2 --chunks 1 --warmup 1); SCALE=4
  LARGE_VARIANTS=(--variant zero3=zero_stage=3 --modes prune)
  LARGE="hidden_size=96,intermediate_size=192,num_attention_heads=4,num_key_value_heads=4,num_hidden_layers=2"
  LARGE="$LARGE,head_dim=24"
fi
# 1. parity and the sync-free step on the device
row gpu_tests 35 $PY -m pytest -v -p no:cacheprovider -m gpu tests/kernels/test_kernels_gpu.py \
  tests/kernels/test_speed_fused_ce.py tests/tools/test_train_bench.py
# 2. fused CE: Llama-3-1B's head (d 2048, vocab 128256), one 8k-token micro-batch, bf16
row loss_8k_128k 15 $PY tools/bench_loss.py --tokens $TOKENS --hidden $HIDDEN --vocab 128256 --dtype bf16 --reps 3 \
  --out "$OUT/loss_8k_128k.json"
# 3.-6. the trainer's step, each row its own process; --deadline leaves each run the time to write its JSON
BENCH=($PY tools/bench_train.py --model "$MODEL" --seq $SEQ "${STEPS[@]}" --work runs/bench/train_work
       --deadline $(( DEADLINE - 6 )) deepspeed.precision=bf16 logging.log_interval=10 dro.method=drpruning
       dro.update_interval=5)
row train_smollm2 45 "${BENCH[@]}" --micro-batch $SMALL_MB --min-row-s 10 \
  --variant auto=deepspeed.config=ds_configs/auto.json --out "$OUT/train_smollm2.json"
row train_1b 60 "${BENCH[@]}" --shape "$LARGE" --micro-batch $LARGE_MB --min-row-s 12 "${LARGE_VARIANTS[@]}" \
  --out "$OUT/train_1b.json"
[ "${QUICK:-0}" = 1 ] || row train_smollm2_zero0 30 "${BENCH[@]}" --micro-batch $SMALL_MB --min-row-s 10 \
  --variant zero0=zero_stage=0 \
  --out "$OUT/train_smollm2_zero0.json"
[ "${QUICK:-0}" = 1 ] || row train_smollm2_compile 60 "${BENCH[@]}" --micro-batch $SMALL_MB --min-row-s 30 \
  --modes prune,cpt --variant compile=model.compile=true,model.use_kernels=torch --out "$OUT/train_smollm2_compile.json"
cat "$OUT/gpu_summary.json"
