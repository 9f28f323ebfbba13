"""Checkpoints: atomic write, a `latest` pointer written last, keep_last pruning, resume and weights-only init.

The layout (step_N folders, the state file, the `latest` pointer) and reading it are megadrp.run_format's;
this module writes it.

Atomicity: everything is written into checkpoints/.tmp_step_N/ (DeepSpeed's shards by every rank, then
megadrp's state by rank 0 through a temp file), the folder is renamed to step_N, and only then is `latest`
replaced (temp file + os.replace). A kill at any point leaves `latest` naming the previous checkpoint, whole.
Older checkpoints are pruned only after the new `latest` is in place. Assumes a file system shared by all
nodes (as DeepSpeed's own checkpointing does by default).
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from megadrp.run_format import (  # noqa: F401  (resolve, read_state: the trainer reads checkpoints here)
    LATEST,
    STATE_FILE,
    checkpoints_dir,
    list_checkpoints,
    read_state,
    resolve,
)
from megadrp.trainer import dist, faults


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _copy_tokenizer(src: Optional[str], dst: Path) -> None:
    """Tokenizer, chat template, generation config, card and license of a folder (megadrp.data.tokenizer_files)."""
    from megadrp.data.tokenizer_files import copy_model_files

    if src and Path(src).is_dir():
        copy_model_files([src], dst, keep_source_card=True)


def save(engine, run_dir, step: int, state: dict, keep_last: int, tokenizer_src: Optional[str] = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder."""
    ck = checkpoints_dir(run_dir)
    tag, tmp_tag = f"step_{step}", f".tmp_step_{step}"
    tmp_dir, final = ck / tmp_tag, ck / tag
    if dist.is_main():
        ck.mkdir(parents=True, exist_ok=True)
        if tmp_dir.exists():  # debris of a write killed earlier
            shutil.rmtree(tmp_dir)
    dist.barrier()
    engine.save_checkpoint(str(ck), tag=tmp_tag, save_latest=False)
    rngs = dist.all_gather_object(rng_state())  # every rank's RNG, so a resume restores each rank's own
    if dist.is_main():
        state = dict(state, rng=rngs)
        partial = tmp_dir / f".{STATE_FILE}.tmp"
        faults.kill_in_checkpoint(step, partial)
        torch.save(state, partial)
        os.replace(partial, tmp_dir / STATE_FILE)
        _copy_tokenizer(tokenizer_src, tmp_dir / "tokenizer")
        _fsync_dir(tmp_dir)
        if final.exists():  # a checkpoint of the same step from a run that was later resumed from before it
            shutil.rmtree(final)
        os.replace(tmp_dir, final)
        _fsync_dir(ck)
        _atomic_write_text(ck / LATEST, tag + "\n")
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load(engine, path: Path, weights_only: bool = False) -> None:
    """Load DeepSpeed's part of a checkpoint into the engine (module only for --init-from)."""
    path = Path(path)
    load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name,
                                          load_optimizer_states=not weights_only,
                                          load_lr_scheduler_states=False, load_module_only=weights_only)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed could not load the checkpoint in {path}")
