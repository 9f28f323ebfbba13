"""Checkpoints: atomic write with a checksum manifest, `latest` written last, keep_last pruning, verified resume.

Layout and file names: megadrp.run_format (docs/ARCHITECTURE.md, "Checkpoint contents").

Atomicity: everything is written into checkpoints/.tmp_step_N/ (DeepSpeed's shards by every rank, then
megadrp's state by rank 0, then the checksum manifest, each rank hashing its share of the files), the folder is
renamed to step_N, and only then is `latest` replaced (temp file + os.replace). A kill at any point leaves
`latest` naming the previous checkpoint, whole. Older checkpoints are pruned only after the new `latest` is in
place. Before writing, rank 0 checks that the folder is writable and has room for another checkpoint as large
as the last one (megadrp.trainer.write_guard); a write that fails anyway is reported by cause (permission,
disk space), with the path, and says that the previous checkpoint is intact. Assumes a file system shared by
all nodes (as DeepSpeed's own checkpointing does by default).
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from megadrp import run_format
from megadrp.run_format import (  # noqa: F401 - re-exported: the trainer's view of the run format
    LATEST,
    STATE_FILE,
    checkpoints_dir,
    list_checkpoints,
    read_state,
    resolve,
)
from megadrp.trainer import dist, faults, write_guard


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _copy_tokenizer(src: Optional[str], dst: Path) -> None:
    """Tokenizer, chat template, generation config, card and license of a folder (megadrp.data.tokenizer_files)."""
    from megadrp.data.tokenizer_files import copy_model_files

    if src and Path(src).is_dir():
        copy_model_files([src], dst, keep_source_card=True)


def _share(items: list) -> list:
    """This rank's share of a list every rank holds alike (for hashing / verifying files in parallel)."""
    return items[dist.rank()::dist.world_size()]


def _collective(fn: Callable[[], object], step_dir: Path, run_dir) -> object:
    """Run a rank-0-only write step; every rank learns whether it failed, so all raise together, not hang."""
    err = None
    if dist.is_main():
        try:
            fn()
        except (OSError, RuntimeError) as e:
            err = write_guard.describe_failure(e, step_dir, run_dir)
    err = dist.all_gather_object(err)[0]
    if err is not None:
        raise write_guard.CheckpointWriteError(err)


def save(engine, run_dir, step: int, state: dict, keep_last: int, tokenizer_src: Optional[str] = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder."""
    ck = checkpoints_dir(run_dir)
    tag = run_format.step_dir_name(step)
    tmp_tag = f".tmp_{tag}"
    tmp_dir, final = ck / tmp_tag, ck / tag
    _collective(lambda: write_guard.check_room(ck, tmp_dir, list_checkpoints(run_dir)), final, run_dir)
    dist.barrier()
    try:
        engine.save_checkpoint(str(ck), tag=tmp_tag, save_latest=False)
        failure = None
    except (OSError, RuntimeError) as err:  # DeepSpeed's torch.save says "basic_ios::clear" for a full disk
        failure = write_guard.describe_failure(err, final, run_dir)
    failures = [f for f in dist.all_gather_object(failure) if f]
    if failures:
        if dist.is_main():
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise write_guard.CheckpointWriteError(failures[0])
    rngs = dist.all_gather_object(rng_state())  # every rank's RNG, so a resume restores each rank's own

    def write_state():
        faults.kill_in_checkpoint(step, tmp_dir / f".{STATE_FILE}.tmp")
        run_format.write_state(tmp_dir, dict(state, rng=rngs))
        _copy_tokenizer(tokenizer_src, tmp_dir / "tokenizer")

    _collective(write_state, final, run_dir)
    names = run_format.manifest_files(tmp_dir)  # the folder is complete now: every rank lists the same files
    digests = {}
    for part in dist.all_gather_object({n: run_format.file_digest(tmp_dir / n) for n in _share(names)}):
        digests.update(part)

    def publish():
        run_format.write_manifest(tmp_dir, digests)
        write_guard.fsync_dir(tmp_dir)
        if final.exists():  # a checkpoint of the same step from a run that was later resumed from before it
            shutil.rmtree(final)
        tmp_dir.rename(final)
        run_format.write_latest(run_dir, tag)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    _collective(publish, final, run_dir)
    return final


def verify(path: Path) -> list:
    """Collective: problems of a checkpoint folder (checksums, DeepSpeed files that would run code); []: intact.

    Every rank checks its share of the files; every rank gets the same list."""
    path = Path(path)
    try:  # links, special files, unlisted files: refused before any of them is read (every rank sees the same)
        foreign = run_format.foreign_entries(path)
    except run_format.RunFormatError as err:
        foreign = [str(err)]
    if foreign:
        return foreign
    mine = []
    files = run_format.read_manifest(path)
    if files is None:  # not written by a megadrp save (assembled by hand?): say so, and go on
        if dist.is_main():
            print(f"[megadrp] warning: {path} has no {run_format.MANIFEST}: its files cannot be verified", flush=True)
    else:
        mine += run_format.verify_manifest(path, _share(sorted(files)))
    try:
        run_format.check_deepspeed_files(path, _share(run_format.deepspeed_files(path)))
    except run_format.RunFormatError as err:
        mine.append(str(err))
    return [p for part in dist.all_gather_object(mine) for p in part]


def choose(spec: Optional[str], run_dir, log: Callable[[str], None]) -> Optional[Path]:
    """Collective: the intact checkpoint to resume from. 'auto' falls back, oldest last, past damaged ones
    (saying which and why); an explicit PATH that is damaged is refused, naming an intact alternative."""
    first = run_format.resolve(spec, run_dir, note=log)
    if first is None:
        return None
    if not run_format.is_complete(first):
        run_format.read_state(first)  # an old pickle state: refused, with the command that converts it
    problems = verify(first)
    if not problems:
        return first
    older = [p for p in list_checkpoints(first.parent.parent) if p.name != first.name and
             _step(p) < _step(first)][::-1]
    if spec != "auto":
        raise run_format.RunFormatError(
            f"checkpoint {first} is damaged: {'; '.join(problems)}. Resume from an intact one, e.g. "
            f"--resume {older[0] if older else 'auto'}, or --resume auto to take the newest intact one")
    for candidate in [first] + older:
        problems = verify(candidate) if candidate != first else problems
        if not problems:
            return candidate
        log(f"checkpoint {candidate} is damaged and will not be used: {'; '.join(problems)}"
            f"{'; trying the previous complete checkpoint' if candidate != (older or [first])[-1] else ''}")
    raise run_format.RunFormatError(
        f"no intact checkpoint under {checkpoints_dir(run_dir)}: every complete one failed verification (above). "
        f"Start a new run_dir, or start afresh in this one without --resume and with --overwrite")


def _step(path: Path) -> int:
    tail = path.name.split("_")[-1]
    return int(tail) if tail.isdigit() else -1  # a checkpoint folder copied under another name


def load(engine, path: Path, weights_only: bool = False) -> None:
    """Load DeepSpeed's part of a verified checkpoint into the engine (module only for --init-from)."""
    path = Path(path)
    load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name,
                                          load_optimizer_states=not weights_only,
                                          load_lr_scheduler_states=False, load_module_only=weights_only)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed could not load the checkpoint in {path}")
