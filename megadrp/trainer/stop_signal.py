"""A graceful stop on the signals schedulers send before they kill a job: SIGTERM and SIGUSR1.

SLURM (at preemption, at the time limit, and `--signal=USR1@T` ahead of it), Kubernetes and spot instances send
SIGTERM (or a chosen signal) and kill a grace period later. Python's default for both signals ends the process at
once: no checkpoint since the last interval, and the run_dir lock left behind. With `install()` in place a
signal only sets a flag; the step loop finishes the step it is in, every rank agrees at the step boundary
(`requested_on_any_rank`: one 1-element all-reduce per step, so a signal that reached a single rank stops all of
them at the same step), the trainer writes a checkpoint of that step, global rank 0 releases the lock, and the
process exits with EXIT_REQUEUE. A second signal during that work is ignored (launchers forward the one the
scheduler already sent).

EXIT_REQUEUE is 75, EX_TEMPFAIL of sysexits.h ("temporary failure, retry"): the one code megadrp uses for "stopped
on request, the state is saved, run the same command again". examples/slurm/prune.sbatch requeues the job on it.
A launcher may not pass it on: srun and the deepspeed launcher do (when the ranks, not the launcher, got the
signal), torchrun exits 1 for any failed worker.
"""
from __future__ import annotations

import signal
from typing import Optional

import torch

EXIT_REQUEUE = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_received: Optional[int] = None


class RunInterrupted(RuntimeError):
    """The run stopped on a scheduler's signal after a checkpoint of its last finished step (or before step 1)."""

    def __init__(self, signum: int, step: int, checkpoint):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name if signum in {s.value for s in signal.Signals} else str(signum)
        saved = (f"checkpoint {checkpoint} holds step {step}" if checkpoint is not None
                 else "no step of this run finished, so there is nothing new to save")
        super().__init__(f"stopped by {name} after step {step}: {saved}; run_dir lock released. Exit code "
                         f"{EXIT_REQUEUE} (requeue): run the same command with --resume auto to continue")


def _handler(signum, _frame) -> None:
    global _received
    if _received is None:
        _received = signum


def install() -> None:
    """Route SIGTERM and SIGUSR1 to the flag (main thread only, as Python requires)."""
    global _received
    _received = None
    for sig in SIGNALS:
        signal.signal(sig, _handler)


def received() -> Optional[int]:
    """The first stop signal this process got, or None."""
    return _received


def requested_on_any_rank(group) -> Optional[int]:
    """Collective: the stop signal if any rank of ``group`` (a DataParallelGroup) received one, else None
    (this rank's own signal first, else the first of SIGNALS that some rank got)."""
    got = torch.tensor([float(_received == sig) for sig in SIGNALS])
    got = group.all_reduce_sum(got)
    if _received is not None:
        return _received
    return next((int(sig) for sig, n in zip(SIGNALS, got.tolist()) if n > 0), None)
