"""``cpt``: continued pretraining of a dense (exported) model; domain reweighting stays on in the loop.

It is how a cut model recovers (after ``oneshot``, ``dress`` or an exported ``prune`` run). It starts from the cut
model, so distillation needs the teacher named, and DRO's reference losses are measured on that frozen teacher
(the source the cut came from) rather than on the cut model (megadrp/distill/source_reference.py says why).
"""
from __future__ import annotations

from megadrp.config import ConfigError
from megadrp.methods.base import Mode
from megadrp.methods.spec import NO_TEACHER, MethodSpec


class CptMode(Mode):
    """Dense training with no extras: every hook is the base's."""

    name = "cpt"


def check(cfg) -> None:
    if cfg.distill.enabled and not cfg.distill.teacher:
        raise ConfigError("distill.teacher", cfg.distill.teacher,
                          "cpt has no source model to distil from: give the teacher's Hugging Face folder "
                          "(e.g. the unpruned model), or set distill.alpha=0")


SPEC = MethodSpec(
    name="cpt", summary="Continued pretraining of an exported (dense) model with domain reweighting.",
    card="continued pretraining of a pruned model, data reweighting: {dro}",
    mode=CptMode, empty_teacher=NO_TEACHER, reference_from_teacher=True, check=check)
