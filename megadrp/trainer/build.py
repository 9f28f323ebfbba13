"""Everything a run is built from, resolved and checked *before* any process group, model or engine exists.

Pre-flight checks (each a plain error naming the field and the fix): the DeepSpeed JSON against the run
config and the world size (batch arithmetic, precision, no DeepSpeed optimizer/scheduler), a ZeRO stage "auto"
resolved from the model's size (config/zero_stage.py); the source model's config; the target shape against the
source (methods whose spec ``needs_target``); the training / held-out binaries present and made with the run's
tokenizer, every token id inside the model's vocabulary, every domain long enough for one sample; the
distillation teacher and the model DRO's reference losses are measured on, each checked against the student
(vocabulary, tokenizer, context length). The result, :class:`RunInputs`, is frozen: nothing after pre-flight
changes what a run is built from. Where the run starts, resume vs fresh and the checkpoint's config, is
megadrp.trainer.resume_check.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megadrp.config import ConfigError, check_deepspeed_json, resolve_precision
from megadrp.config.zero_stage import resolve_zero_stage

#: What an empty ``distill.teacher`` means, by method (MethodSpec.empty_teacher; docs/TRAINING.md, Distillation).
SELF_TEACHER = "self"      # the student's own forward with every mask at 1 (the masked model's all-ones pass)
SOURCE_TEACHER = "source"  # a frozen copy of model.path (the source the student starts from)
NO_TEACHER = "required"    # nothing: the recipe must name the teacher's folder


@dataclass(frozen=True)
class TeacherSpec:
    """A model beside the student: ``self`` (the student's own all-masks-1 forward) or ``frozen`` (a folder)."""
    kind: str
    path: str = ""
    shape: Optional[object] = None
    family: Optional[object] = None


@dataclass(frozen=True)
class RunInputs:
    method: object  # the megadrp.methods.MethodSpec of cfg.mode
    ds_config: dict
    precision: str
    world_size: int
    shape: object  # ModelShape of the model trained (the source when pruning)
    family: object
    weights_path: str  # HF folder the initial weights come from
    tokenizer_path: str
    datasets: dict
    eval_datasets: dict
    token_counts: list
    target_shape: Optional[object] = None
    zero_reason: str = ""  # why the ZeRO stage was chosen ('' when the JSON pins it)
    teacher: Optional[TeacherSpec] = None  # None: distillation off
    reference: Optional[TeacherSpec] = None  # the model DRO's l_ref is measured on; None: the starting one
    data_fingerprint: Optional[dict] = None  # {domain: megadrp.data.fingerprint}: recorded in checkpoints


def preflight(cfg, method, world_size: Optional[int] = None) -> RunInputs:
    """What ``cfg`` runs on (``method``: its megadrp.methods.MethodSpec), checked; a ConfigError names a problem."""
    from megadrp.data import load_domain_datasets
    from megadrp.model import read_shape

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg.deepspeed.precision, device_type)
    ds_config = check_deepspeed_json(cfg.deepspeed.config, cfg.optim, precision, world)

    if not cfg.model.path:
        raise ConfigError("model.path", cfg.model.path, "give the source model's Hugging Face folder")
    if not Path(cfg.model.path, "config.json").is_file():
        raise ConfigError("model.path", cfg.model.path, "has no config.json; give a Hugging Face model folder")
    shape, family = read_shape(cfg.model.path, cfg.model.family)
    zero_reason = resolve_zero_stage(ds_config, shape.num_params(), world, precision, device_type)
    if cfg.model.compile and int(ds_config.get("zero_optimization", {}).get("stage", 0)) == 3:
        raise ConfigError("model.compile", True, "is not supported under ZeRO-3 (its per-module parameter hooks): "
                          "use a ZeRO stage of 0-2 (ds_configs/auto.json picks 1 where the model fits)")
    weights_path = cfg.model.path
    init_from = cfg.checkpoint.init_from
    if init_from and Path(init_from, "config.json").is_file():
        init_shape, _ = read_shape(init_from, cfg.model.family)
        if init_shape != shape:
            raise ConfigError("checkpoint.init_from", init_from, f"has shape {init_shape}, model.path has {shape}")
        weights_path = init_from
    target = None
    if method.needs_target:
        from megadrp.masks import active_families, resolve_target

        target = resolve_target(shape, cfg.pruning.target)
        if not active_families(shape, target):
            raise ConfigError("pruning.target", cfg.pruning.target, "equals the source shape: nothing to prune")

    if not cfg.data.prefix:
        raise ConfigError("data.prefix", cfg.data.prefix, "give the prefix of the training binaries PREFIX_DOMAIN.bin")
    if not cfg.data.domains:
        raise ConfigError("data.domains", cfg.data.domains, "list the domain names, e.g. [code, math, web]")
    if cfg.data.seq_length > shape.max_position_embeddings:
        raise ConfigError("data.seq_length", cfg.data.seq_length,
                          f"exceeds the model's max_position_embeddings ({shape.max_position_embeddings})")
    tokenizer = cfg.data.tokenizer or cfg.model.path
    datasets = load_domain_datasets(cfg.data.prefix, cfg.data.domains, tokenizer=tokenizer)
    eval_datasets = {}
    if cfg.data.eval_prefix:
        eval_datasets = load_domain_datasets(cfg.data.eval_prefix, cfg.data.domains, tokenizer=tokenizer)
    # load_domain_datasets checked every id against the tokenizer; the tokenizer must fit the embedding.
    from megadrp.data.tokenizer import load_tokenizer

    tok_vocab = load_tokenizer(tokenizer).vocab_size
    if tok_vocab > shape.vocab_size:
        raise ConfigError("data.tokenizer", tokenizer, f"has {tok_vocab} tokens but the model's embedding has "
                          f"{shape.vocab_size}; use the model's own tokenizer")
    # The sampler would find this only after the engine is built (minutes at 7B): one sample needs T + 1 tokens.
    short = [f"{d} ({ds.num_tokens} tokens in {ds.bin_file})" for d, ds in datasets.items()
             if ds.num_tokens < cfg.data.seq_length + 1]
    if short:
        raise ConfigError("data.domains", list(cfg.data.domains),
                          f"too few tokens for one training sample of seq_length + 1 = {cfg.data.seq_length + 1}: "
                          f"{', '.join(short)}; add data to that domain, drop it, or lower data.seq_length")
    counts = [float(ds.num_tokens) for ds in datasets.values()]
    from megadrp.data.fingerprint import fingerprint

    teacher = resolve_teacher(cfg, method, shape, tokenizer)
    return RunInputs(method=method, ds_config=ds_config, precision=precision, world_size=world, shape=shape,
                     family=family, weights_path=weights_path, tokenizer_path=tokenizer, datasets=datasets,
                     eval_datasets=eval_datasets, token_counts=counts, target_shape=target, zero_reason=zero_reason,
                     teacher=teacher, reference=resolve_reference(cfg, method, shape, tokenizer, teacher),
                     data_fingerprint={d: fingerprint(ds.prefix) for d, ds in datasets.items()})


