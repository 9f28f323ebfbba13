"""The DRO rules' initial reference losses l_ref, when none are configured: which model's held-out loss, and its
measurement at the start of a run. It lives beside the teacher because it is the same frozen source model, in cpt
mode the very same object; train.py hands ``measure`` to the trainer, which imports neither. Which model it is
(``dro.reference_model``, else what the method's spec says) is resolved and checked by pre-flight
(megadrp.trainer.build.resolve_reference).

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

from .teacher import FrozenTeacher


def measure(ctx, heldout, teacher=None) -> tuple[Optional[dict], str]:
    """Held-out loss per domain of the reference model ({domain: nats per token}) and what that model was; None
    for the losses when it is the starting model, which the trainer scores itself. ``heldout``: the trainer's
    HeldoutEval; ``teacher``: the distiller's teacher, reused when it is the reference model (no second copy)."""
    spec = ctx.inputs.reference
    if spec is None:
        return None, "starting model" + (", no source given: set dro.reference_model to the source"
                                         if ctx.inputs.method.reference_from_teacher else "")
    shared = isinstance(teacher, FrozenTeacher) and teacher.path == spec.path
    model = teacher if shared else FrozenTeacher(spec, ctx.inputs, ctx.cfg.model, ctx.device)
    losses = heldout.run(model.model, None, ctx.device)["eval_loss"]
    model.model.eval()  # HeldoutEval puts what it scored back in train mode
    if not shared:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return losses, spec.path + (" (the distillation teacher)" if shared else "")
