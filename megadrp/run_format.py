"""The run directory on disk, in one place: where checkpoints live, the ``latest`` pointer, the state file.

Written by the trainer (megadrp.trainer.checkpoint), read by resume, export, evaluation and the pipelines::

    RUN_DIR/config.yaml  RUN_DIR/metrics.jsonl
    RUN_DIR/checkpoints/step_N/          DeepSpeed's own files + STATE_FILE + tokenizer/
    RUN_DIR/checkpoints/latest           the name of the newest complete step_N (written last)

A checkpoint is *complete* when its folder holds STATE_FILE (it is written after every shard). ``latest``
is a text file holding the folder's name (or an absolute path); a symlink to the folder is accepted too.
The state file is a dict (docs/ARCHITECTURE.md, "Checkpoint contents"); a mode's own state (the prune
masks and multipliers, DReSS's selection) sits under ``"mode_state"``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

STATE_FILE = "megadrp_state.pt"
LATEST = "latest"
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointNotFound(FileNotFoundError):
    """A path or ``latest`` pointer that names no complete megadrp checkpoint."""


def checkpoints_dir(run_dir) -> Path:
    return Path(run_dir) / CHECKPOINTS


def step_tag(step: int) -> str:
    """The folder name of the checkpoint holding the state after ``step`` steps."""
    return f"step_{step}"


def is_checkpoint(path) -> bool:
    return (Path(path) / STATE_FILE).is_file()


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    ck = checkpoints_dir(run_dir)
    found = []
    if ck.is_dir():
        for p in ck.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and is_checkpoint(p):
                found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_step(run_dir) -> int:
    """Step of the newest complete checkpoint, -1 when there is none."""
    done = list_checkpoints(run_dir)
    return int(_STEP_DIR.match(done[-1].name).group(1)) if done else -1


def follow_latest(ck_dir) -> Optional[Path]:
    """The folder ``CK_DIR/latest`` names (complete or not), or None when there is no pointer."""
    latest = Path(ck_dir) / LATEST
    if latest.is_dir():  # a symlink to the newest step_N
        return latest.resolve()
    if latest.is_file():
        tag = latest.read_text().strip()
        return Path(tag) if Path(tag).is_absolute() else Path(ck_dir) / tag
    return None


def find_checkpoint(path) -> Optional[Path]:
    """The checkpoint behind ``path``: itself, or what ``latest`` names in ``path`` (a checkpoints folder)
    or in ``path/checkpoints`` (a run directory). None when ``path`` is neither (e.g. a model folder);
    :class:`CheckpointNotFound` when a ``latest`` pointer names an incomplete or deleted checkpoint."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    for candidate in (path, checkpoints_dir(path)):
        target = follow_latest(candidate)
        if target is None:
            continue
        if is_checkpoint(target):
            return target
        raise CheckpointNotFound(f"{target} is not a complete megadrp checkpoint (no {STATE_FILE}; "
                                 f"{candidate / LATEST} points at it): it is incomplete or was deleted; give a "
                                 f"RUN_DIR/checkpoints/step_N folder explicitly")
    return None


def resolve(spec: Optional[str], run_dir) -> Optional[Path]:
    """The checkpoint ``--resume`` / ``--init-from`` names: 'none' or empty (None), 'auto' (the latest of
    ``run_dir``, None when it has none yet), or a checkpoint folder or run directory."""
    if not spec or spec == "none":
        return None
    if spec == "auto":
        if follow_latest(checkpoints_dir(run_dir)) is None:
            return None
        return find_checkpoint(run_dir)
    found = find_checkpoint(spec)
    if found is None:
        raise CheckpointNotFound(f"{spec} is not a complete megadrp checkpoint (no {STATE_FILE}); give a "
                                 f"RUN_DIR/checkpoints/step_N folder, a run directory, or --resume auto")
    return found


def read_state(checkpoint) -> dict[str, Any]:
    """The state dict of a checkpoint folder.

    ``weights_only=False``: the state holds numpy RNG state and config dicts; only load checkpoints you trust.
    """
    import torch

    return torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=False)


def mode_state(state: dict) -> dict:
    """The mode's own part of a state (prune: ``masks``, ``lagrangian``, ``side_optimizer``)."""
    return state.get("mode_state") or {}
