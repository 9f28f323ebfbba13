"""The papers' comparison at small scale: same source, target shape, token budget and seeds for every method.

    uniform    prune with learned masks, a constant uniform domain mix
    sheared    prune with learned masks, Sheared-LLaMA's dynamic batch loading (held-out losses at its interval)
    drpruning  prune with learned masks, DRPruning's chi-square DRO (dynamic reference loss and ratio)
    dress      DReSS: select units up front, regularise them away, cut (reweighting as drpruning)
    oneshot    Minitron-style: activation importance in one forward pass, cut (no first-phase training)
    oneshot_uniform, oneshot_sheared
               the same one-shot cut, recovered under uniform mixing / Sheared-LLaMA's rule instead of
               DRPruning's: the domain rule's effect on recovery, with the structure held fixed

Each method runs `--steps` steps of its first phase (none for oneshot), then `--cpt-steps` steps of the same
recovery of its cut model (continued pretraining under the method's own domain rule, with distillation from
the source when `--distill-alpha` > 0), once per seed of `--seeds`. Every cut model is evaluated before and
after recovery, every final model and the source also on the held-out split of `--unseen-corpus`: domains no
run trained on (built from configs/unseen_sources.yaml when missing), for DRPruning's claim of robustness to
domains a run never saw. RUN_DIR (runs/experiment; runs/experiment_extreme for `--target extreme`, the GPU
budget's preset) then holds
results.md, the tables (mean over seeds and the seed range, per domain, average, worst, gap to the source),
the papers' claims read from them and every pairwise reading (a difference smaller than the seed range is
reported as none), and results.json, every number and each run's domain weights over time.

Runs go seed-major (every method at the first seed, then the next). One after another (the CPU budget), every
finished run's models are scored at the end in one `megadrp eval` process per corpus; under `--time-limit` (5400 s
for the CPU budget) a run that would not fit with its scoring is not started; a failed stage stops the runs too.
With `--parallel K` (the GPU budget: 5) each run is one worker process (`--worker`) that runs its stages and its
scoring in-process, K at once on the one machine (experiments/parallel.py); with `--timings` (the GPU budget:
configs/gpu_timings.json) the plan's wall time per run and in total is estimated first and a plan that does not
fit `--time-limit` is refused, naming what to cut; a run not expected to finish is not started and one still
running at the limit is killed; results.md/json are rewritten after every finished run (and copied to
`--publish`). Either way results.md opens with what was left out (a method on one seed gets no verdict).

    python tools/experiment.py --budget cpu          # make experiment: <= 90 min on 2 CPU cores
    python tools/experiment.py --budget gpu          # tools/device/experiment_gpu.sh: <= 9 min on one H100/H200
    python tools/experiment.py --budget gpu --steps 500 --cpt-steps 300   # prints the estimate, refuses: too long
    python tools/experiment.py --budget cpu --methods dress oneshot --target extreme    # DReSS's extreme ratio
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import comparison as cmp  # noqa: E402
from experiments import parallel as par  # noqa: E402
from megadrp.recipe import stages as pl  # noqa: E402

METHODS = {
    "uniform": ("prune", ["dro.method=constant"]),
    "sheared": ("prune", ["dro.method=sheared"]),
    "drpruning": ("prune", ["dro.method=drpruning"]),
    "dress": ("dress", ["dro.method=drpruning"]),  # + dress.regularize_steps = --steps (run_method)
    "oneshot": ("oneshot", ["dro.method=drpruning"]),
    "oneshot_uniform": ("oneshot", ["dro.method=constant"]),  # the cut does not depend on dro.*
    "oneshot_sheared": ("oneshot", ["dro.method=sheared"]),
}
# SmolLM2-135M (576 / 9q,3kv / 30 layers / FFN 1536, 106.2M non-embedding parameters) -> the target.
TARGETS = {
    "default": {"num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 880},  # 63.3M, 0.60x
    # 30.7M non-embedding (0.29x), 49.6M in all with the tied 384-wide embedding: "135M -> ~50M"
    "extreme": {"hidden_size": 384, "num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 768,
                "num_hidden_layers": 24},
}
# Sized by measured step times (docs/RESULTS.md): prune ~11 s, recovery ~4-6 s a step on 2 CPU ranks at
# 2 x 128 tokens (LM loss only: at equal time it beat distillation there). The GPU budget is sized by
# configs/gpu_timings.json, the first H200 run's measurements: the extreme target, 5 runs at once, each run one
# process; recovery on the LM loss alone, as on the CPU (the teacher's forward would cost ~1/3 more a step).
BUDGETS = {
    "cpu": {"steps": 12, "cpt_steps": 24, "seeds": [1, 2], "nproc": 2, "distill_alpha": 0.0, "time_limit": 5400,
            "overrides": []},
    "gpu": {"steps": 200, "cpt_steps": 120, "seeds": [1, 2], "nproc": 1, "distill_alpha": 0.0, "device": "cuda",
            "time_limit": 500, "target": "extreme", "parallel": 5, "timings": "configs/gpu_timings.json",
            "overrides": ["deepspeed.config=ds_configs/auto.json", "deepspeed.precision=bf16",
                          "data.seq_length=512", "optim.micro_batch_size=16", "logging.wandb_mode=disabled",
                          "dro.update_interval=10", "logging.log_interval=10"]},
}


def run_method(name: str, seed: int, args, prefixes: dict, domains: list[str]) -> tuple[str, str]:
    """One method at one seed: (its cut model before recovery, its final model)."""
    mode, method_overrides = METHODS[name]
    base = os.path.join(args.run_dir, name, f"seed{seed}")
    common = [f"data.prefix={prefixes['train']}", f"data.eval_prefix={prefixes['heldout']}",
              f"data.domains=[{', '.join(domains)}]", "dro.initial_ratio=uniform", f"optim.seed={seed}",
              *cmp.target_overrides(args.target_shape), *method_overrides, *args.overrides]
    first = os.path.join(base, "prune")
    first_overrides = [f"model.path={args.model}", *common]
    pl.banner(f"{name} seed {seed}: {mode}" + ("" if mode == "oneshot" else f" for {args.steps} steps"))
    if mode == "oneshot":
        pruned = pl.oneshot(args.config, first, first_overrides)
    else:
        if mode == "dress":  # the penalty reaches its final value at the last step, so the cut is lossless
            first_overrides.append(f"dress.regularize_steps={args.steps}")
        pl.train(mode, args.config, first, args.steps, args.nproc, first_overrides)
        if mode == "dress":  # the dress mode writes the cut model itself
            pruned = pl.copy_folder(os.path.join(first, "pruned"), os.path.join(first, "export"))
        else:
            pruned = pl.export(first, os.path.join(first, "export"))
    final = os.path.join(base, "export")
    if args.cpt_steps > 0:
        pl.banner(f"{name} seed {seed}: recovery for {args.cpt_steps} steps")
        cpt = os.path.join(base, "cpt")
        distill = ([f"distill.alpha={args.distill_alpha}", f"distill.teacher={args.model}"]
                   if args.distill_alpha > 0 else ["distill.alpha=0"])
        # l_ref from the source, as in the first phase (the cut model's own loss would leave Sheared's rule inert)
        pl.train("cpt", args.config, cpt, args.cpt_steps, args.nproc,
                 [f"model.path={pruned}", f"dro.reference_model={args.model}", *common, *distill])
        pl.export(cpt, final)
    else:
        pl.copy_folder(pruned, final)
    return pruned, final


def _apply_budget(args) -> None:
    """Fill every option the user left unset from the budget's preset."""
    preset = BUDGETS.get(args.budget, {})
    defaults = {"steps": 40, "cpt_steps": 0, "seeds": [1], "nproc": 2, "distill_alpha": 0.0, "device": None,
                "time_limit": None, "target": "default", "parallel": 1, "timings": None}
    for key, default in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
    args.overrides = [*preset.get("overrides", []), *args.overrides]
    args.target_shape = TARGETS[args.target]
    if args.run_dir is None:  # each target its own folder: a finished stage is never asked for another shape
        args.run_dir = "runs/experiment" if args.target == "default" else f"runs/experiment_{args.target}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    pl.add_common_args(p, run_dir=None, config="configs/experiment_smollm2.yaml")  # run_dir: per target
    p.set_defaults(nproc=None)
    p.add_argument("--budget", choices=["none", *BUDGETS], default="none",
                   help="preset steps, seeds and set-up (explicit options override it)")
    p.add_argument("--methods", nargs="+", default=list(METHODS)[:5], choices=list(METHODS),
                   help="default: the five methods (not the one-shot domain-rule arms)")
    p.add_argument("--target", choices=list(TARGETS), default=None, help="target shape preset (default: default)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="optim.seed of each repetition")
    p.add_argument("--steps", type=int, default=None, help="steps of the pruning / regularisation phase")
    p.add_argument("--cpt-steps", type=int, default=None, help="steps of recovery after the cut")
    p.add_argument("--distill-alpha", type=float, default=None, help="KD weight in recovery (0: LM loss only)")
    p.add_argument("--device", default=None, help="evaluation device (default: cuda if available)")
    p.add_argument("--unseen-corpus", default=".cache/corpus_unseen",
                   help="corpus of domains no run trains on, scored for robustness ('none': skip)")
    p.add_argument("--unseen-sources", default="configs/unseen_sources.yaml",
                   help="source list the unseen corpus is built from when it is missing")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds: start no run that would not finish, with its evaluation, inside it; the "
                        "runs done by then are evaluated and reported (a partial results.md says so)")
    p.add_argument("--parallel", type=int, default=None,
                   help="runs at once, each one process running all its stages in-process (needs --nproc 1)")
    p.add_argument("--timings", default=None,
                   help="JSON of measured timings (configs/gpu_timings.json): print the plan's estimate and "
                        "refuse a plan that does not fit --time-limit")
    p.add_argument("--publish", default=None,
                   help="also copy results.md/json to PREFIX_results.md/json after every finished run")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "SEED"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _apply_budget(args)
    if args.worker:
        return worker(args)
    if args.parallel > 1 and args.nproc != 1:
        p.error(f"--parallel {args.parallel} runs each run in one process: it needs --nproc 1")
    if args.parallel > 1 or args.timings:
        return run_parallel(args, argv)
    return run_serial(args)


