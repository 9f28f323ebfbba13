"""The trainer's distillation hook: the teacher's logits on the micro-batch, the blended loss, the logged KD.

Per micro-batch (megadrp/trainer/loop.py): ``run_teacher`` runs the teacher on the student's inputs before
the student's forward (same tokens, no extra data pass); ``blend`` turns the micro-batch's mean LM loss into
(1 - alpha) * LM + alpha * KD, the KD being the per-token KL (megadrp/distill/kd.py) averaged with the same
per-token weights as the LM term (a plain mean over the micro-batch's tokens). The DRO tracker keeps receiving
the LM per-token loss: the domain reweighting signal does not change with distillation. ``step_mean`` is the
step's KD over every token of every rank (one all-reduce per step), logged as ``kd_loss``.
"""
from __future__ import annotations

from typing import Optional

import torch

from megadrp.distill.kd import kd_per_token
from megadrp.distill.teacher import FrozenTeacher, SelfTeacher


class Distiller:
    def __init__(self, teacher, alpha: float, temperature: float, top_k: int, group=None):
        self.teacher, self.alpha, self.temperature, self.top_k = teacher, alpha, temperature, top_k
        self.group = group  # the trainer's DataParallelGroup (None: this process alone)
        self._sum = torch.zeros((), dtype=torch.float64)
        self._count = 0
        self._teacher_logits: Optional[torch.Tensor] = None

    def run_teacher(self, inputs: torch.Tensor) -> None:
        """The teacher's logits on this micro-batch, held until :meth:`blend` (then freed before the backward)."""
        self._teacher_logits = self.teacher.logits(inputs)

    def blend(self, lm_mean: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        teacher_logits, self._teacher_logits = self._teacher_logits, None
        kd_tok = kd_per_token(student_logits, teacher_logits, self.temperature, self.top_k)
        self._sum = self._sum.to(kd_tok.device) + kd_tok.detach().double().sum()  # no host sync per micro-batch
        self._count += kd_tok.numel()
        return (1.0 - self.alpha) * lm_mean + self.alpha * kd_tok.mean()

    def step_mean(self) -> torch.Tensor:
        """The step's KD per token over all ranks and micro-batches (a 0-dim device tensor: the trainer reads it
        back with the step's other numbers); resets the accumulator."""
        # torch.full, not torch.tensor: a fill kernel, where a host-to-device copy of the count would wait
        count = torch.full((), float(self._count), dtype=torch.float64, device=self._sum.device)
        both = torch.stack([self._sum, count])
        if self.group is not None:
            both = self.group.all_reduce_sum(both)
        self._sum, self._count = torch.zeros((), dtype=torch.float64), 0
        return both[0] / both[1].clamp(min=1)


def make_distiller(ctx) -> Optional[Distiller]:
    """The run's Distiller from its RunContext (None when distill.alpha = 0: no teacher is built and no extra
    forward runs). Pre-flight resolved the teacher: ``ctx.inputs.teacher``."""
    spec = ctx.inputs.teacher
    if spec is None:
        return None
    d = ctx.cfg.distill
    if spec.kind == "self":
        teacher = SelfTeacher(ctx.engine)
    else:
        teacher = FrozenTeacher(spec, ctx.inputs, ctx.cfg.model, ctx.device)
    return Distiller(teacher, d.alpha, d.temperature, d.top_k, group=ctx.group)
