"""Checkpoint writes that fail say why: permission or disk space, the path, and that the previous one is intact.

DeepSpeed writes its shards with torch.save, whose C++ writer reports a read-only folder as "Parent directory
... does not exist" and a full disk as "basic_ios::clear". So before a checkpoint is written, rank 0 checks
that the checkpoints folder takes a file and has room for one more checkpoint as large as the newest one
(`check_room`); a write that fails anyway is diagnosed from the errno when there is one, else by probing the
folder (`describe_failure`). Either way the run stops with exit code 4 (megadrp/train.py) and `latest` still
names the previous complete checkpoint, which the message names.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from megadrp import run_format

_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
_SPACE = {errno.ENOSPC, errno.EDQUOT}
HEADROOM = 1.05  # a checkpoint may grow a little (e.g. a longer metrics history in the state)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the message names the cause, the path and the intact previous one."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def _previous(run_dir, step_dir: Path) -> str:
    done = [p for p in run_format.list_checkpoints(run_dir) if p.name != Path(step_dir).name]
    if not done:
        return "No earlier checkpoint of this run exists"
    return f"The previous checkpoint {done[-1]} is intact and checkpoints/latest still names it"


def check_room(ck: Path, tmp_dir: Path, existing: list) -> None:
    """Rank 0, before a save: the folder takes a file, and has room for a checkpoint as large as the last."""
    ck.mkdir(parents=True, exist_ok=True)
    if tmp_dir.exists():  # debris of a write killed earlier
        shutil.rmtree(tmp_dir)
    probe = ck / f".write_probe.{os.getpid()}"
    with open(probe, "wb") as fh:
        fh.write(b"megadrp")
        fh.flush()
        os.fsync(fh.fileno())
    probe.unlink()
    if not existing:
        return
    need = folder_bytes(existing[-1]) * HEADROOM
    free = shutil.disk_usage(ck).free
    if free < need:
        raise CheckpointWriteError(
            f"not enough disk space to write checkpoint {tmp_dir.name.replace('.tmp_', '')} into {ck}: "
            f"{_gib(free)} free, the last checkpoint ({existing[-1].name}) took {_gib(need / HEADROOM)}. "
            f"{_previous(ck.parent, tmp_dir)}. Free space (or lower checkpoint.keep_last, or point run_dir at a "
            f"larger file system), then continue with --resume auto")


def _errno_of(err: BaseException):
    while err is not None:
        if isinstance(err, OSError) and err.errno is not None:
            return err.errno
        err = err.__cause__ or err.__context__
    return None


def describe_failure(err: BaseException, step_dir: Path, run_dir) -> str:
    """One message for a failed checkpoint write: its cause (from the errno, or by probing the folder)."""
    if isinstance(err, CheckpointWriteError):
        return str(err)
    ck = run_format.checkpoints_dir(run_dir)
    code = _errno_of(err)
    if code is None:  # torch's C++ writer gives no errno: ask the file system
        if ck.exists() and not os.access(ck, os.W_OK):
            code = errno.EACCES
        elif ck.exists() and shutil.disk_usage(ck).free < 2**20:
            code = errno.ENOSPC
    previous = _previous(run_dir, step_dir)
    if code in _PERMISSION:
        cause = "read-only file system" if code == errno.EROFS else "permission denied"
        return (f"cannot write checkpoint {step_dir}: {cause} on {ck} ({err}). {previous}. Make {ck} writable "
                f"(or use another run_dir), then continue with --resume auto")
    if code in _SPACE:
        free = shutil.disk_usage(ck).free if ck.exists() else 0
        return (f"cannot write checkpoint {step_dir}: no space left on the device of {ck} ({_gib(free)} free; "
                f"{err}). {previous}. Free space (or lower checkpoint.keep_last), then continue with --resume auto")
    return f"cannot write checkpoint {step_dir}: {err}. {previous}; continue from it with --resume auto"