def run_serial(args) -> int:
    """The runs one after another, each stage its own process (the CPU budget: 2 ranks a run)."""
    t0 = time.time()
    ev = (args.eval_seq_length, args.eval_windows, args.device)
    plan = [(name, seed) for seed in args.seeds for name in args.methods]  # seed-major: a cut-off run has
    done: list[tuple[str, int, str, str]] = []                               # every method at the first seed
    stopped = None
    try:
        domains, prefixes = pl.tokenised_corpus(args, "tokenise the corpus")
        unseen = None if args.unseen_corpus == "none" else pl.built_corpus(args.unseen_sources, args.unseen_corpus)
        started = time.time()
        source, _ = score_source(args, None, ev)
        t_eval = [max(time.time() - started, 5.0), 0.0]  # seconds per corpus (a cached one took none: 5 s)
        unseen_source = None
        if unseen:
            started = time.time()
            unseen_source = score_source(args, unseen, ev)[1]
            t_eval[1] = max(time.time() - started, 5.0)
        run_seconds: list[float] = []
        for name, seed in plan:
            if args.time_limit and run_seconds:
                need = sum(run_seconds) / len(run_seconds) + scoring_seconds(len(done) + 1, *t_eval)
                if time.time() - t0 + need > args.time_limit:
                    stopped = (f"stopped by --time-limit {args.time_limit:.0f} s before {name} seed {seed} "
                               f"(a run takes ~{need:.0f} s with its scoring, {time.time() - t0:.0f} s were spent)")
                    break
            started = time.time()
            try:
                done.append((name, seed, *run_method(name, seed, args, prefixes, domains)))
            except pl.StageFailed as err:
                print(f"experiment: {err}", file=sys.stderr)
                stopped = f"stopped: {name} seed {seed} failed ({str(err).splitlines()[0]})"
                break
            run_seconds.append(time.time() - started)
        if not done:
            return 1
        runs = score(done, args, unseen, ev)
        for (name, seed, _, _), seconds in zip(done, run_seconds):
            runs[name][seed]["seconds"] = round(seconds, 1)  # training and export stages (0 when cached)
    except pl.StageFailed as err:
        print(f"experiment: {err}", file=sys.stderr)
        return 1
    missing = [f"{n} seed {s}" for n, s in plan[len(done):]]
    status = (f"**Partial: {len(done)} of {len(plan)} runs.** {stopped}; not run: {', '.join(missing)}."
              if missing else None)
    report = write(args, source, runs, domains, unseen, unseen_source, status, time.time() - t0)
    print("\n" + report)
    return 1 if stopped and not stopped.startswith("stopped by --time-limit") else 0


