"""Read a megadrp checkpoint for export: find it, consolidate its ZeRO shards on CPU, load megadrp's state.

Consolidation is DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint`` (it reads the fp32 master
partitions from every rank's optimizer file, so it needs no GPU and no process group). We add the checks that
turn its failures into messages a user can act on, and, before it runs, the checksum manifest and the
restricted (weights_only) load of every DeepSpeed file, since DeepSpeed itself unpickles them unrestricted.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import torch

from megadrp import run_format
from megadrp.export.surgery import ExportError
from megadrp.run_format import STATE_FILE

log = logging.getLogger(__name__)

REQUIRED_STATE = ("family", "source_shape", "mode", "config")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint, ``RUN_DIR/checkpoints`` or ``RUN_DIR`` (via ``latest``, else the
    newest complete step_N)."""
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


def verify_checkpoint(ckpt: Path) -> None:
    """Refuse a checkpoint whose files no longer match their checksums, or whose DeepSpeed files would run code."""
    try:  # checksums first: a truncated shard is damage, and the restricted load would only see "not plain data"
        foreign = run_format.foreign_entries(ckpt)  # links, FIFOs, unlisted files: before anything is read
        problems = run_format.verify_manifest(ckpt) if run_format.read_manifest(ckpt) is not None else None
    except run_format.RunFormatError as err:
        raise ExportError(str(err)) from err
    if foreign:
        raise ExportError(f"checkpoint {ckpt} holds what its run did not write: {'; '.join(foreign[:5])}. Export "
                          f"a checkpoint as its run wrote it")
    if problems is None:
        log.warning("%s has no %s: its files cannot be verified", ckpt, run_format.MANIFEST)
    elif problems:
        older = [p for p in run_format.list_checkpoints(ckpt.parent.parent) if p.name != ckpt.name]
        raise ExportError(f"checkpoint {ckpt} is damaged: {'; '.join(problems)}. Export an intact one"
                          + (f", e.g. {older[-1]}" if older else ""))
    try:
        run_format.check_deepspeed_files(ckpt)
    except run_format.RunFormatError as err:
        raise ExportError(str(err)) from err


def read_state(ckpt: Path) -> dict[str, Any]:
    """megadrp's own state (megadrp.run_format: JSON + safetensors, no pickle)."""
    try:
        state = run_format.read_state(ckpt)
    except run_format.RunFormatError as err:
        raise ExportError(str(err)) from err
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
    links = run_format.foreign_entries(ckpt, unlisted=False)  # nothing is read through a link or from a FIFO
    if links:
        raise ExportError(f"checkpoint {ckpt} holds what its run did not write: {'; '.join(links[:5])}. Export a "
                          f"checkpoint as its run wrote it")
    state = read_state(ckpt)
    verify_checkpoint(ckpt)  # before DeepSpeed's consolidation unpickles its shards
    sd = consolidate(ckpt)
    state = dict(state, checkpoint_dir=str(ckpt))
    return sd, state
