"""What a method is, in one record: the :class:`MethodSpec` each method file declares as ``SPEC``.

Everything outside a method that used to match on its name reads the spec instead: the command line
(``megadrp NAME``, its help line), the config (``mode`` names a registered spec; the spec's ``check`` adds its
cross-section rules), pre-flight (whether a pruning target is resolved, which teacher an empty
``distill.teacher`` means, which model DRO's reference losses are measured on), the memory plan (whether the
forward is masked) and the model card (the method's sentence, recorded in every checkpoint so that an export
needs nothing but the checkpoint). The registry is megadrp.methods.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from megadrp.trainer.build import NO_TEACHER, SELF_TEACHER, SOURCE_TEACHER  # noqa: F401 - the spec's vocabulary


@dataclass(frozen=True)
class MethodSpec:
    name: str      # cfg.mode, the subcommand `megadrp NAME`, the checkpoint's "mode"
    summary: str   # the subcommand's help line
    card: str      # the model card's method sentence; "{dro}" becomes the reweighting rule
    mode: Optional[type] = None  # the megadrp.methods.base.Mode the step loop runs; None: it does not train
    main: Optional[Callable[[list], int]] = None  # the command of a method that does not train
    section: Optional[str] = None  # its own RunConfig section (its settings and their docs live there)
    needs_target: bool = False     # pre-flight resolves and checks pruning.target against the source
    masked_forward: bool = False   # sampled masks multiply the training forward (mask parameters in the plan)
    empty_teacher: str = NO_TEACHER  # what an empty distill.teacher means (SELF_, SOURCE_ or NO_TEACHER)
    reference_from_teacher: bool = False  # DRO's l_ref on the frozen teacher (the source the cut came from)
    check: Optional[Callable] = None  # check(cfg): rules across config sections that only this method has

    @property
    def trains(self) -> bool:
        return self.mode is not None

    def card_sentence(self, dro_method: Optional[str]) -> str:
        return self.card.format(dro=dro_method or "none")
