"""`make demo`: prune the real SmolLM2-135M on the real six-domain corpus, export, evaluate, report.

Every stage runs the `megadrp` subcommand a user would, and is skipped when its output is already complete
(see megadrp/experiments/pipeline.py), so a second `make demo` only prints where everything is. The model and the corpus
are made and cached by `make model` / `make corpus` before this script runs.

    python tools/demo.py --model .cache/models/smollm2-135m --corpus .cache/corpus --run-dir runs/demo
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from megadrp.experiments import pipeline as pl  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pl.add_common_args(p, run_dir="runs/demo", config="configs/demo_smollm2.yaml")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        domains, prefixes = pl.tokenised_corpus(
            args, "1/5 tokenise the corpus into Megatron .bin/.idx, one pair per domain and split")

        pl.banner(f"2/5 prune with DRPruning's DRO on {args.nproc} CPU ranks under ZeRO-3")
        with open(args.config, encoding="utf-8") as fh:
            max_steps = yaml.safe_load(fh)["optim"]["max_steps"]
        pl.train("prune", args.config, args.run_dir, max_steps, args.nproc,
                 [f"model.path={args.model}", f"data.prefix={prefixes['train']}",
                  f"data.eval_prefix={prefixes['heldout']}", f"data.domains=[{', '.join(domains)}]",
                  *args.overrides])

        pl.banner("3/5 export the pruned model to a dense Hugging Face folder")
        export_dir = pl.export(args.run_dir, os.path.join(args.run_dir, "export"))

        pl.banner("4/5 evaluate the source and the pruned model per domain on the held-out split")
        eval_json = os.path.join(args.run_dir, "eval.json")
        pl.evaluate({"source": args.model, "pruned": export_dir}, args.corpus, eval_json,
                    seq_length=args.eval_seq_length, max_windows=args.eval_windows)

        pl.banner("5/5 report")
        pl.run(pl.megadrp("report", args.run_dir, "--output", os.path.join(args.run_dir, "report")))
    except pl.StageFailed as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1

    print(f"\nDone in {time.time() - t0:.0f} s. Everything is under {args.run_dir}/:")
    print(f"  exported model : {export_dir}/  (AutoModelForCausalLM.from_pretrained loads it)")
    print(f"  evaluation     : {eval_json} and eval.md (per domain: loss, perplexity, bits per byte)")
    print(f"  report         : {args.run_dir}/report/summary.md and its plots")
    print(f"  metrics        : {args.run_dir}/metrics.jsonl; checkpoints in {args.run_dir}/checkpoints/")
    md = os.path.join(args.run_dir, "eval.md")
    if os.path.exists(md):
        print("\n" + open(md, encoding="utf-8").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
