"""Pre-flight checks of where a run starts: never over a user's run, never from a checkpoint of another run.

Run before any process group or engine exists (megadrp/train.py), from the checkpoint's small state file only:
- a fresh run (no --resume) into a run_dir that holds checkpoints is refused (`--resume auto` continues it, a new
  run_dir starts another; `--overwrite` deletes them and starts afresh);
- a resume compares the resolved config with the checkpoint's and refuses changes that alter what the run
  means: the model, the pruning target, seq_length, the global batch (micro x accumulation x world size: a
  resume at another world size, megadrp.trainer.elastic, keeps it by adjusting micro or accumulation), the seed,
  the DRO method (all listed, with old -> new; `--allow-config-change` accepts them); other changes (lr,
  intervals, micro batch at the same global batch, ...) are listed and accepted;
- the domains of a resume must be the checkpoint's, in its order (per-domain weights, sampler cursors and DRO
  state are positional), and their binaries what the checkpoint recorded (sizes and a sampled checksum,
  megadrp.data.fingerprint): the sampler's positions index that data (`--allow-config-change` accepts a change);
- one history per run_dir (megadrp.trainer.run_history): a resume from a checkpoint older than the run_dir's
  later ones is refused unless `--branch` (they are moved aside, named), and a fresh run into a run_dir whose
  metrics.jsonl holds an earlier run's records without any checkpoint is refused (`--resume auto` moves them
  aside, `--overwrite` deletes them);
- a fresh start needs the source model's weights, not only its config.json.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional

from megadrp import run_format
from megadrp.config import ConfigError, to_dict
from megadrp.trainer import run_history


class StartError(ValueError):
    """This run cannot start from (or over) what its run_dir / --resume names; the message says what to do."""


# Dotted config prefixes whose change alters the meaning of a resumed run (issue 17).
GUARDED = ("mode", "model.path", "model.family", "pruning.target", "data.seq_length", "optim.seed", "dro.method")
IGNORED = ("checkpoint.resume", "checkpoint.init_from", "run_dir")  # where the run comes from / goes to


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(saved: dict, current: dict) -> tuple:
    """(guarded, other) lists of 'key: old -> new' between a checkpoint's config and this run's."""
    a, b = _flatten(saved), _flatten(current)
    guarded, other = [], []
    for key in sorted(set(a) | set(b)):
        if key.startswith(IGNORED) or key.startswith("data.domains") or a.get(key) == b.get(key):
            continue
        line = f"{key}: {a.get(key, '(unset)')!r} -> {b.get(key, '(unset)')!r}"
        (guarded if key.startswith(GUARDED) else other).append(line)
    return guarded, other


def check_fresh_start(cfg, overwrite: bool) -> None:
    """Refuse a fresh run over the checkpoints, or the metrics, of an earlier run in the same run_dir."""
    if overwrite:
        return
    found = run_format.list_checkpoints(cfg.run_dir, complete=False)
    if found:
        raise StartError(f"run_dir {cfg.run_dir} already holds checkpoints of a run "
                         f"({', '.join(p.name for p in found[-3:])}): continue it with --resume auto, start a new "
                         f"run with a new run_dir, or pass --overwrite to delete them and start afresh")
    records = run_history.metrics_records(cfg.run_dir)
    if records:
        raise StartError(f"run_dir {cfg.run_dir} holds {records} metrics records of an earlier run that wrote no "
                         f"checkpoint ({Path(cfg.run_dir) / run_history.METRICS}); a fresh run would append its own "
                         f"to them. Start with --resume auto to move them aside into "
                         f"{Path(cfg.run_dir) / run_history.ABANDONED}/, --overwrite to delete them, or use a new "
                         f"run_dir")


def check_one_history(cfg, path: Path, branch: bool) -> None:
    """Refuse a resume from a checkpoint older than the run_dir's later ones, unless --branch; and one from
    another run directory into a run_dir that holds a history of its own."""
    own = run_format.checkpoints_dir(cfg.run_dir).resolve()
    if Path(path).resolve().parent != own:
        found = run_format.list_checkpoints(cfg.run_dir, complete=False)
        records = run_history.metrics_records(cfg.run_dir)
        if found or records:
            raise StartError(f"checkpoint {path} belongs to another run directory, and run_dir {cfg.run_dir} holds "
                             f"a run of its own ({len(found)} checkpoints, {records} metrics records): continuing "
                             f"{path} here would mix the two. Resume it in its own run directory, or into a new "
                             f"(empty) run_dir")
        return
    later = run_history.later_checkpoints(cfg.run_dir, path)
    if later and not branch:
        names = ", ".join(p.name for p in later)
        raise StartError(f"run_dir {cfg.run_dir} holds checkpoints after {path.name} ({names}): resuming from "
                         f"{path.name} would start a second history beside them (a later --resume auto could "
                         f"continue either, and metrics.jsonl would mix both). Resume from the newest with --resume "
                         f"auto, or pass --branch to move {names} and the metrics of their steps aside into "
                         f"{Path(cfg.run_dir) / run_history.ABANDONED}/ and continue from {path.name}")


def wipe_for_overwrite(run_dir) -> None:
    """--overwrite: the earlier run's checkpoints and metrics go (after the run_dir lock is held)."""
    shutil.rmtree(run_format.checkpoints_dir(run_dir), ignore_errors=True)
    Path(run_dir, run_format.METRICS_FILE).unlink(missing_ok=True)


