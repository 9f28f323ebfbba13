"""The DRO rules' initial reference losses l_ref, when none are configured: which model's held-out loss, and its
measurement at the start of a run. It lives beside the teacher because it is the same frozen source model, in cpt
mode the very same object; train.py hands ``measure`` to the trainer, which imports neither.

docs/METHOD.md: the initial l_ref is a scaling-law fit over the source family's sizes if known
(``dro.family_params``), else *the source model's own loss*. In prune and dress mode the run starts from the
source, so its own unmasked loss is that. In cpt mode the run starts from the cut model: its own loss as the
reference makes Sheared-LLaMA's rule inert (every excess is clamped to 0 once recovery lowers the loss, so it
recovers under a constant mix) and points DRPruning's first updates at the cut model's losses rather than the
source's. So cpt measures the source: ``dro.reference_model``, or else the frozen distillation teacher (the source
the cut came from; no second copy), or else, with neither, the cut model itself, said in the log.

The model is built as a frozen teacher is (megadrp/distill/teacher.py: sharded like the student under ZeRO-3),
scored on the held-out split by the same HeldoutEval as the periodic evaluation, and dropped again.
"""
from __future__ import annotations

import gc
from typing import Optional

import torch

from .teacher import FrozenTeacher, TeacherSpec, frozen_model_spec


def resolve_reference_model(cfg, student_shape, student_tokenizer: str,
                            teacher: Optional[TeacherSpec]) -> Optional[TeacherSpec]:
    """Pre-flight: the model whose held-out loss becomes l_ref, or None for the starting model itself (also when
    the rule needs no reference, or references are configured)."""
    d = cfg.dro
    if d.method == "constant" or d.reference_losses or d.family_params:
        return None
    path = d.reference_model
    if not path and cfg.mode == "cpt" and teacher is not None and teacher.kind == "frozen":
        return teacher
    if not path or path == cfg.model.path:
        return None
    return frozen_model_spec(path, "dro.reference_model", cfg, student_shape, student_tokenizer)


def measure(trainer) -> tuple[Optional[dict], str]:
    """Held-out loss per domain of the reference model ({domain: nats per token}) and what that model was; None
    for the losses when it is the starting model, which the trainer scores itself."""
    spec = trainer.plan.reference
    if spec is None:
        return None, "starting model" + (", no source given: set dro.reference_model to the source"
                                         if trainer.cfg.mode == "cpt" else "")
    teacher = getattr(trainer.distill, "teacher", None)
    shared = isinstance(teacher, FrozenTeacher) and teacher.path == spec.path
    model = teacher if shared else FrozenTeacher(spec, trainer.plan, trainer.cfg.model, trainer.device)
    losses = trainer.heldout.run(model.model, None, trainer.device)["eval_loss"]
    model.model.eval()  # HeldoutEval puts what it scored back in train mode
    if not shared:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return losses, spec.path + (" (the distillation teacher)" if shared else "")
