"""Depth vs width vs mixed pruning at equal non-embedding parameters: quality and measured speed.

Cuts the source in one shot (`megadrp run` with stages.cut=oneshot, no recovery) to three targets of ~0.6x the
source's non-embedding parameters, then scores the source and the three cuts in one `megadrp eval` (held-out bits
per byte) and measures each one's speed and memory as `megadrp eval --speed` does (megadrp/eval/speed.py, each
model in its own process) twice, in the order source, cuts, then back (ABBA), averaging the two passes so that a
machine whose load drifts during the run does not favour the models measured last; into RUN_DIR/eval.json and
eval.md. One-shot cuts, not recovered models: the quality column says which structure the cut hurts least before
any training, the speed columns what each shape buys on this machine (docs/RESULTS.md, "Which shape to cut").

    python tools/bench_shapes.py --model .cache/models/smollm2-135m --corpus .cache/corpus --run-dir runs/shapes
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megadrp.eval.speed import measure_in_subprocess  # noqa: E402
from megadrp.eval_results import markdown_report  # noqa: E402

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
    p.add_argument("--speed-only", action="store_true", help="keep RUN_DIR/eval.json's quality, measure speed again")
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
    if not args.speed_only:
        run([*megadrp, "eval", "--model", *models, "--corpus", args.corpus, "--seq-length", "256", "--max-windows",
             "8", "--output", out, "--markdown", os.path.splitext(out)[0] + ".md"])
    with open(out, encoding="utf-8") as fh:
        results = json.load(fh)
    folders = dict(m.split("=", 1) for m in models)
    passes: dict[str, list[dict]] = {label: [] for label in folders}
    for label in [*folders, *reversed(folders)]:  # ABBA: a drifting load weighs on every model alike
        print(f"[speed] {label}", flush=True)
        passes[label].append(measure_in_subprocess(folders[label]))
    for label, (a, b) in passes.items():
        results["models"][label]["speed"] = _mean(a, b)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    report = markdown_report(results["models"])
    with open(os.path.splitext(out)[0] + ".md", "w", encoding="utf-8") as fh:
        fh.write(report)
    print(report)
    return 0


def _mean(a: dict, b: dict) -> dict:
    """The two passes' measurement with every throughput and latency averaged (the rest from the first)."""
    out = json.loads(json.dumps(a))
    out["prefill"]["tokens_per_s"] = (a["prefill"]["tokens_per_s"] + b["prefill"]["tokens_per_s"]) / 2
    for d, da, db in zip(out["decode"], a["decode"], b["decode"]):
        d["ms_per_token"] = (da["ms_per_token"] + db["ms_per_token"]) / 2
        d["tokens_per_s"] = 1000 * d["batch"] / d["ms_per_token"]
    out["peak_memory_mb"] = max(a["peak_memory_mb"], b["peak_memory_mb"])
    out["passes"] = [a, b]
    return out


if __name__ == "__main__":
    sys.exit(main())
