"""Distillation at equal tokens: continued pretraining of one pruned SmolLM2-135M with distill.alpha 0 / 0.5 / 1.

    python tools/experiment_distill.py --model .cache/models/smollm2-135m --corpus .cache/corpus \
        --run-dir runs/experiment_distill --steps 40 --nproc 1

Stages (each the `megadrp` command a user would run, cached like tools/experiment.py's):
1. the student: a direct cut of the source to the method comparison's target (d 384, 6/2 heads, m 1024,
   24 layers; `megadrp oneshot` on --calibration-batches training batches), written as an HF folder;
2. for each alpha, `megadrp cpt` of that folder for --steps steps with the source as distill.teacher (frozen,
   ZeRO-3, megadrp/distill/teacher.py); same seed, so the same batches in the same order; a constant uniform
   domain mix (dro.method=constant), so the three runs differ only in the loss;
3. `megadrp eval` of the source, the cut and the three finetuned models on the held-out split.
Prints and writes RUN_DIR/results.md / results.json: per-domain bits per byte, average, worst, and each run's
median training tokens/s from its metrics.jsonl (the teacher's cost: the step-time ratio to alpha 0); then,
because runs minutes apart on a shared machine see different loads, the same cost timed interleaved in one
process (plain PyTorch, no DeepSpeed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.comparison import target_overrides  # noqa: E402
from megadrp.recipe import stages as pl  # noqa: E402

ALPHAS = ("0", "0.5", "1.0")
TARGET = {"hidden_size": 384, "num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 1024,
          "num_hidden_layers": 24}


def tokens_per_s(run_dir: str) -> float:
    """Median training throughput of a run's logged steps, step 1 (warm-up) left out."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        recs = [json.loads(line) for line in fh]
    return float(statistics.median(r["tokens_per_s"] for r in recs if r["kind"] == "train" and r["step"] > 1))


def interleaved_costs(student_dir: str, teacher_dir: str, prefix: str, domains: list, seq_length: int,
                      rounds: int) -> dict:
    """Medians over rounds, on one batch, alternated in one process so that the load of a shared machine hits
    every part alike: ``lm_step_s`` = the student's forward + CE + backward; ``teacher_s`` = the teacher's
    no-grad forward; ``kd_step_s`` = the student's forward + blended CE/KD loss + backward (the KD term's own
    cost). A distilling step costs teacher_s + kd_step_s against lm_step_s."""
    import time

    import torch

    from megadrp.data import DomainMixtureSampler, load_domain_datasets
    from megadrp.distill import kd_per_token
    from megadrp.kernels.cross_entropy import token_cross_entropy
    from megadrp.model import load_pretrained

    student, teacher = load_pretrained(student_dir), load_pretrained(teacher_dir).requires_grad_(False)
    sampler = DomainMixtureSampler(load_domain_datasets(prefix, domains, tokenizer=teacher_dir), seq_length, 2,
                                   seed=11, rank=0, world_size=1)
    tokens = sampler.next_batch()["tokens"]
    x, y = tokens[:, :-1], tokens[:, 1:]
    out = {"lm_step_s": [], "teacher_s": [], "kd_step_s": []}
    for _ in range(rounds + 1):  # the first round warms up, not counted
        t0 = time.perf_counter()
        token_cross_entropy(student(x), y).mean().backward()
        t1 = time.perf_counter()
        with torch.no_grad():
            t_logits = teacher(x)
        t2 = time.perf_counter()
        logits = student(x)
        lm = token_cross_entropy(logits, y).mean()
        (0.5 * lm + 0.5 * kd_per_token(logits, t_logits).mean()).backward()
        t3 = time.perf_counter()
        student.zero_grad(set_to_none=True)
        for key, seconds in zip(out, (t1 - t0, t2 - t1, t3 - t2)):
            out[key].append(seconds)
    return {k: float(statistics.median(v[1:])) for k, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pl.add_common_args(p, "runs/experiment_distill", "configs/experiment_smollm2.yaml")
    p.add_argument("--steps", type=int, default=40, help="cpt steps of each arm")
    p.add_argument("--calibration-batches", type=int, default=4)
    p.add_argument("--bench-rounds", type=int, default=5, help="rounds of the interleaved teacher-cost timing")
    args = p.parse_args(argv)
    domains, prefixes = pl.tokenised_corpus(args, "tokenise the corpus")
    pl.banner("the student: a direct cut of the source")
    student = pl.oneshot(args.config, args.run_dir, [
        f"model.path={args.model}", f"data.prefix={prefixes['train']}", f"data.domains=[{', '.join(domains)}]",
        *target_overrides(TARGET), f"dress.calibration_batches={args.calibration_batches}", "data.seq_length=128",
        "export.dtype=float32"])
    common = [f"data.prefix={prefixes['train']}", f"data.domains=[{', '.join(domains)}]", "dro.method=constant",
              "dro.initial_ratio=uniform", f"model.path={student}", f"distill.teacher={args.model}",
              *args.overrides]
    models = {"source": args.model, "cut": student}  # labels: no spaces or "=" (megadrp eval --model LABEL=PATH)
    throughput = {}
    for alpha in ALPHAS:
        pl.banner(f"cpt with distill.alpha={alpha} for {args.steps} steps")
        run_dir = os.path.join(args.run_dir, f"alpha_{alpha}")
        pl.train("cpt", args.config, run_dir, args.steps, args.nproc, [*common, f"distill.alpha={alpha}"])
        throughput[alpha] = tokens_per_s(run_dir)  # same tokens per step in every arm: its inverse is step time
        models[f"alpha-{alpha}"] = pl.export(run_dir, os.path.join(run_dir, "export"))
    pl.banner("held-out evaluation")
    out = pl.evaluate(models, args.corpus, os.path.join(args.run_dir, "eval.json"), args.eval_seq_length,
                      args.eval_windows)
    lines = ["| model | " + " | ".join(domains) + " | average | worst |", "|---|" + "---:|" * (len(domains) + 2)]
    rows = {}
    for name in models:
        bpb = {d: out["models"][name]["domains"][d]["bits_per_byte"] for d in domains}
        worst = max(bpb, key=bpb.get)
        rows[name] = {**bpb, "average": sum(bpb.values()) / len(bpb), "worst": [worst, bpb[worst]]}
        lines.append(f"| {name} | " + " | ".join(f"{bpb[d]:.3f}" for d in domains) +
                     f" | {rows[name]['average']:.3f} | {bpb[worst]:.3f} ({worst}) |")
    base = throughput[ALPHAS[0]]
    lines += ["", "| arm | median tokens/s | step time vs alpha 0 |", "|---|---:|---:|"]
    lines += [f"| alpha {a} | {t:.0f} | {base / t:.2f}x |" for a, t in throughput.items()]
    pl.banner("the teacher's cost, interleaved in one process")
    costs = interleaved_costs(student, args.model, prefixes["train"], domains, 256, args.bench_rounds)
    lines += ["", f"interleaved, {args.bench_rounds} rounds, batch 2 x 256: student LM step "
              f"{costs['lm_step_s']:.2f} s, "
              f"teacher forward {costs['teacher_s']:.2f} s, student KD+LM step {costs['kd_step_s']:.2f} s: a "
              f"distilling step costs x{(costs['teacher_s'] + costs['kd_step_s']) / costs['lm_step_s']:.2f}"]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.run_dir, "results.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    with open(os.path.join(args.run_dir, "results.json"), "w", encoding="utf-8") as fh:
        json.dump({"bpb": rows, "tokens_per_s": throughput, "interleaved_s": costs, "steps": args.steps}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