def score_source(args, unseen: str | None, ev: tuple) -> tuple[dict, dict | None]:
    """The source's scores on the held-out split and (if given) the unseen corpus."""
    source = pl.evaluate({"source": args.model}, args.corpus, os.path.join(args.run_dir, "source_eval.json"),
                         *ev)["models"]["source"]
    if not unseen:
        return source, None
    return source, pl.evaluate({"source": args.model}, unseen, os.path.join(args.run_dir, "source_unseen.json"),
                               *ev, card=False)["models"]["source"]


def write(args, source, runs, domains, unseen, unseen_source, status, seconds, timing=None) -> str:
    setup = (f"budget={args.budget} methods={' '.join(args.methods)} target={args.target} {args.target_shape} "
             f"seeds={args.seeds} steps={args.steps} cpt_steps={args.cpt_steps} distill_alpha={args.distill_alpha} "
             f"nproc={args.nproc} parallel={args.parallel} config={args.config} "
             f"overrides={' '.join(args.overrides) or '-'}; eval: "
             f"{args.eval_windows} windows x {args.eval_seq_length} tokens per domain; {seconds:.0f} s")
    report = cmp.write_results(args.run_dir, source, runs, domains, setup, status=status, timing=timing,
                               unseen=(unseen_source, pl.corpus_domains(unseen)) if unseen else None)
    if args.publish:  # e.g. the device session's $OUT: what a call cut short still brings back
        for name in ("results.md", "results.json"):
            pl.copy_file(os.path.join(args.run_dir, name), f"{args.publish}_{name}")
    return report


