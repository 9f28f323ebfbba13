"""`make demo`: prune the real SmolLM2-135M on the real six-domain corpus, export, evaluate, report.

Every stage runs the same `megadrp` subcommand a user would, in its own process, and is skipped when its
output is already there and complete, so a second `make demo` only prints where everything is. The model
and the corpus are made (and cached) by `make model` / `make corpus` before this script runs.

    python tools/demo.py --model .cache/models/smollm2-135m --corpus .cache/corpus --run-dir runs/demo
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage(title: str):
    print(f"\n=== {title} ===", flush=True)


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"demo: stage failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                 "Fix the error above and run `make demo` again: finished stages are kept.")
    print(f"    ({time.time() - t0:.0f} s)", flush=True)


def megadrp(*args: str) -> list[str]:
    return [sys.executable, "-m", "megadrp", *args]


def domains_of(corpus: str) -> list[str]:
    with open(os.path.join(corpus, "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    names = manifest.get("domains", manifest)
    return sorted(names) if isinstance(names, dict) else list(names)


def preprocess(corpus: str, model: str, bin_dir: str, domains: list[str]) -> tuple[str, str]:
    stage("1/5 tokenise the corpus into Megatron .bin/.idx (per domain)")
    prefixes = {}
    for split in ("train", "heldout"):
        prefix = os.path.join(bin_dir, split)
        prefixes[split] = prefix
        if all(os.path.exists(f"{prefix}_{d}.idx") for d in domains):
            print(f"cached: {prefix}_*.bin/.idx")
            continue
        inputs = [os.path.join(corpus, split, f"{d}.jsonl") for d in domains]
        run(megadrp("preprocess", "--input", *inputs, "--output-prefix", prefix, "--tokenizer", model,
                    "--append-eod", "--per-domain", "--workers", "2"))
    return prefixes["train"], prefixes["heldout"]


def latest_step(run_dir: str) -> int:
    steps = [int(p.rsplit("_", 1)[1]) for p in glob.glob(os.path.join(run_dir, "checkpoints", "step_*"))
             if p.rsplit("_", 1)[1].isdigit()]
    return max(steps, default=-1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=".cache/models/smollm2-135m")
    p.add_argument("--corpus", default=".cache/corpus")
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--config", default="configs/demo_smollm2.yaml")
    p.add_argument("--nproc", type=int, default=2, help="CPU ranks (ZeRO-3 over gloo)")
    p.add_argument("--eval-windows", type=int, default=8, help="held-out windows of 256 tokens per domain")
    p.add_argument("overrides", nargs="*", help="extra dotted config overrides for the prune run")
    args = p.parse_args(argv)
    os.chdir(ROOT)
    t0 = time.time()
    domains = domains_of(args.corpus)
    model_name = os.path.basename(os.path.normpath(args.model))
    train_prefix, heldout_prefix = preprocess(args.corpus, args.model, os.path.join(".cache", "bin", model_name),
                                              domains)

    stage(f"2/5 prune with DRPruning's DRO on {args.nproc} CPU ranks under ZeRO-3")
    import yaml
    with open(args.config, encoding="utf-8") as fh:
        max_steps = yaml.safe_load(fh)["optim"]["max_steps"]
    overrides = [f"model.path={args.model}", f"data.prefix={train_prefix}", f"data.eval_prefix={heldout_prefix}",
                 f"data.domains=[{', '.join(domains)}]", f"run_dir={args.run_dir}", *args.overrides]
    if latest_step(args.run_dir) >= max_steps:
        print(f"cached: {args.run_dir}/checkpoints/step_{latest_step(args.run_dir)} (finished)")
    else:
        run(megadrp("prune", "--config", args.config, "--nproc", str(args.nproc), "--resume", "auto", *overrides))

    stage("3/5 export the pruned model to a dense Hugging Face folder")
    export_dir = os.path.join(args.run_dir, "export")
    if os.path.exists(os.path.join(export_dir, "config.json")) and \
            os.path.getmtime(os.path.join(export_dir, "config.json")) > os.path.getmtime(
                os.path.join(args.run_dir, "checkpoints")):
        print(f"cached: {export_dir}")
    else:
        run(megadrp("export", args.run_dir, "--output", export_dir, "--dtype", "float32"))

    stage("4/5 evaluate source and pruned model per domain on the held-out split")
    eval_json = os.path.join(args.run_dir, "eval.json")
    eval_md = os.path.join(args.run_dir, "eval.md")
    if os.path.exists(eval_json) and os.path.getmtime(eval_json) > os.path.getmtime(
            os.path.join(export_dir, "config.json")):
        print(f"cached: {eval_json}")
    else:
        run(megadrp("eval", "--model", f"source={args.model}", f"pruned={export_dir}", "--corpus", args.corpus,
                    "--seq-length", "256", "--max-windows", str(args.eval_windows), "--output", eval_json,
                    "--markdown", eval_md))

    stage("5/5 report")
    run(megadrp("report", args.run_dir, "--output", os.path.join(args.run_dir, "report")))

    print(f"\nDone in {time.time() - t0:.0f} s. Everything is under {args.run_dir}/:")
    print(f"  exported model : {export_dir}/  (AutoModelForCausalLM.from_pretrained loads it)")
    print(f"  evaluation     : {eval_json}  ({eval_md})")
    print(f"  report         : {args.run_dir}/report/summary.md and plots")
    print(f"  metrics        : {args.run_dir}/metrics.jsonl, checkpoints in {args.run_dir}/checkpoints/")
    if os.path.exists(eval_md):
        print("\n" + open(eval_md, encoding="utf-8").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
