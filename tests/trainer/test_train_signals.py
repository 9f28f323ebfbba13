"""A run survives the cluster's signals (issue 30): real launched ranks (torchrun, the deepspeed launcher; 2 gloo
ranks, the tiny model) get a real SIGTERM or SIGUSR1 mid-run, finish the step, checkpoint it, release the
run-dir lock and exit 75 (EXIT_REQUEUE); the requeued command continues with --resume auto, taking over the
lock a killed incarnation of the same SLURM job left behind, with a note.

Before: SIGTERM ended every rank at once with 143, no checkpoint since the last interval, the lock left in
place, and the requeued job refused as "in use by another megadrp run".
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from megadrp import run_format
from megadrp.trainer.run_lock import LOCK_FILE, RunLock, RunLockError
from megadrp.trainer.stop_signal import EXIT_REQUEUE
from tests.helpers.train_runs import (
    REPO,
    TRAIN,
    deepspeed_cmd,
    launch,
    make_workspace,
    read_metrics,
    run_env,
    write_config,
)

# No checkpoint until the end: whatever exists after the signal was written because of it.
SLOW = {"optim": {"max_steps": 8, "gradient_accumulation_steps": 1}, "checkpoint": {"save_interval": 100}}
FINISHED = {}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signals")
    return {"tmp": tmp, **make_workspace(tmp)}


def _start(cmd: list, tmp: Path, log: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=run_env(tmp, MEGADRP_DEBUG_STEP_SLEEP=0.5, **env), cwd=REPO,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, log: Path) -> None:
    deadline = time.time() + 200
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").is_file() and any(r["step"] >= step for r in read_metrics(run_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"the run ended or stalled before step {step}: {log.read_text()[-3000:]}")


def _ranks(launcher_pid: int) -> list:
    return [p for p in psutil.Process(launcher_pid).children(recursive=True)
            if any(a.endswith("train.py") for a in p.cmdline()) and "deepspeed.launcher.launch" not in p.cmdline()]


def _check_stopped(run_dir: Path, out: str, signame: str) -> int:
    """The stop left a checkpoint of the last finished step, `latest` naming it, and no lock; returns the step."""
    step = max(r["step"] for r in read_metrics(run_dir))
    assert 3 <= step < 8, out[-3000:]
    assert f"stopped by {signame} after step {step}: checkpoint" in out and "exit code 75" in out.lower(), out[-3000:]
    ck = run_dir / "checkpoints"
    assert (ck / "latest").read_text().strip() == f"step_{step}"
    assert [p.name for p in run_format.list_checkpoints(run_dir)] == [f"step_{step}"]
    assert not run_format.verify_manifest(ck / f"step_{step}")
    assert not (run_dir / LOCK_FILE).exists()
    return step


def test_sigterm_to_torchrun_checkpoints_the_step_and_releases_the_lock(ws):
    tmp = ws["tmp"]
    run_dir, log = tmp / "sigterm", tmp / "sigterm.log"
    config = write_config(tmp, ws, run_dir, **SLOW)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN,
           "--config", str(config)]
    proc = _start(cmd, tmp, log)
    _wait_for_step(proc, run_dir, 3, log)
    proc.send_signal(signal.SIGTERM)  # to torchrun alone, as `scancel` / Kubernetes do; it forwards SIGTERM
    proc.wait(timeout=120)
    _check_stopped(run_dir, log.read_text(), "SIGTERM")
    # A lock left on another host (a job whose node died), taken over on the user's word, with a note.
    (run_dir / LOCK_FILE).write_text(json.dumps({"host": "node-that-died", "pid": 1, "started": "x"}))
    resumed = launch(deepspeed_cmd(config, "--resume", "auto", "--take-over-lock"), run_env(tmp))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "taking over the stale lock" in resumed.stdout and "node-that-died" in resumed.stdout
    FINISHED["sigterm"] = run_dir


def test_sigusr1_to_the_ranks_exits_75_and_the_requeued_job_takes_its_lock_over(ws):
    """SLURM's `--signal=USR1@T` reaches the ranks themselves (srun without a launcher, or the launcher's
    children); the deepspeed launcher passes their exit code on."""
    tmp = ws["tmp"]
    run_dir, log = tmp / "sigusr1", tmp / "sigusr1.log"
    config = write_config(tmp, ws, run_dir, **SLOW)
    proc = _start(deepspeed_cmd(config), tmp, log, SLURM_JOB_ID="4242")
    _wait_for_step(proc, run_dir, 3, log)
    holder = json.loads((run_dir / LOCK_FILE).read_text())
    assert holder["slurm_job_id"] == "4242" and holder["slurm_restart_count"] == 0
    ranks = _ranks(proc.pid)
    assert len(ranks) == 2
    for rank in ranks:
        rank.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == EXIT_REQUEUE, log.read_text()[-3000:]
    _check_stopped(run_dir, log.read_text(), "SIGUSR1")
    # Suppose the job had been SIGKILLed after its grace period: its lock stays. The requeued job (same id, next
    # restart count, another host) takes it over and says so; another job's lock it refuses.
    (run_dir / LOCK_FILE).write_text(json.dumps(dict(holder, host="node-that-died")))
    resumed = launch(deepspeed_cmd(config, "--resume", "auto"),
                     run_env(tmp, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="1"))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "SLURM job 4242 before its requeue" in resumed.stdout
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 9))  # one history
    FINISHED["sigusr1"] = run_dir
    if "sigterm" in FINISHED:  # both runs stopped at other steps and resumed: the same numbers
        a, b = read_metrics(FINISHED["sigterm"]), read_metrics(run_dir)
        assert [r["loss"] for r in a] == [r["loss"] for r in b]
        assert a[-1]["domain_weights"] == b[-1]["domain_weights"]


def test_lock_takeover_rules(tmp_path, monkeypatch):
    other = {"host": "node-that-died", "pid": 1, "started": "x", "slurm_job_id": "7", "slurm_restart_count": 0}
    (tmp_path / LOCK_FILE).write_text(json.dumps(other))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(RunLockError, match="SLURM job 7.*--take-over-lock"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # the same job at the same restart count: a second step, maybe alive
    with pytest.raises(RunLockError, match="in use"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    notes = []
    lock = RunLock(tmp_path, note=notes.append).acquire()
    assert "restart 0; this is restart 2" in notes[0]
    assert json.loads((tmp_path / LOCK_FILE).read_text())["slurm_restart_count"] == 2
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()
