"""Export entry points: a checkpoint (``export_checkpoint``) or an in-process state dict (``export_from_model``).

Both go through the same path: deterministic masks -> reachability check against the target shape ->
``prune_state_dict`` -> atomic HF folder (config, safetensors, tokenizer, generation config, model card)
-> optional Hub upload.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from megadrp import run_format
from megadrp.export.card import build_model_card
from megadrp.export.consolidate import load_checkpoint_for_export
from megadrp.export.provenance import base_model_id, license_files, megadrp_origin, source_hub_id, source_license
from megadrp.export.surgery import ExportError, kept_counts, prune_state_dict
from megadrp.export.writer import (
    EXPORT_MARKER,
    AtomicFolder,
    check_output_folder,
    copy_tokenizer,
    hf_config,
    save_generation_config,
    save_weights,
    torch_dtype,
)
from megadrp.model.units import TARGET_FIELDS

log = logging.getLogger(__name__)
COMMAND_ENV = "MEGADRP_COMMAND"  # the command a card says made the model (set by `megadrp run` for its stages)


def expected_shape(source, target: Optional[Mapping[str, Any]]) -> dict[str, int]:
    """The five numbers a ``pruning.target`` dict resolves to (megadrp.masks' rules; null keeps the source's)."""
    from megadrp.config.schema import ConfigError, TargetShape
    from megadrp.masks.target import resolve_target

    try:
        resolved = resolve_target(source, TargetShape(**dict(target or {})))
    except (ConfigError, TypeError) as err:
        raise ExportError(f"the checkpoint's target shape {dict(target or {})} is invalid: {err}") from err
    return {name: getattr(resolved, name) for name in TARGET_FIELDS}


def check_reaches_target(masks: Optional[Mapping[str, torch.Tensor]], source, target) -> None:
    """Refuse masks whose kept units differ from the target shape, naming every count that is off."""
    want = expected_shape(source, target)
    got = kept_counts(masks or {}, source)
    rep = source.num_attention_heads // source.num_key_value_heads
    got["num_attention_heads"] = [g * rep for g in got["num_key_value_heads"]]
    problems = []
    for name in TARGET_FIELDS:
        have = got[name] if isinstance(got[name], list) else [got[name]]
        if have != [want[name]]:
            problems.append(f"{name}: target {want[name]}, masks keep {have if len(have) > 1 else have[0]} "
                            f"(source {getattr(source, name)})")
    if problems:
        raise ExportError("the checkpoint's masks cannot reach the target shape: " + "; ".join(problems)
                          + ". Was pruning.target changed after training, or is a mask family missing?")


def masks_from_state(state: Mapping[str, Any], source) -> Optional[dict[str, torch.Tensor]]:
    """Deterministic export masks of a checkpoint whose method learned masks (None for dense checkpoints).

    Refuses, naming the counts, a checkpoint whose mask families or shapes cannot give the target shape.
    """
    saved = run_format.mode_state(state).get("masks")  # only a method that learns masks saves them
    if saved is None:
        return None
    from megadrp.config.schema import TargetShape
    from megadrp.masks import MaskSet, resolve_target
    from megadrp.model.units import BY_NAME, active_families, mask_shapes

    target = _target_dict(state)
    resolved = resolve_target(source, TargetShape(**target))
    have = {k.split(".")[-1]: tuple(v.shape) for k, v in saved.items() if hasattr(v, "shape")}
    maskset_shapes = mask_shapes(source)
    field = {f: unit.field for f, unit in BY_NAME.items()}
    problems = []
    for fam in active_families(source, resolved):
        want, src = getattr(resolved, field[fam]), getattr(source, field[fam])
        if fam not in have:
            problems.append(f"{field[fam]}: target {want} of the source's {src} needs a '{fam}' mask, and the "
                            f"checkpoint has none (it has {sorted(have) or 'no masks'})")
        elif have[fam] != maskset_shapes[fam]:
            problems.append(f"'{fam}' mask has shape {have[fam]}, the source needs {maskset_shapes[fam]}")
    if problems:
        raise ExportError("the checkpoint's masks cannot reach the target shape: " + "; ".join(problems))
    try:
        maskset = MaskSet(source, resolved)
        maskset.load_state_dict(saved)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ExportError(f"the checkpoint's masks {have} do not fit the source and target {target}: {err}") from err
    with torch.no_grad():
        masks = {k: v.detach().float().cpu() for k, v in maskset.deterministic().items()}
    check_reaches_target(masks, source, target)
    return masks


def unfinished_note(state: Mapping[str, Any], source) -> Optional[str]:
    """A warning for a masked checkpoint taken before the run ended or before its masks reached the target."""
    saved = run_format.mode_state(state).get("masks")  # only a method that learns masks saves them
    if saved is None:
        return None
    from megadrp.config.schema import TargetShape
    from megadrp.masks import MaskSet, resolve_target

    maskset = MaskSet(source, resolve_target(source, TargetShape(**_target_dict(state))))
    maskset.load_state_dict(saved)
    with torch.no_grad():
        expected = {f: float(v.mean()) for f, v in maskset.expected_sparsity().items()}  # mean over layers
    gaps = {f: (e, maskset.final_sparsity[f]) for f, e in expected.items() if abs(e - maskset.final_sparsity[f]) > 0.05}
    step, total = state.get("step"), ((state.get("config") or {}).get("optim") or {}).get("max_steps")
    if not gaps and not (step and total and step < total):
        return None
    where = f"step {step} of {total}" if total else f"step {step}"
    far = "; the masks are still far from the target: " + ", ".join(
        f"{f} expected sparsity {e:.2f} vs target {t:.2f}" for f, (e, t) in gaps.items()) if gaps else ""
    return (f"this checkpoint is {where} of an unfinished prune run{far}. The export keeps the units scoring "
            f"highest now, which the rest of the run could still change; export the final checkpoint if you meant it")


def _target_dict(state: Mapping[str, Any]) -> dict:
    return dict(((state.get("config") or {}).get("pruning") or {}).get("target") or {})


def _num_params(hf_sd: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in hf_sd.values())


def export_from_model(model_state_internal: Mapping[str, torch.Tensor], masks: Optional[Mapping[str, torch.Tensor]],
                      source_shape, family, out_dir, tokenizer_src=None, *, dtype: str = "bfloat16",
                      max_shard_size: str | int = "5GB", target: Optional[Mapping[str, Any]] = None,
                      source_model_dir: Optional[str] = None, card_info: Optional[dict] = None,
                      push_to_hub: Optional[str] = None, private: bool = False, progress: bool = True) -> Path:
    """Prune a MaskedCausalLM state dict with ``masks`` and write the HF folder ``out_dir``.

    ``masks``: deterministic masks (float, exact zeros for pruned units), keep-indices (integer tensors:
    [k] for layer/hidden, [L, k] per layer for head/intermediate), or None for a dense export. With
    ``target`` (a ``pruning.target`` dict) the masks must reach it exactly.
    """
    torch_dtype(dtype)  # fail on a bad dtype or a folder we may not replace before any work
    check_output_folder(out_dir)
    family_name = family if isinstance(family, str) else family.name
    if target is not None:
        check_reaches_target(masks, source_shape, target)
    hf_sd, achieved = prune_state_dict(model_state_internal, source_shape, family_name, masks)
    from megadrp.model.families import get_family

    info = dict(card_info or {})
    info.setdefault("command", os.environ.get(COMMAND_ENV))  # `megadrp run` names itself to every stage
    info.update(family=family_name, architecture=get_family(family_name).architecture,
                source_shape=source_shape.to_dict(), achieved_shape=achieved.to_dict(),
                target_shape=expected_shape(source_shape, target) if target is not None else None,
                num_params=_num_params(hf_sd), source_num_params=source_shape.num_params(),
                non_embedding_params=achieved.num_params(include_embeddings=False),
                source_non_embedding_params=source_shape.num_params(include_embeddings=False),
                tie_word_embeddings=achieved.tie_word_embeddings, source_tied=source_shape.tie_word_embeddings)
    # The source folder, else the checkpoint's copy of its card and license (the source may be gone by now).
    known = next((d for d in (source_model_dir, tokenizer_src) if d and Path(d).is_dir()), None)
    info.setdefault("base_model", source_hub_id(known) or base_model_id(source_model_dir or known))
    info.setdefault("base_model_is_hub_id", source_hub_id(known) is not None)
    info.setdefault("license", source_license(known))
    record = megadrp_origin(source_model_dir)
    origin = record.get("origin_shape") or record.get("source_shape")
    if origin:  # the source is a megadrp export: count against the model the lineage began with, too
        from megadrp.model.shape import ModelShape

        info["origin_shape"] = origin
        info["origin_non_embedding_params"] = ModelShape.from_dict(origin).num_params(include_embeddings=False)
        info["origin_num_params"] = ModelShape.from_dict(origin).num_params()
    # The whole pipeline, stage by stage: the source's own stages (a cut that this run recovered), then this one.
    info["pipeline"] = list(record.get("pipeline") or ([_stage_record(record)] if record else [])) + [
        _stage_record(info)]
    with AtomicFolder(out_dir) as tmp:
        config = hf_config(achieved, family_name, dtype)
        config.save_pretrained(tmp)
        save_weights(hf_sd, tmp, dtype, max_shard_size, progress=progress)
        if copy_tokenizer([tokenizer_src, source_model_dir], tmp) is None:
            log.warning("no tokenizer files in %s; the export has no tokenizer", [tokenizer_src, source_model_dir])
        save_generation_config(config, tmp)
        for f in license_files(known):
            shutil.copy2(f, tmp / f.name)
        build_model_card(info).save(tmp / "README.md")
        (tmp / EXPORT_MARKER).write_text(json.dumps(
            {k: info[k] for k in ("family", "source_shape", "achieved_shape", "target_shape", "num_params",
                                  "source_num_params", "step", "tokens_seen", "mode", "origin_shape", "pipeline",
                                  "name") if info.get(k) is not None},
            indent=2, default=str) + "\n")
    out = Path(out_dir).absolute()
    if push_to_hub:
        from megadrp.export.hub import push_folder

        push_folder(out, push_to_hub, private=private)
    return out


def _stage_record(info: Mapping[str, Any]) -> dict:
    """One stage of the pipeline as the card tells it: the method, its budget, its domain rule, its command."""
    distill = info.get("distill") or {}
    rec = {k: info.get(k) for k in ("mode", "step", "tokens_seen", "dro_method", "criterion", "calibration_tokens",
                                    "command")}
    if float(distill.get("alpha") or 0) > 0:
        rec["distill_alpha"], rec["teacher"] = float(distill["alpha"]), Path(str(distill.get("teacher") or "")).name
    rec["non_embedding_params"] = info.get("non_embedding_params")
    return {k: v for k, v in rec.items() if v not in (None, "")}


def _eval_results(ckpt: Path, eval_json: Optional[str]) -> Optional[dict]:
    """An explicit eval JSON, else RUN_DIR/eval.json of the checkpoint's run (RUN_DIR/checkpoints/step_N)."""
    candidates = [Path(eval_json)] if eval_json else [ckpt.parent.parent / "eval.json"]
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())
    if eval_json:
        raise ExportError(f"--eval-json {eval_json} does not exist")
    return None


