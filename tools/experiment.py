"""The papers' comparison at small scale: same source, target shape and token budget for every method.

    uniform    prune with a constant uniform domain mix
    sheared    prune with Sheared-LLaMA's dynamic batch loading (exponentiated excess-loss update)
    drpruning  prune with DRPruning's chi-square DRO (dynamic reference loss and ratio)
    dress      DReSS: select units up front, regularise them away, cut (reweighting as drpruning)

Each method runs `--steps` steps of its first phase, then (with `--cpt-steps`) the same continued
pretraining of its exported model; its final model lands in RUN_DIR/METHOD/export/ with its eval.json
beside it. The table (per-domain bits per byte, average, worst) is printed and written to
RUN_DIR/results.md and RUN_DIR/results.json.

    python tools/experiment.py --model .cache/models/smollm2-135m --corpus .cache/corpus --run-dir runs/experiment
    # on a GPU: --nproc 1 --device cuda --steps 400 --cpt-steps 200 deepspeed.config=ds_configs/zero3_bf16.json \
    #           deepspeed.precision=bf16 data.seq_length=512 optim.micro_batch_size=16
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megadrp.experiments import pipeline as pl  # noqa: E402

METHODS = {
    "uniform": ("prune", ["dro.method=constant"]),
    "sheared": ("prune", ["dro.method=sheared"]),
    "drpruning": ("prune", ["dro.method=drpruning"]),
    "dress": ("dress", ["dro.method=drpruning"]),  # + dress.regularize_steps = --steps (run_method)
}


def run_method(name: str, args, prefixes: dict, domains: list[str]) -> str:
    mode, method_overrides = METHODS[name]
    base = os.path.join(args.run_dir, name)
    common = [f"data.prefix={prefixes['train']}", f"data.eval_prefix={prefixes['heldout']}",
              f"data.domains=[{', '.join(domains)}]", "dro.initial_ratio=uniform", *method_overrides,
              *args.overrides]
    pl.banner(f"{name}: {mode} for {args.steps} steps")
    first = os.path.join(base, "prune")
    first_overrides = [f"model.path={args.model}", *common]
    if mode == "dress":  # the penalty reaches its final value at the last step, so the cut is lossless
        first_overrides.append(f"dress.regularize_steps={args.steps}")
    pl.train(mode, args.config, first, args.steps, args.nproc, first_overrides)
    if mode == "dress":  # the dress mode writes the cut model itself
        pruned = pl.copy_folder(os.path.join(first, "pruned"), os.path.join(first, "export"))
    else:
        pruned = pl.export(first, os.path.join(first, "export"))
    final = os.path.join(base, "export")
    if args.cpt_steps > 0:
        pl.banner(f"{name}: continued pretraining for {args.cpt_steps} steps")
        cpt = os.path.join(base, "cpt")
        pl.train("cpt", args.config, cpt, args.cpt_steps, args.nproc, [f"model.path={pruned}", *common])
        pl.export(cpt, final)
    else:
        pl.copy_folder(pruned, final)
    return final


def results_table(results: dict, domains: list[str]) -> str:
    head = "| model | " + " | ".join(domains) + " | average | worst |"
    rows = [head, "|" + "---|" * (len(domains) + 3)]
    for label, res in results.items():
        cells = [f"{res['domains'][d]['bits_per_byte']:.3f}" for d in domains]
        worst = res["worst"]
        rows.append(f"| {label} | " + " | ".join(cells) +
                    f" | {res['average']['bits_per_byte']:.3f} | {worst['bits_per_byte']:.3f} ({worst['domain']}) |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    pl.add_common_args(p, run_dir="runs/experiment", config="configs/experiment_smollm2.yaml")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--steps", type=int, default=40, help="steps of the pruning / regularisation phase")
    p.add_argument("--cpt-steps", type=int, default=0, help="steps of continued pretraining after export")
    p.add_argument("--device", default=None, help="evaluation device (default: cuda if available)")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        domains, prefixes = pl.tokenised_corpus(args, "tokenise the corpus")
        evals = {}
        source = pl.evaluate({"source": args.model}, args.corpus, os.path.join(args.run_dir, "source_eval.json"),
                             args.eval_seq_length, args.eval_windows, args.device)
        evals["source (unpruned)"] = source["models"]["source"]
        for name in args.methods:
            final = run_method(name, args, prefixes, domains)
            res = pl.evaluate({name: final}, args.corpus, os.path.join(args.run_dir, name, "eval.json"),
                              args.eval_seq_length, args.eval_windows, args.device)
            evals[name] = res["models"][name]
    except pl.StageFailed as err:
        print(f"experiment: {err}", file=sys.stderr)
        return 1
    table = results_table(evals, domains)
    setup = (f"steps={args.steps} cpt_steps={args.cpt_steps} nproc={args.nproc} config={args.config} "
             f"overrides={' '.join(args.overrides) or '-'}; eval: {args.eval_windows} windows x "
             f"{args.eval_seq_length} tokens per domain; {time.time() - t0:.0f} s")
    with open(os.path.join(args.run_dir, "results.md"), "w", encoding="utf-8") as fh:
        fh.write(f"Bits per byte on the held-out split (lower is better).\n\n{table}\n\n{setup}\n")
    with open(os.path.join(args.run_dir, "results.json"), "w", encoding="utf-8") as fh:
        json.dump({"setup": setup, "results": evals}, fh, indent=1)
    print("\n" + table + "\n\n" + setup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
