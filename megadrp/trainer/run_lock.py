"""One trainer per run directory: RUN_DIR/.megadrp.lock, held by global rank 0 of the job.

Why: two trainers writing one run_dir interleave metrics.jsonl and replace each other's checkpoints, and both
exit 0. The lock file is created with O_EXCL and names its holder (host, pid, start time, command line); it is
removed when the run ends (normally, by an exception, or at interpreter exit). A lock left by a process that
died without cleaning up (SIGKILL, a lost node) is *stale*: on the holder's own host that is decided by whether
its pid still lives, and such a lock is taken over with a note. A lock from another host cannot be checked from
here, so the message says how to remove it once that run is known to be gone.
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


class RunLock:
    def __init__(self, run_dir, note: Callable[[str], None] = print):
        self.path = Path(run_dir) / LOCK_FILE
        self.note = note
        self.held = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}  # a lock torn by a kill between create and write, or removed meanwhile

    def _stale(self, holder: dict) -> bool:
        if not holder:  # unreadable: stale once it is clearly not being written right now
            try:
                return time.time() - self.path.stat().st_mtime > 30
            except FileNotFoundError:
                return True
        return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1)))

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)[:500]}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not self._stale(holder):
                    raise RunLockError(
                        f"{self.path.parent} is in use by another megadrp run (pid {holder.get('pid', '?')} on "
                        f"{holder.get('host', '?')}, started {holder.get('started', '?')}: "
                        f"{holder.get('command', '?')}). Wait for it to finish or choose another run_dir; if that "
                        f"run is gone (its node died), delete {self.path}") from None
                self.note(f"taking over the stale lock {self.path} of pid {holder.get('pid', '?')} on "
                          f"{holder.get('host', '?')} (that process no longer exists)")
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
