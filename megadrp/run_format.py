"""The run directory on disk, in one place: where checkpoints live, the ``latest`` pointer, the state file.

Written by the trainer (megadrp.trainer.checkpoint), read by resume, export, evaluation and the pipelines::

    RUN_DIR/config.yaml  RUN_DIR/metrics.jsonl
    RUN_DIR/checkpoints/step_N/          DeepSpeed's own files + STATE_FILE + tokenizer/
    RUN_DIR/checkpoints/latest           the name of the newest complete step_N (written last)

A checkpoint is *complete* when its folder holds STATE_FILE (it is written after every shard). ``latest``
is a text file holding the folder's name (or an absolute path); a symlink to the folder is accepted too.
The state file is a dict (docs/ARCHITECTURE.md, "Checkpoint contents"); a mode's own state (the prune
masks and multipliers, DReSS's selection) sits under ``"mode_state"``, saved once.

API: checkpoints_dir, is_complete, list_checkpoints / newest_complete, read_latest, resolve (trainer:
'auto' | 'none' | PATH) and find_checkpoint (export, eval), read_state, mode_state.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

STATE_FILE = "megadrp_state.pt"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class RunFormatError(FileNotFoundError):
    """A path or ``latest`` pointer that names no complete megadrp checkpoint; the message says what to pass."""


def checkpoints_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def is_complete(folder) -> bool:
    return (Path(folder) / STATE_FILE).is_file()


def list_checkpoints(run_dir) -> list[Path]:
    """Complete step_N folders of a run, oldest first."""
    found = []
    ck = checkpoints_dir(run_dir)
    if ck.is_dir():
        for p in ck.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and is_complete(p):
                found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def newest_complete(run_dir) -> Optional[Path]:
    done = list_checkpoints(run_dir)
    return done[-1] if done else None


def read_latest(run_dir) -> Optional[Path]:
    """The folder ``RUN_DIR/checkpoints/latest`` names (it may be incomplete or gone), or None without one."""
    ck = checkpoints_dir(run_dir)
    latest = ck / LATEST
    if latest.is_dir():  # a symlink to the newest step_N
        return latest.resolve()
    if not latest.is_file():
        return None
    tag = latest.read_text(encoding="utf-8", errors="replace").strip()
    return Path(tag) if Path(tag).is_absolute() else ck / tag


def find_checkpoint(path) -> Optional[Path]:
    """The checkpoint folder behind ``path``: itself, or what ``latest`` names in RUN_DIR or RUN_DIR/checkpoints;
    None when ``path`` is neither (e.g. a plain Hugging Face folder) or ``latest`` names an incomplete folder."""
    path = Path(path)
    if is_complete(path):
        return path
    for run_dir in (path, path.parent if path.name == "checkpoints" else None):
        pointed = None if run_dir is None else read_latest(run_dir)
        if pointed is not None and is_complete(pointed):
            return pointed
    return None


def resolve(spec: Optional[str], run_dir) -> Optional[Path]:
    """The checkpoint ``--resume`` / ``--init-from`` names: 'none' or empty (None), 'auto' (what ``latest`` of
    ``run_dir`` names; None when there is no pointer yet: a fresh start), or a step_N folder or run directory."""
    if not spec or spec == "none":
        return None
    if spec == "auto":
        pointed = read_latest(run_dir)
        if pointed is None:
            return None
        found = pointed if is_complete(pointed) else None
    else:
        found = find_checkpoint(spec)
    if found is None:
        raise RunFormatError(f"{pointed if spec == 'auto' else spec} is not a complete megadrp checkpoint (no "
                             f"{STATE_FILE}); give a RUN_DIR/checkpoints/step_N folder, a run directory, or "
                             f"--resume auto")
    return found


def read_state(folder) -> dict[str, Any]:
    """The state dict of a checkpoint folder.

    ``weights_only=False``: the state holds numpy RNG state and config dicts; only load checkpoints you trust.
    """
    import torch

    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


def mode_state(state: dict) -> dict:
    """The mode's own part of a state (prune: ``masks``, ``lagrangian``, ``side_optimizer``)."""
    return state.get("mode_state") or {}
