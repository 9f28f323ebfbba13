"""Several comparison runs at once on one machine, sized before they start (tools/experiment.py --parallel K).

Why: on one H200 a run of the first GPU budget took ~180 s of wall for ~20 s of training steps; process starts,
model loading, DeepSpeed set-up and exports were the rest (docs/BENCHMARKS.md). A run is therefore one worker
process that runs every stage of its run in-process (megadrp.recipe.stages.run_in_process: start-up paid once
per run), and K workers share the GPU (one run needs ~19 GB by `megadrp plan`; an H200 has ~140 GB), so that one run's
start-up, exports and scoring overlap the others' training.

Sizing (`estimate`): from a committed JSON of measured timings (configs/gpu_timings.json, the last GPU run's
numbers and what was derived from them), each run's GPU seconds (its steps x the measured step time) and its
fixed seconds (the in-process stages' start-up, exports, scoring) are laid onto K lanes in the plan's order;
while K runs share the GPU, their steps take K / concurrency_gain as long. The plan is refused, naming what to
cut, when that makespan does not fit the time limit.

Running (`run_pool`): workers start in the plan's order (seed-major: every method at the first seed first) as
lanes free up; a worker not estimated to finish by the deadline is not started, and one still running at the
deadline is killed (its run is reported as not finished); ``on_done`` sees each finished run at once, so the
results on disk are always those of every run finished so far.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field


@dataclass
class RunPlan:
    """One run of the comparison: its name, seed, the steps of each phase and the seconds it is estimated at."""
    name: str
    seed: int
    steps: int  # first phase (0: one-shot)
    cpt_steps: int
    gpu_s: float = 0.0
    fixed_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} seed {self.seed}"


def load_timings(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def size_runs(runs: list[RunPlan], timings: dict, target: str, tokens_per_step: int, heldout_evals: dict) -> None:
    """Fill each run's GPU and fixed seconds from the measured timings (per-step times scale with the tokens a
    step holds; the recovery's step time is the target's; a rule that reads held-out losses pays an evaluation
    at each of its updates)."""
    scale = tokens_per_step / timings["tokens_per_step"]
    f = timings["fixed_s"]
    for r in runs:
        first = r.steps * timings["prune_step_s"] * scale + heldout_evals.get(r.name, 0) * timings["heldout_eval_s"]
        recovery = r.cpt_steps * timings["cpt_step_s"][target] * scale
        r.gpu_s = first + recovery
        r.fixed_s = (f["oneshot"] if r.steps == 0 else f["train_stage"] + f["export"]) \
            + (f["train_stage"] + f["export"] if r.cpt_steps else 0.0) + f["score"]


def makespan(runs: list[RunPlan], lanes: int, gain: float, start_s: float, dt: float = 0.5) -> tuple[float, list]:
    """(total seconds, each run's estimated (start, end)) with LANES workers taking the runs in the plan's order.
    A run is its worker's start-up START_S and its fixed seconds (start-ups, exports, scoring: host and disk),
    then its GPU seconds; the n runs on the GPU at a time share an aggregate min(n, gain) times one run's throughput."""
    queue = list(enumerate(runs))
    active: list[list] = []  # [index, seconds of host work left, GPU seconds left]
    spans = [(0.0, 0.0)] * len(runs)
    t = 0.0
    while queue or active:
        while queue and len(active) < max(1, lanes):
            i, r = queue.pop(0)
            active.append([i, start_s + r.fixed_s, r.gpu_s])
            spans[i] = (t, t)
        on_gpu = [a for a in active if a[1] <= 0]
        rate = min(len(on_gpu), max(gain, 1.0)) / len(on_gpu) if on_gpu else 0.0
        t += dt
        for a in active:
            if a[1] > 0:
                a[1] -= dt
            else:
                a[2] -= dt * rate
        for a in [a for a in active if a[1] <= 0 and a[2] <= 0]:
            spans[a[0]] = (spans[a[0]][0], t)
            active.remove(a)
    return t, spans


def plan_report(runs: list[RunPlan], lanes: int, timings: dict, limit: float | None,
                reserve_s: float) -> tuple[str, bool]:
    """The printed estimate (per run and in total, from which measurements) and whether it fits LIMIT."""
    gain = float(timings.get("concurrency_gain", 1.0)) if lanes > 1 else 1.0
    total, spans = makespan(runs, lanes, gain, timings["fixed_s"]["worker_start"])
    total += reserve_s
    lines = [f"plan: {len(runs)} runs, {lanes} at once (concurrency gain {gain:.2f}: "
             f"{timings.get('concurrency_note', 'assumed')}), timings from {timings.get('measured', '?')}:"]
    for r, (_, end) in zip(runs, spans):
        lines.append(f"  {r.label:<22} {r.steps:>4} + {r.cpt_steps:>4} steps  ~{r.gpu_s:6.0f} s on the GPU alone + "
                     f"{r.fixed_s:4.0f} s fixed; done at ~{end:5.0f} s")
    lines.append(f"  total ~{total:.0f} s (with {reserve_s:.0f} s for the source's scoring and the report)"
                 + (f" of the {limit:.0f} s limit" if limit else ""))
    fits = not limit or total <= limit
    if not fits:
        gpu = sum(r.gpu_s for r in runs)
        scale = _fitting_scale(runs, lanes, gain, timings["fixed_s"]["worker_start"], limit - reserve_s)
        lines.append("  does not fit: " + (
            f"cut the steps (--steps/--cpt-steps) to ~{100 * scale:.0f}% of these, or the seeds/methods (the steps "
            f"alone are {gpu:.0f} GPU-seconds), or raise --time-limit" if scale > 0 else
            "the start-ups, exports and scoring alone take longer: cut the seeds/methods or raise --time-limit"))
    return "\n".join(lines), fits


def _fitting_scale(runs: list[RunPlan], lanes: int, gain: float, start_s: float, limit: float) -> float:
    """The largest fraction of every run's steps (GPU seconds) whose plan fits LIMIT (0: none does)."""
    def fits(f: float) -> bool:
        scaled = [RunPlan(r.name, r.seed, r.steps, r.cpt_steps, r.gpu_s * f, r.fixed_s) for r in runs]
        return makespan(scaled, lanes, gain, start_s)[0] <= limit

    lo, hi = 0.0, 1.0
    if not fits(0.0):
        return 0.0
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def run_pool(plan: list[RunPlan], lanes: int, command, log_path, deadline: float | None, on_done,
             estimate_s: dict | None = None, env: dict | None = None, poll_s: float = 1.0) -> tuple[list, list]:
    """Run ``command(run)`` (an argv) for each run, LANES at a time, its output in ``log_path(run)``;
    ``on_done(run, seconds)`` after each success. A failed run does not stop the others. Returns (the finished
    runs in plan order, a list of what was not finished and why)."""
    pending, running, done, notes = list(plan), [], [], []
    t0 = time.time()
    while pending or running:
        while pending and len(running) < lanes:
            r, need = pending[0], (estimate_s or {}).get(pending[0].label, 0.0)
            if deadline and time.time() + need > deadline:
                notes += [f"{p.label}: not started (estimated {(estimate_s or {}).get(p.label, 0):.0f} s, "
                          f"{deadline - time.time():.0f} s were left)" for p in pending]
                pending.clear()
                break
            pending.pop(0)
            os.makedirs(os.path.dirname(log_path(r)) or ".", exist_ok=True)
            fh = open(log_path(r), "w", encoding="utf-8")
            print(f"[parallel] start {r.label} at +{time.time() - t0:.0f} s, log {log_path(r)}", flush=True)
            # each worker its own rendezvous port (free ports picked at once by K workers could collide)
            proc = subprocess.Popen(command(r), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, **(env or {}), "MASTER_PORT": str(_free_port())})
            running.append((r, proc, fh, time.time()))
        if not running:
            break
        time.sleep(poll_s)
        for item in list(running):
            r, proc, fh, started = item
            code = proc.poll()
            late = deadline is not None and time.time() > deadline
            if code is None and not late:
                continue
            if code is None:  # past the deadline: a run cut short cannot be reported
                _kill(proc)
                code = "killed at the time limit"
            fh.close()
            running.remove(item)
            seconds = time.time() - started
            print(f"[parallel] {r.label}: exit {code} after {seconds:.0f} s (+{time.time() - t0:.0f} s)", flush=True)
            if code == 0:
                done.append(r)
                on_done(r, seconds)
            else:
                notes.append(f"{r.label}: {code if isinstance(code, str) else f'failed (exit {code})'}, "
                             f"log {log_path(r)}")
    order = {id(r): i for i, r in enumerate(plan)}
    return sorted(done, key=lambda r: order[id(r)]), notes


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill(proc: subprocess.Popen) -> None:
    """End a worker and what it started (its own session: a training launcher's ranks too)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def worker_argv(script: str, argv: list[str], run: RunPlan) -> list[str]:
    """The worker's command line: the experiment's own arguments, for this one run."""
    return [sys.executable, script, *argv, "--worker", run.name, str(run.seed)]
