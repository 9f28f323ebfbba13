"""Depth vs width vs mixed pruning at equal non-embedding parameters: quality and measured speed.

Cuts the source in one shot (`megadrp run` with stages.cut=oneshot, no recovery) to three targets of ~0.6x the
source's non-embedding parameters, then scores the source and the three cuts in one `megadrp eval --speed` (held-out
bits per byte; prefill and decode speed, peak memory, each model in its own process) into RUN_DIR/eval.json and
eval.md. One-shot cuts, not recovered models: the quality column says which structure the cut hurts least before
any training, the speed columns what each shape buys on this machine (docs/RESULTS.md, "Which shape to cut").

    python tools/bench_shapes.py --model .cache/models/smollm2-135m --corpus .cache/corpus --run-dir runs/shapes
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

# SmolLM2-135M: 30 layers of 576 wide, 9 query / 3 KV heads of 64, FFN 1536; 106.2M non-embedding parameters.
TARGETS = {
    "width": "{num_attention_heads: 6, num_key_value_heads: 2, intermediate_size: 880}",  # 63.3M: the demo's cut
    "depth": "{num_hidden_layers: 18}",  # 63.7M
    "mixed": "{num_hidden_layers: 24, intermediate_size: 1024}",  # 63.7M
}


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"bench_shapes: failed: {' '.join(cmd)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=".cache/models/smollm2-135m")
    p.add_argument("--corpus", default=".cache/corpus")
    p.add_argument("--config", default="configs/demo_smollm2.yaml", help="recipe whose calibration and data apply")
    p.add_argument("--run-dir", default="runs/shapes")
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    args = p.parse_args(argv)
    megadrp = [sys.executable, "-m", "megadrp"]
    models = [f"source={args.model}"]
    for name in args.targets:
        run_dir = os.path.join(args.run_dir, name)
        run([*megadrp, "run", "--config", args.config, f"run_dir={run_dir}", f"model.path={args.model}",
             f"stages.corpus={args.corpus}", "stages.cut=oneshot", "stages.recovery_steps=0", "stages.evaluate=false",
             "stages.report=false", f"pruning.target={TARGETS[name]}"])
        models.append(f"{name}={os.path.join(run_dir, 'pruned')}")
    out = os.path.join(args.run_dir, "eval.json")
    run([*megadrp, "eval", "--model", *models, "--corpus", args.corpus, "--seq-length", "256", "--max-windows", "8",
         "--speed", "--output", out, "--markdown", os.path.splitext(out)[0] + ".md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