def resolve_teacher(cfg, method, student_shape, student_tokenizer: str) -> Optional[TeacherSpec]:
    """The KD teacher of this run, or None when distillation is off (``distill.alpha`` = 0). An empty
    ``distill.teacher`` means what the method's spec says (docs/TRAINING.md, Distillation)."""
    d = cfg.distill
    if not d.enabled:
        return None
    path = d.teacher
    if not path:
        if method.empty_teacher == SELF_TEACHER:
            return TeacherSpec("self")
        if method.empty_teacher != SOURCE_TEACHER:
            raise ConfigError("distill.teacher", path, f"{cfg.mode} mode needs the teacher's Hugging Face folder")
        path = cfg.model.path
    return frozen_model_spec(path, "distill.teacher", cfg, student_shape, student_tokenizer)


def resolve_reference(cfg, method, student_shape, student_tokenizer: str,
                      teacher: Optional[TeacherSpec]) -> Optional[TeacherSpec]:
    """The model whose held-out loss becomes DRO's initial l_ref, or None for the starting model itself (also when
    the rule needs no reference, or references are configured). megadrp/distill/source_reference.py says why a
    method that starts from a cut model measures the source (its frozen teacher) instead."""
    d = cfg.dro
    if d.method == "constant" or d.reference_losses or d.family_params:
        return None
    path = d.reference_model
    if not path and method.reference_from_teacher and teacher is not None and teacher.kind == "frozen":
        return teacher
    if not path or path == cfg.model.path:
        return None
    return frozen_model_spec(path, "dro.reference_model", cfg, student_shape, student_tokenizer)


def _fingerprint(tokenizer: str, what: str, path: str, field: str) -> str:
    from megadrp.data.tokenizer import TokenizerError, load_tokenizer

    try:
        return load_tokenizer(tokenizer).fingerprint
    except TokenizerError as err:
        raise ConfigError(field, path, f"the {what} tokenizer cannot be loaded to compare the two "
                          f"vocabularies ({err})") from err


def frozen_model_spec(path: str, field: str, cfg, student_shape, student_tokenizer: str) -> TeacherSpec:
    """A frozen model beside the student (the KD teacher, or the model DRO's reference losses are measured on):
    checked to be a HF folder with the student's vocabulary and tokenizer, long enough for the data."""
    from megadrp.model import read_shape

    if not Path(path, "config.json").is_file():
        raise ConfigError(field, path, "is not a Hugging Face model folder (no config.json there); "
                          "give the model's folder, e.g. the unpruned source model")
    shape, family = read_shape(path, "auto")
    if shape.vocab_size != student_shape.vocab_size:
        raise ConfigError(field, path, f"has a vocabulary of {shape.vocab_size} logits, the student "
                          f"({cfg.model.path}) has {student_shape.vocab_size}: it must score the same tokens")
    if cfg.data.seq_length > shape.max_position_embeddings:
        raise ConfigError("data.seq_length", cfg.data.seq_length, f"exceeds the max_position_embeddings "
                          f"({shape.max_position_embeddings}) of {field} ({path})")
    if _fingerprint(path, "other model's", path, field) != _fingerprint(student_tokenizer, "student's", path, field):
        raise ConfigError(field, path, f"has a different tokenizer from the student's ({student_tokenizer}): the "
                          f"same ids would be different tokens; use a model with the student's tokenizer")
    return TeacherSpec("frozen", path, shape, family)
