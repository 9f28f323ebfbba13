"""One history per run directory: what a start would mix into it, and moving an abandoned branch aside.

A run directory holds one sequence of steps: checkpoints/step_N and metrics.jsonl describe the same run. Two
starts could break that silently (issue 30):
- resuming from a checkpoint older than the run_dir's newest leaves the later checkpoints in place (a later
  `--resume auto` without `latest` picks them up again) while the resumed run writes its own steps after it;
- a start into a run_dir whose metrics.jsonl holds records but no checkpoint (a first run that stopped before
  its first save, e.g. exit 4) appends the second run's records to the first's.
resume_check refuses both before any work, naming the fix. The fixes that keep everything (`--branch`, or
`--resume auto` over a run that saved nothing) move the abandoned part here, after the run_dir lock is held:

    RUN_DIR/abandoned/<UTC time>_after_step_K/checkpoints/step_N   the later checkpoints
    RUN_DIR/abandoned/<UTC time>_after_step_K/metrics.jsonl         the records of steps after K
    RUN_DIR/abandoned/<UTC time>_after_step_K/README.txt            why, when, and by which command

Nothing under abandoned/ is ever read by resume, export or eval (they look under checkpoints/).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from megadrp import run_format

ABANDONED = "abandoned"
METRICS = "metrics.jsonl"


def step_of(path: Path) -> int:
    tail = Path(path).name.split("_")[-1]
    return int(tail) if tail.isdigit() else -1


def later_checkpoints(run_dir, checkpoint: Path) -> list:
    """The run_dir's step_N folders (complete or torn) after the step of ``checkpoint``, oldest first."""
    k = step_of(checkpoint)
    return [p for p in run_format.list_checkpoints(run_dir, complete=False) if step_of(p) > k]


def metrics_records(run_dir) -> int:
    """How many records the run_dir's metrics.jsonl holds (0 when there is none)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        return sum(1 for line in fh if line.strip())


def set_aside(run_dir, after_step: int, resumed_from: Optional[Path], note: Callable[[str], None]) -> Optional[Path]:
    """Rank 0, holding the lock: move the checkpoints after ``after_step`` and the metrics records of steps after
    it (-1: all of them) into RUN_DIR/abandoned/...; point `latest` at ``resumed_from`` when it is this run_dir's.
    Returns the folder, or None when there was nothing to move."""
    run_dir = Path(run_dir)
    later = [p for p in run_format.list_checkpoints(run_dir, complete=False) if step_of(p) > after_step]
    metrics = run_dir / METRICS
    kept, moved = [], []
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                step = json.loads(line).get("step", 0)
            except (json.JSONDecodeError, AttributeError):
                continue  # a line torn by a kill
            (moved if step > after_step else kept).append(line)
    if not later and not moved:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = run_dir / ABANDONED / f"{stamp}_after_step_{max(after_step, 0)}"
    (dest / "checkpoints").mkdir(parents=True, exist_ok=False)
    for p in later:
        os.replace(p, dest / "checkpoints" / p.name)
    if moved:
        (dest / METRICS).write_text("".join(m + "\n" for m in moved), encoding="utf-8")
        tmp = metrics.with_name(f".{METRICS}.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, metrics)
    why = (f"resumed from {resumed_from} (--branch)" if resumed_from is not None
           else "started afresh (--resume auto) over a run that wrote no checkpoint")
    (dest / "README.txt").write_text(
        f"Moved aside by megadrp at {stamp} UTC: the run in {run_dir} {why}.\n"
        f"checkpoints/: {', '.join(p.name for p in later) or 'none'}; metrics.jsonl: {len(moved)} records of "
        f"steps after {after_step}.\nCommand: {' '.join(sys.argv)[:500]}\n", encoding="utf-8")
    if resumed_from is not None and Path(resumed_from).parent == run_format.checkpoints_dir(run_dir):
        run_format.write_latest(run_dir, Path(resumed_from).name)
    note(f"moved the abandoned history aside: {', '.join(p.name for p in later) or 'no checkpoint'} and "
         f"{len(moved)} metrics records of steps after {after_step} -> {dest}")
    return dest