def export_checkpoint(ckpt_or_run_dir, out_dir, dtype: str = "bfloat16", max_shard_size: str | int = "5GB",
                      push_to_hub: Optional[str] = None, private: bool = False, eval_json: Optional[str] = None,
                      progress: bool = True) -> Path:
    """Export a prune/cpt/dress checkpoint (or RUN_DIR, via checkpoints/latest) into the HF folder ``out_dir``."""
    from megadrp.model.shape import ModelShape

    torch_dtype(dtype)
    check_output_folder(out_dir)  # before consolidating the shards (minutes at 70B)
    internal_sd, state = load_checkpoint_for_export(ckpt_or_run_dir)
    ckpt = Path(state["checkpoint_dir"])
    source = state["source_shape"]
    source = ModelShape.from_dict(source) if isinstance(source, dict) else source
    masks = masks_from_state(state, source)
    note = unfinished_note(state, source)
    if note:
        log.warning("%s: %s", ckpt, note)
    config = state.get("config") or {}
    source_dir = (config.get("model") or {}).get("path") or None
    tokenizer_dir = ckpt / "tokenizer"
    card_info = {"mode": state["mode"], "method": state.get("method_card"), "masks_folded": masks is not None,
                 "step": state.get("step"), "tokens_seen": state.get("tokens_seen"),
                 "domain_weights": _domain_weights(state, config),
                 "dro_method": (config.get("dro") or {}).get("method"), "distill": config.get("distill"),
                 "eval": _eval_results(ckpt, eval_json), "checkpoint": str(ckpt)}
    return export_from_model(internal_sd, masks, source, state["family"], out_dir,
                             tokenizer_src=str(tokenizer_dir) if tokenizer_dir.is_dir() else None,
                             dtype=dtype, max_shard_size=max_shard_size,
                             target=_target_dict(state) if masks is not None else None,
                             source_model_dir=source_dir, card_info=card_info, push_to_hub=push_to_hub,
                             private=private, progress=progress)


def _domain_weights(state: Mapping[str, Any], config: Mapping[str, Any]) -> Optional[dict]:
    """``{domain: weight}`` from the state's final weights (a dict, or a vector in data.domains order)."""
    w = state.get("domain_weights")
    if w is None:
        return None
    if isinstance(w, Mapping):
        return {str(k): float(v) for k, v in w.items()}
    values = torch.as_tensor(w).flatten().tolist()
    names = list((config.get("data") or {}).get("domains") or []) or [f"domain_{i}" for i in range(len(values))]
    return dict(zip(names, values))