def check_data(state: dict, path: Path, cfg, data: Optional[dict], allow_change: bool,
               note: Callable[[str], None]) -> None:
    """Refuse a resume onto binaries other than those the checkpoint's sampler positions index."""
    from megadrp.data.fingerprint import describe_change

    saved = state.get("data") or {}  # absent in checkpoints of older versions: nothing to compare
    changes = [describe_change(d, f"{cfg.data.prefix}_{d}", saved[d], data[d]) for d in cfg.data.domains
               if d in saved and d in (data or {})]
    changes = [c for c in changes if c]
    if changes and not allow_change:
        raise StartError(f"{'; '.join(changes)}. Checkpoint {path} holds the sampler's positions in the data it was "
                         f"trained on; on other data they continue on sequences the run never saw in order (the "
                         f"exact resume breaks). Restore those binaries (or point data.prefix at them), start a new "
                         f"run_dir with --init-from {path}, or pass --allow-config-change to continue on the new data")
    if changes:
        note(f"--allow-config-change: continuing {path} on changed data: {'; '.join(changes)}")


def check_resume(state: dict, path: Path, cfg, world_size: int, allow_change: bool,
                 note: Callable[[str], None] = print, data: Optional[dict] = None) -> None:
    """Refuse a resume that would not continue the checkpoint's run (see the module docstring); ``data``: this
    run's {domain: fingerprint} (RunInputs.data_fingerprint), compared with the checkpoint's."""
    saved = state.get("config") or {}
    saved_domains = list((saved.get("data") or {}).get("domains") or [])
    domains = list(cfg.data.domains)
    if saved_domains and saved_domains != domains:
        how = "reorders" if sorted(saved_domains) == sorted(domains) else "changes"
        raise StartError(f"data.domains {domains} {how} the domains of checkpoint {path} ({saved_domains}); "
                         f"per-domain weights, sampler cursors and DRO state are kept by position, so a resume must "
                         f"list exactly "
                         f"{saved_domains}. For other domains start a new run_dir with --init-from {path}")
    check_data(state, path, cfg, data, allow_change, note)
    guarded, other = config_changes(saved, to_dict(cfg))
    saved_world = state.get("world_size") or len(state.get("rng") or []) or None
    if saved_world:
        opt = saved.get("optim") or {}
        before = int(opt.get("micro_batch_size", 0)) * int(opt.get("gradient_accumulation_steps", 0)) * saved_world
        after = cfg.optim.micro_batch_size * cfg.optim.gradient_accumulation_steps * world_size
        if before and before != after:
            guarded.append(f"global batch (micro_batch_size x gradient_accumulation_steps x world size): "
                           f"{before} -> {after}")
        if saved_world != world_size:
            other.append(f"world size: {saved_world} -> {world_size} (elastic resume)")
    if guarded and not allow_change:
        raise StartError(f"this run's config differs from checkpoint {path} in settings that change what the run "
                         f"means: {'; '.join(guarded)}. Resume with the checkpoint's values, start a new run_dir, or "
                         f"pass --allow-config-change to continue anyway")
    if guarded:
        note(f"--allow-config-change: continuing {path} with changed {'; '.join(guarded)}")
    if other:
        note(f"config changes since {path.name} (accepted): {'; '.join(other)}")


def check_start(cfg, inputs, overwrite: bool = False, allow_change: bool = False,
                note: Callable[[str], None] = print, branch: bool = False) -> Optional[Path]:
    """All start checks of a run; returns the checkpoint it will resume from (before verification), or None."""
    path = run_format.resolve(cfg.checkpoint.resume, cfg.run_dir, note=lambda _msg: None)
    if path is None:
        if cfg.checkpoint.resume in (None, "", "none"):
            check_fresh_start(cfg, overwrite)
        _check_weights(inputs.weights_path)
        return None
    check_resume(run_format.read_state(path), path, cfg, inputs.world_size, allow_change, note,
                 data=inputs.data_fingerprint)
    check_one_history(cfg, path, branch)
    return path


def prepare_history(cfg, branch: bool, note: Callable[[str], None]) -> None:
    """Rank 0, holding the lock: move aside what the checks above let through for this start (--branch: the
    later checkpoints and their metrics; --resume auto with no checkpoint: an earlier attempt's metrics)."""
    if cfg.checkpoint.resume in (None, "", "none"):
        return
    path = run_format.resolve(cfg.checkpoint.resume, cfg.run_dir, note=lambda _msg: None)
    if path is None:
        run_history.set_aside(cfg.run_dir, -1, None, note)
    elif branch:
        run_history.set_aside(cfg.run_dir, run_history.step_of(path), path, note)


def _check_weights(folder: str) -> None:
    p = Path(folder)
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if p.is_dir() and not any((p / n).is_file() for n in names):
        raise ConfigError("model.path", folder, "has a config.json but no weights (model.safetensors, "
                          "model.safetensors.index.json or pytorch_model.bin): download or copy the whole model folder")
