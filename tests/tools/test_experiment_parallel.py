"""tools/experiment.py --parallel: runs sized before they start, K worker processes at once, each run's stages
in one process (experiments/parallel.py, megadrp.recipe.stages.run_in_process).

The end-to-end rehearsal with two runs at once is tests/tools/test_device_session.py (the GPU session's own scripts);
here: the estimate against hand-computed schedules and the committed measurements, the refusal of a plan that
cannot fit, the pool's deadline (a worker still running is killed, one that cannot finish is not started),
and that a run's stages in one process give the same numbers as the same stages each in its own process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import parallel as par
from tests.helpers.pipeline_runs import TARGET, pipeline_config, pipeline_corpus
from tests.helpers.tiny_models import make_tiny_hf_model

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))


def _runs(n, gpu, fixed=0.0):
    return [par.RunPlan(f"m{i}", 1, 10, 10, gpu_s=gpu, fixed_s=fixed) for i in range(n)]


def test_makespan_shares_the_gpu_up_to_the_gain():
    # two runs of 10 GPU-seconds on two lanes: with a gain of 2 each runs at full speed; with 1 they share it
    assert par.makespan(_runs(2, 10.0), 2, 2.0, 0.0)[0] == pytest.approx(10.0, abs=0.6)
    assert par.makespan(_runs(2, 10.0), 2, 1.0, 0.0)[0] == pytest.approx(20.0, abs=0.6)
    # one lane: one after the other, start-up and fixed seconds included
    total, spans = par.makespan(_runs(2, 10.0, fixed=3.0), 1, 1.0, 2.0)
    assert total == pytest.approx(30.0, abs=1.1) and spans[1][0] == pytest.approx(15.0, abs=0.6)
    # host work overlaps the other run's GPU work: 2 lanes, gain 1, 5 s fixed each -> 5 + 20, not 2 x 15
    assert par.makespan(_runs(2, 10.0, fixed=5.0), 2, 1.0, 0.0)[0] == pytest.approx(25.0, abs=0.6)


def test_the_gpu_budget_is_sized_from_the_committed_measurements_and_fits_its_limit():
    import experiment

    budget = experiment.BUDGETS["gpu"]
    args = type("A", (), dict(steps=budget["steps"], cpt_steps=budget["cpt_steps"], seeds=budget["seeds"],
                              methods=list(experiment.METHODS)[:5], overrides=budget["overrides"]))()
    plan = experiment.run_plan(args)
    timings = par.load_timings(str(REPO / budget["timings"]))
    par.size_runs(plan, timings, budget["target"], experiment._tokens_per_step(args), experiment._heldout_evals(args))
    assert len(plan) == 10 and [r.steps for r in plan if r.name == "oneshot"] == [0, 0]
    sheared, uniform = (next(r for r in plan if r.name == n) for n in ("sheared", "uniform"))
    assert sheared.gpu_s > uniform.gpu_s  # its held-out evaluations at every update
    assert uniform.gpu_s == pytest.approx(budget["steps"] * timings["prune_step_s"]
                                          + budget["cpt_steps"] * timings["cpt_step_s"]["extreme"])
    text, fits = par.plan_report(plan, budget["parallel"], timings, budget["time_limit"], reserve_s=20.0)
    assert fits, text
    # at 5x the first GPU run's tokens (500 + 300 steps) the measured numbers do not fit: refused, with what to cut
    args.steps, args.cpt_steps = 500, 300
    plan = experiment.run_plan(args)
    par.size_runs(plan, timings, "extreme", 8192, experiment._heldout_evals(args))
    text, fits = par.plan_report(plan, 5, timings, 540, reserve_s=20.0)
    assert not fits and "cut the steps (--steps/--cpt-steps) to ~" in text
    share = int(text.split("to ~")[1].split("%")[0]) / 100  # the share it names does fit, and not much more
    for factor, fitting in ((share - 0.01, True), (share + 0.03, False)):
        scaled = [par.RunPlan(r.name, r.seed, r.steps, r.cpt_steps, r.gpu_s * factor, r.fixed_s) for r in plan]
        assert par.plan_report(scaled, 5, timings, 540, reserve_s=20.0)[1] == fitting


def test_a_plan_that_cannot_fit_is_refused_before_any_work(tmp_path):
    out = subprocess.run([sys.executable, "tools/experiment.py", "--budget", "gpu", "--steps", "5000",
                          "--run-dir", str(tmp_path / "x"), "--corpus", str(tmp_path / "no_corpus")],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "plan: 10 runs, 5 at once" in out.stdout and "does not fit" in out.stdout
    assert "sheared seed 2" in out.stdout and not (tmp_path / "x").exists()


def test_the_pool_kills_at_the_deadline_and_starts_no_run_that_cannot_finish(tmp_path):
    plan = [par.RunPlan("quick", 1, 0, 0), par.RunPlan("slow", 1, 0, 0), par.RunPlan("late", 1, 0, 0)]
    sleeps = {"quick": 0, "slow": 60, "late": 0}
    finished = []
    t0 = time.time()
    done, notes = par.run_pool(
        plan, 2, lambda r: [sys.executable, "-c", f"import time; time.sleep({sleeps[r.name]})"],
        lambda r: str(tmp_path / f"{r.name}.log"), t0 + 4.0, lambda r, s: finished.append(r.name),
        {"quick seed 1": 1.0, "slow seed 1": 1.0, "late seed 1": 100.0}, poll_s=0.2)
    assert time.time() - t0 < 20
    assert [r.name for r in done] == ["quick"] == finished
    assert any(n.startswith("slow seed 1: killed at the time limit") for n in notes), notes
    assert any(n.startswith("late seed 1: not started") for n in notes), notes


def test_a_run_in_one_process_equals_its_stages_in_their_own_processes(tmp_path):
    """The worker route (--worker: every stage of the run in-process) against the stage-per-process route, on
    the one-shot method (cut, one recovery step, export, scoring): the same numbers to the last digit."""
    model = make_tiny_hf_model(tmp_path, "llama", num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                               intermediate_size=128, num_hidden_layers=4, seed=0)
    target = "pruning.target={" + ", ".join(f"{k}: {v}" for k, v in TARGET.items()) + "}"
    common = ["--model", str(model), "--corpus", str(pipeline_corpus(tmp_path / "corpus")), "--bin-dir",
              str(tmp_path / "bin"), "--config", str(pipeline_config(tmp_path / "exp.yaml", 2)), "--methods", "oneshot",
              "--seeds", "1", "--steps", "2", "--cpt-steps", "1", "--device", "cpu", "--eval-windows", "2",
              "--eval-seq-length", "32", "--nproc", "1", "--unseen-corpus", "none", "data.seq_length=32",
              "optim.micro_batch_size=2", "dress.calibration_batches=2", target]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    results = {}
    for route, extra in (("stages", []), ("worker", ["--worker", "oneshot", "1"])):
        run_dir = tmp_path / route
        out = subprocess.run([sys.executable, "tools/experiment.py", *common, "--run-dir", str(run_dir), *extra],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert ("(in process)" in out.stdout) == (route == "worker")
        results[route] = json.loads((run_dir / "oneshot" / "seed1" / "eval.json").read_text())["models"]["oneshot"]
    run = json.loads((tmp_path / "worker" / "oneshot" / "seed1" / "run.json").read_text())
    assert run["final"] == results["worker"] and set(run["stage_seconds"]) >= {"oneshot", "cpt", "export", "eval"}
    for r in results.values():
        assert str(tmp_path) in r.pop("path")  # each route's own folder
    assert results["worker"] == results["stages"] and results["worker"]["domains"]
