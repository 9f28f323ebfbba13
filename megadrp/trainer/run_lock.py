"""One trainer per run directory: RUN_DIR/.megadrp.lock, held by global rank 0 of the job.

Why: two trainers writing one run_dir interleave metrics.jsonl and replace each other's checkpoints, and both
exit 0. The lock file is created with O_EXCL and names its holder (host, pid, start time, command line); it is
removed when the run ends (normally, by an exception, on SIGTERM/SIGUSR1 after the checkpoint, or at
interpreter exit). A lock left by a process that died without cleaning up (SIGKILL after a scheduler's grace
period, a lost node) is *stale*, and is taken over with a note naming its holder (never silently) when:
- it is on this host and its pid no longer lives;
- it was taken by an earlier incarnation of this very scheduler job: the same SLURM_JOB_ID with a lower
  SLURM_RESTART_COUNT (a requeued job restarts, possibly on other nodes, with the same job id; SLURM never runs
  two incarnations of one job at once, so the earlier one is dead);
- the user says so: `--take-over-lock` (the holder ran on another host, which cannot be checked from here).
Any other lock is refused, naming its holder and these ways out.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable

LOCK_FILE = ".megadrp.lock"


class RunLockError(RuntimeError):
    """The run directory is in use by another trainer; the message names it and what to do."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _job() -> tuple:
    """(SLURM job id or None, its restart count): what identifies this incarnation of a scheduler job."""
    try:
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        restart = 0
    return os.environ.get("SLURM_JOB_ID") or None, restart


class RunLock:
    def __init__(self, run_dir, note: Callable[[str], None] = print, take_over: bool = False):
        """``take_over``: the user's word that the holder is gone (`--take-over-lock`)."""
        self.path = Path(run_dir) / LOCK_FILE
        self.note = note
        self.take_over = take_over
        self.held = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}  # a lock torn by a kill between create and write, or removed meanwhile

    def _stale(self, holder: dict) -> str:
        """Why the lock ``holder`` describes is dead ('' when it may be alive)."""
        if not holder:  # unreadable: stale once it is clearly not being written right now
            try:
                old = time.time() - self.path.stat().st_mtime > 30
            except FileNotFoundError:
                old = True
            return "its lock file is unreadable and was not written in the last 30 s" if old else ""
        if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1))):
            return "that process no longer exists"
        job, restart = _job()
        if job and holder.get("slurm_job_id") == job and int(holder.get("slurm_restart_count", 0)) < restart:
            return (f"it is SLURM job {job} before its requeue (restart {holder.get('slurm_restart_count', 0)}; "
                    f"this is restart {restart})")
        if self.take_over:
            return "--take-over-lock"
        return ""

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        job, restart = _job()
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)[:500], "slurm_job_id": job, "slurm_restart_count": restart}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                why = self._stale(holder)
                job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
                if not why:
                    raise RunLockError(
                        f"{self.path.parent} is in use by another megadrp run (pid {holder.get('pid', '?')} on "
                        f"{holder.get('host', '?')}{job}, started {holder.get('started', '?')}: "
                        f"{holder.get('command', '?')}). Wait for it to finish or choose another run_dir; if that "
                        f"run is gone (its node died), pass --take-over-lock (or delete {self.path})") from None
                self.note(f"taking over the stale lock {self.path} of pid {holder.get('pid', '?')} on "
                          f"{holder.get('host', '?')}{job}, started {holder.get('started', '?')} ({why})")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
            self.held = True
            atexit.register(self.release)
            return self
        raise RunLockError(f"could not take the lock {self.path}: another run keeps taking it; choose another run_dir")

    def release(self) -> None:
        """Remove the lock if it is still ours (never one another run took over)."""
        if self.held and self._holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
