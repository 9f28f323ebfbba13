"""The teacher of the KD term: which model it is (resolved and checked before any process group exists) and
how it runs.

Two kinds (docs/TRAINING.md, Distillation):

* ``self`` -- prune mode with an empty ``distill.teacher``: the student's own engine run with ``masks=None``
  (every mask at 1) under ``torch.no_grad`` on the same micro-batch. No second copy of the weights and one
  extra forward; the teacher is the *current* unmasked weights, which move with the weight LR (the masks pull
  the masked model towards the unmasked one, the unmasked one is not held at the source).
* ``frozen`` -- an explicit folder, cpt, and dress mode with an empty teacher (DReSS never masks the forward,
  so the student's all-ones pass *is* the student and the KL would be identically 0: dress distils from a
  frozen copy of model.path, the source). Built as the student is built (megadrp/trainer/engine.py):
  constructed under ``zero.Init`` so ZeRO-3 shards it, weights streamed in on rank 0, in the run precision,
  ``requires_grad`` off, then ``deepspeed.initialize`` with no optimizer, which under ZeRO-3 gives a
  parameter-offload engine (partitioned weights gathered layer by layer by its hooks, no optimizer state).
  Under ZeRO 0-2 the weights are replicated anyway: the frozen module is used directly.

The teacher is never checkpointed: its path is in the run config, and a resumed run rebuilds it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megadrp.config import ConfigError


@dataclass
class TeacherSpec:
    kind: str  # "self" or "frozen"
    path: str = ""
    shape: Optional[object] = None
    family: Optional[object] = None


def _fingerprint(tokenizer: str, what: str, path: str, field: str) -> str:
    from megadrp.data.tokenizer import TokenizerError, load_tokenizer

    try:
        return load_tokenizer(tokenizer).fingerprint
    except TokenizerError as err:
        raise ConfigError(field, path, f"the {what} tokenizer cannot be loaded to compare the two "
                          f"vocabularies ({err})") from err


def resolve_teacher(cfg, student_shape, student_tokenizer: str) -> Optional[TeacherSpec]:
    """Pre-flight: the teacher of this run, or None when distillation is off (``distill.alpha`` = 0)."""
    d = cfg.distill
    if not d.enabled:
        return None
    path = d.teacher
    if not path:
        if cfg.mode == "prune":
            return TeacherSpec("self")
        if cfg.mode != "dress":
            raise ConfigError("distill.teacher", path, f"{cfg.mode} mode needs the teacher's Hugging Face folder")
        path = cfg.model.path
    return frozen_model_spec(path, "distill.teacher", cfg, student_shape, student_tokenizer)


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


class SelfTeacher:
    """The student's engine with every mask at 1, no gradient."""

    def __init__(self, engine):
        self.engine = engine

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.engine(inputs, None)


class FrozenTeacher:
    """A frozen model sharded like the student (ZeRO-3 parameter offload engine, no optimizer)."""

    def __init__(self, spec: TeacherSpec, plan, model_cfg, device):
        from megadrp.trainer import engine as engine_mod

        model = engine_mod.build_model(spec.shape, spec.family, plan.ds_config, plan.precision, model_cfg)
        engine_mod.load_source_weights(model, spec.path, spec.family, plan.ds_config)
        model.requires_grad_(False)
        if engine_mod.zero_stage(plan.ds_config) == 3:
            import deepspeed

            model, _, _, _ = deepspeed.initialize(model=model, config=plan.ds_config, dist_init_required=False)
        else:
            model = model.to(device)
        model.eval()  # DeepSpeedEngine.eval returns None, not the module
        self.model = model
        self.path = spec.path

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs, None)