def run_plan(args) -> list[par.RunPlan]:
    return [par.RunPlan(name, seed, 0 if METHODS[name][0] == "oneshot" else args.steps, args.cpt_steps)
            for seed in args.seeds for name in args.methods]  # seed-major, as run_serial


def _heldout_evals(args) -> dict:
    """Held-out evaluations a run's rule pays for (Sheared-LLaMA's at each update, in both phases)."""
    interval = next((int(o.split("=")[1]) for o in reversed(args.overrides) if o.startswith("dro.update_interval=")), 4)
    return {n: (args.steps + args.cpt_steps) // interval for n, (_, o) in METHODS.items() if "dro.method=sheared" in o}


def run_parallel(args, argv: list[str]) -> int:
    """Every run in a worker process of its own (`--worker`), ``args.parallel`` at once, sized first."""
    import threading

    t0 = time.time()
    plan = run_plan(args)
    timings = par.load_timings(args.timings) if args.timings else None
    estimate: dict = {}
    durations: dict = {}
    if timings:
        tokens = _tokens_per_step(args)
        par.size_runs(plan, timings, args.target, tokens, _heldout_evals(args))
        text, fits = par.plan_report(plan, args.parallel, timings, args.time_limit, reserve_s=20.0)
        print(text, flush=True)
        if not fits:
            print("experiment: the plan does not fit the time limit (above: what to cut)", file=sys.stderr)
            return 2
        _, spans = par.makespan(plan, args.parallel, float(timings.get("concurrency_gain", 1.0)),
                                timings["fixed_s"]["worker_start"])
        estimate = {r.label: end for r, (_, end) in zip(plan, spans)}
        durations = {r.label: end - start for r, (start, end) in zip(plan, spans)}
    try:
        domains, prefixes = pl.tokenised_corpus(args, "tokenise the corpus")
        unseen = None if args.unseen_corpus == "none" else pl.built_corpus(args.unseen_sources, args.unseen_corpus)
    except pl.StageFailed as err:
        print(f"experiment: {err}", file=sys.stderr)
        return 1
    ev = (args.eval_seq_length, args.eval_windows, args.device)
    scored: dict = {}
    source_thread = threading.Thread(target=lambda: scored.update(zip(("source", "unseen"),
                                                                      score_source(args, unseen, ev))))
    source_thread.start()  # the source is scored while the first runs train
    runs: dict = {}
    lanes = {"lanes": args.parallel}

    def on_done(r: par.RunPlan, seconds: float) -> None:
        with open(os.path.join(args.run_dir, r.name, f"seed{r.seed}", "run.json"), encoding="utf-8") as fh:
            result = json.load(fh)
        result["seconds"] = round(seconds, 1)
        if r.label in estimate:
            result["estimated_end_s"], result["end_s"] = round(estimate[r.label]), round(time.time() - t0)
        runs.setdefault(r.name, {})[r.seed] = result
        source_thread.join()
        write(args, scored["source"], runs, domains, unseen, scored.get("unseen"),
              f"**Partial so far: {sum(map(len, runs.values()))} of {len(plan)} runs finished.**",
              time.time() - t0, _timing(plan, runs, estimate, lanes, t0))

    deadline = t0 + args.time_limit if args.time_limit else None
    script = os.path.abspath(__file__)
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    done, notes = par.run_pool(
        plan, args.parallel, lambda r: par.worker_argv(script, argv, r),
        lambda r: os.path.join(args.run_dir, "logs", f"{r.name}_seed{r.seed}.log"), deadline, on_done,
        durations, env={"OMP_NUM_THREADS": str(threads)})
    source_thread.join()
    if not done:
        print("experiment: no run finished: " + "; ".join(notes), file=sys.stderr)
        return 1
    status = (f"**Partial: {len(done)} of {len(plan)} runs.** Not finished: {'; '.join(notes)}." if notes else None)
    report = write(args, scored["source"], runs, domains, unseen, scored.get("unseen"), status, time.time() - t0,
                   _timing(plan, runs, estimate, lanes, t0))
    print("\n" + report)
    return 0 if not notes or all("time limit" in n or "not started" in n for n in notes) else 1


def _tokens_per_step(args) -> int:
    cfg = {"data.seq_length": 128, "optim.micro_batch_size": 2, "optim.gradient_accumulation_steps": 1}
    for o in args.overrides:
        key, _, value = o.partition("=")
        if key in cfg:
            cfg[key] = int(value)
    return cfg["data.seq_length"] * cfg["optim.micro_batch_size"] * cfg["optim.gradient_accumulation_steps"]


def _timing(plan, runs: dict, estimate: dict, lanes: dict, t0: float) -> dict:
    """The plan's estimate beside the measured seconds: what configs/gpu_timings.json is updated from."""
    out = {"runs at once": lanes["lanes"], "wall so far (s)": round(time.time() - t0)}
    for r in plan:
        got = runs.get(r.name, {}).get(r.seed)
        est = estimate.get(r.label)
        if got or est:
            out[r.label] = (f"estimated to end at {est:.0f} s" if est else "no estimate") + (
                f", ended at {got.get('end_s', '?')} s after {got['seconds']} s; stages "
                f"{got.get('stage_seconds', {})}" if got else ", not finished")
    return out


def worker(args) -> int:
    """One run (--worker METHOD SEED) and its scoring, every stage in this process; RUN_DIR/METHOD/seedS/run.json."""
    name, seed = args.worker[0], int(args.worker[1])
    pl.run_in_process()
    ev = (args.eval_seq_length, args.eval_windows, args.device)
    try:
        domains, prefixes = pl.tokenised_corpus(args, f"{name} seed {seed}: the corpus")
        unseen = None if args.unseen_corpus == "none" else pl.built_corpus(args.unseen_sources, args.unseen_corpus)
        pl.STAGE_SECONDS.clear()
        pruned, final = run_method(name, seed, args, prefixes, domains)
        result = score([(name, seed, pruned, final)], args, unseen, ev)[name][seed]
    except pl.StageFailed as err:
        print(f"experiment: {err}", file=sys.stderr)
        return 1
    result["stage_seconds"] = {k: round(v, 1) for k, v in pl.STAGE_SECONDS.items()}
    path = os.path.join(args.run_dir, name, f"seed{seed}", "run.json")
    pl.write_json(path, result)
    print(f"wrote {path}")
    return 0


def scoring_seconds(runs: int, heldout: float, unseen: float) -> float:
    """What `score` of RUNS runs should take, from the source's single-model scoring times on each corpus.

    One process per corpus; a model beyond the first costs about 0.6 of a single-model process, whose start and
    data loading are the rest (measured on 2 CPU cores: the source alone 30 s, 17 s a model in a batch of 12;
    on the unseen corpus 16 s and 9 s). On a GPU the start dominates, so this overestimates there: a run is then
    left out early rather than the limit overrun."""
    return heldout * (1 + 0.6 * (2 * runs - 1)) + (unseen * (1 + 0.6 * (runs - 1)) if unseen else 0.0)


def score(done: list[tuple[str, int, str, str]], args, unseen: str | None, ev: tuple) -> dict:
    """Every finished run's cut and final model on the held-out split, and the final one on the unseen corpus:
    one `megadrp eval` process per corpus. ``{method: {seed: {cut, final, unseen?, weights, tokens}}}``."""
    pl.banner(f"score {len(done)} runs")
    bases = [os.path.join(args.run_dir, name, f"seed{seed}") for name, seed, _, _ in done]
    jobs = [(os.path.join(base, "eval_cut.json"), name, pruned) for base, (name, _, pruned, _) in zip(bases, done)]
    jobs += [(os.path.join(base, "eval.json"), name, final) for base, (name, _, _, final) in zip(bases, done)]
    scored = pl.evaluate_each(jobs, args.corpus, *ev)
    if unseen:
        unseen_scored = pl.evaluate_each([(os.path.join(base, "eval_unseen.json"), name, final)
                                          for base, (name, _, _, final) in zip(bases, done)], unseen, *ev, card=False)
    runs: dict = {}
    for i, (base, (name, seed, _, _)) in enumerate(zip(bases, done)):
        runs.setdefault(name, {})[seed] = {"cut": scored[i], "final": scored[len(done) + i],
                                           "weights": cmp.weights_over_time(base), "tokens": cmp.tokens_seen(base)}
        if unseen:
            runs[name][seed]["unseen"] = unseen_scored[i]
    return runs


if __name__ == "__main__":
    sys.exit(main())
