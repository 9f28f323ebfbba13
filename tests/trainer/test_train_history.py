"""One history per run directory (issue 30): a resume from an older checkpoint makes the branch explicit, and
metrics.jsonl never mixes two runs or two branches.

Before: `--resume RUN/checkpoints/step_1` beside a later step_2 trained on and left step_2 in place (a later
`--resume auto` without `latest` continued the abandoned branch), and a fresh run into a run_dir with metrics but
no checkpoint (a first run that failed before its first save) appended its records to the first run's.
"""
from __future__ import annotations

import json
import shutil

import pytest

from megadrp import run_format
from tests.helpers.train_runs import read_metrics
from tests.trainer.test_train_reliability import base, copy_run, train  # noqa: F401 - base: the module's 2-step run


def _abandoned(run):
    found = sorted((run / "abandoned").iterdir())
    assert len(found) == 1, found
    return found[0]


def test_resume_from_an_older_checkpoint_needs_branch_and_moves_the_later_history_aside(base):  # noqa: F811
    run, config = copy_run(base, "branch")
    old = [json.dumps(r) for r in read_metrics(run)]
    proc = train(base["tmp"], config, "--resume", str(run / "checkpoints" / "step_1"))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "holds checkpoints after step_1 (step_2)" in proc.stderr and "--branch" in proc.stderr
    assert [p.name for p in run_format.list_checkpoints(run)] == ["step_1", "step_2"]  # untouched
    proc = train(base["tmp"], config, "--resume", str(run / "checkpoints" / "step_1"), "--branch")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    aside = _abandoned(run)
    assert "moved the abandoned history aside: step_2 and 1 metrics records" in proc.stdout
    assert aside.name.endswith("_after_step_1") and (aside / "checkpoints" / "step_2").is_dir()
    assert (aside / "metrics.jsonl").read_text().splitlines() == [old[1]]  # the abandoned branch's step 2
    assert "resumed from" in (aside / "README.txt").read_text()
    assert [r["step"] for r in read_metrics(run)] == [1, 2]  # one history: step 1, then the new branch's step 2
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_2"
    assert [p.name for p in run_format.list_checkpoints(run)] == ["step_1", "step_2"]


def test_metrics_without_a_checkpoint_are_never_appended_to(base):  # noqa: F811
    run, config = copy_run(base, "no_checkpoint")
    for p in run_format.list_checkpoints(run):  # as a first run that failed at its first save leaves it
        shutil.rmtree(p)
    (run / "checkpoints" / "latest").unlink()
    first = (run / "metrics.jsonl").read_text().splitlines()  # the calibration record (step 0), steps 1 and 2
    proc = train(base["tmp"], config)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{len(first)} metrics records of an earlier run that wrote no checkpoint" in proc.stderr
    assert "--resume auto" in proc.stderr and "--overwrite" in proc.stderr
    proc = train(base["tmp"], config, "--resume", "auto")  # what exit 4's message advises
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert [r["step"] for r in read_metrics(run)] == [1, 2]  # one run's records, not 1, 2, 1, 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(first)
    assert (_abandoned(run) / "metrics.jsonl").read_text().splitlines() == first


def test_a_checkpoint_of_another_run_never_continues_into_this_ones_history(base, tmp_path):  # noqa: F811
    from megadrp.config import load_config
    from megadrp.trainer.resume_check import StartError, check_one_history

    mine, config = copy_run(base, "mine")
    other, _ = copy_run(base, "other")
    cfg = load_config(str(config))
    with pytest.raises(StartError, match=r"belongs to another run directory.*2 checkpoints, \d+ metrics records"):
        check_one_history(cfg, other / "checkpoints" / "step_1", branch=True)
    check_one_history(cfg, mine / "checkpoints" / "step_2", branch=False)  # its own newest: fine
    empty = load_config(str(config), [f"run_dir={tmp_path / 'fresh'}"])
    check_one_history(empty, other / "checkpoints" / "step_1", branch=False)  # into a new run_dir: fine
