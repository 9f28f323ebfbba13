"""Read a megadrp checkpoint for export: find it, consolidate its ZeRO shards on CPU, load megadrp's state.

Consolidation is DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint`` (it reads the fp32 master
partitions from every rank's optimizer file, so it needs no GPU and no process group). We only add the
checks that turn its failures into messages a user can act on.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch

from megadrp import run_format
from megadrp.export.surgery import ExportError
from megadrp.run_format import STATE_FILE

REQUIRED_STATE = ("family", "source_shape", "mode", "config")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint, ``RUN_DIR/checkpoints`` or ``RUN_DIR`` (via ``latest``)."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist")
    found = run_format.find_checkpoint(path)
    if found is None:
        pointed = run_format.read_latest(path.parent if path.name == "checkpoints" else path)
        why = f" (its latest names {pointed.name}, which is incomplete or was deleted)" if pointed else ""
        raise ExportError(f"{path} is not a megadrp checkpoint: no {STATE_FILE} there, and no complete step_N "
                          f"under its checkpoints/{why}. Pass RUN_DIR, RUN_DIR/checkpoints/step_N, or a folder "
                          f"written by the trainer")
    return found


def read_state(ckpt: Path) -> dict[str, Any]:
    """megadrp's own state, checked for what export needs (load checkpoints only from trusted runs)."""
    state = run_format.read_state(ckpt)
    missing = [k for k in REQUIRED_STATE if k not in state]
    if missing:
        raise ExportError(f"{ckpt / STATE_FILE} lacks {missing}: not written by a megadrp trainer of this version")
    if state["mode"] == "prune" and run_format.mode_state(state).get("masks") is None:
        raise ExportError(f"{ckpt / STATE_FILE} is a prune checkpoint without masks; cannot compute the pruned shape")
    return state


def _check_shards(ckpt: Path) -> None:
    models = sorted(ckpt.glob("*_model_states.pt"))
    optims = sorted(ckpt.glob("*_optim_states.pt"))
    if not models:
        raise ExportError(f"{ckpt} holds no DeepSpeed '*_model_states.pt': not a DeepSpeed checkpoint "
                          f"(or it was only partly copied)")
    if not optims:
        raise ExportError(f"{ckpt} holds no '*_optim_states.pt' shards: ZeRO weights live in them; copy every "
                          f"rank's shard files")


def consolidate(ckpt: Path) -> dict[str, torch.Tensor]:
    """fp32 CPU state dict of the engine's module from every rank's shards (DeepSpeed's own tool)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    _check_shards(ckpt)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # DeepSpeed prints progress lines; keep the CLI quiet
            sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    except (ValueError, AssertionError, FileNotFoundError, KeyError, RuntimeError) as err:
        raise ExportError(f"cannot consolidate the ZeRO shards in {ckpt}: {err}. Every rank's "
                          f"'*_optim_states.pt' must be present (a checkpoint from N ranks has N)") from err
    return {k: v.detach().cpu().float() for k, v in sd.items()}


def load_checkpoint_for_export(ckpt_or_run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(internal fp32 state dict, megadrp state) of a checkpoint; ``state["checkpoint_dir"]`` is its folder."""
    ckpt = resolve_checkpoint(ckpt_or_run_dir)
    state = read_state(ckpt)
    sd = consolidate(ckpt)
    state = dict(state, checkpoint_dir=str(ckpt))
    return sd, state
