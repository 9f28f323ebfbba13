"""`make demo`: cut the real SmolLM2-135M in one shot, recover it under DRO (distillation optional), export, evaluate.

Every stage runs the `megadrp` subcommand a user would, and is skipped when its output is already complete
(see megadrp/experiments/pipeline.py), so a second `make demo` only prints where everything is. The model and the corpus
are made and cached by `make model` / `make corpus` before this script runs. Why this method (and not the learned
masks of `megadrp prune`) for a 20-minute CPU budget: docs/RESULTS.md, "The demo's method".

    python tools/demo.py --model .cache/models/smollm2-135m --corpus .cache/corpus --run-dir runs/demo
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
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
            args, "1/6 tokenise the corpus into Megatron .bin/.idx, one pair per domain and split")
        data = [f"model.path={args.model}", f"data.prefix={prefixes['train']}",
                f"data.eval_prefix={prefixes['heldout']}", f"data.domains=[{', '.join(domains)}]"]

        pl.banner("2/6 cut the source in one shot to the target shape (activation importance, all six domains)")
        pruned = pl.oneshot(args.config, args.run_dir, [*data, *args.overrides])

        pl.banner(f"3/6 recover the cut model with DRPruning's DRO on {args.nproc} CPU ranks under ZeRO-3")
        with open(args.config, encoding="utf-8") as fh:
            max_steps = yaml.safe_load(fh)["optim"]["max_steps"]
        recover = os.path.join(args.run_dir, "recover")
        pl.train("cpt", args.config, recover, max_steps, args.nproc,
                 [*data, f"model.path={pruned}", f"distill.teacher={args.model}", *args.overrides])

        pl.banner("4/6 export the recovered model to a dense Hugging Face folder")
        export_dir = pl.export(recover, os.path.join(args.run_dir, "export"))

        pl.banner("5/6 evaluate the source, the one-shot cut and the recovered model per domain on the held-out "
                  "split, and on text no domain holds")
        eval_json = os.path.join(args.run_dir, "eval.json")
        models = {"source": args.model, "oneshot": pruned, "pruned": export_dir}
        pl.evaluate(models, args.corpus, eval_json, seq_length=args.eval_seq_length, max_windows=args.eval_windows)
        unseen_json = os.path.join(args.run_dir, "eval_unseen.json")
        pl.evaluate(models, None, unseen_json, seq_length=args.eval_seq_length, max_windows=args.eval_windows,
                    texts={"textwrap.py": textwrap.__file__})

        pl.banner("6/6 report")
        pl.run(pl.megadrp("report", recover, "--output", os.path.join(args.run_dir, "report")))
    except pl.StageFailed as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1

    print(f"\nDone in {time.time() - t0:.0f} s. Everything is under {args.run_dir}/:")
    print(f"  exported model : {export_dir}/  (AutoModelForCausalLM.from_pretrained loads it)")
    print(f"  one-shot cut   : {pruned}/  (before recovery)")
    print(f"  evaluation     : {eval_json} and eval.md (per domain: loss, perplexity, bits per byte); "
          f"{unseen_json} (CPython's textwrap.py, in no domain of the corpus)")
    print(f"  report         : {args.run_dir}/report/summary.md and its plots")
    print(f"  metrics        : {recover}/metrics.jsonl; checkpoints in {recover}/checkpoints/")
    for md in (os.path.join(args.run_dir, "eval.md"), os.path.join(args.run_dir, "eval_unseen.md")):
        if os.path.exists(md):
            print("\n" + open(md, encoding="utf-8").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
