"""Fault-injection hooks, read from the environment, that let tests (and users rehearsing recovery) break a run
at a chosen point with a real failure rather than a mock. All are off unless their variable is set.

MEGADRP_FAULT_KILL_IN_CHECKPOINT=N  rank 0 SIGKILLs itself while writing checkpoint step_N: after DeepSpeed's
                                    shards and a torn state file are on disk, before the rename and the
                                    `latest` pointer. The previous checkpoint must stay the one `latest` names.
MEGADRP_FAULT_NAN_AT_STEP=N         the per-token losses of step N become NaN, as a NaN forward makes them
                                    (exercises the NaN guard: exit 3).
MEGADRP_FAULT_SPIKE_AT_STEP=N       the per-token losses of step N are multiplied by 1000, finite (exercises the
                                    loss-spike guard, megadrp/trainer/spike_guard.py).
MEGADRP_DEBUG_STEP_SLEEP=S          sleep S seconds after every step, so an outside SIGKILL lands mid-run.
"""
from __future__ import annotations

import os
import signal
import time


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "-1"))
    except ValueError:
        return -1


def kill_in_checkpoint(step: int, partial_path) -> None:
    if _int_env("MEGADRP_FAULT_KILL_IN_CHECKPOINT") != step:
        return
    with open(partial_path, "wb") as fh:  # a torn write, as a kill mid-torch.save leaves it
        fh.write(b"PK\x03\x04 truncated megadrp_state")
        fh.flush()
        os.fsync(fh.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def nan_at(step: int) -> bool:
    return _int_env("MEGADRP_FAULT_NAN_AT_STEP") == step


def spike_at(step: int) -> bool:
    return _int_env("MEGADRP_FAULT_SPIKE_AT_STEP") == step


def step_sleep() -> None:
    seconds = float(os.environ.get("MEGADRP_DEBUG_STEP_SLEEP", "0") or 0)
    if seconds > 0:
        time.sleep(seconds)
