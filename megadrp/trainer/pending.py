"""The numbers of training steps kept on the device until the trainer needs them on the host.

A step's loss, per-domain loss sums and token counts, the method's loss terms and its expected sparsity are
device tensors. Reading any of them on the host (``float``, ``.item()``, ``.cpu()``) waits for the device to
finish everything queued so far, so the host stops running ahead and the GPU idles while the next kernels are
launched: on a small model (SmolLM2-135M) the step is launch-bound and every such wait is lost time. The trainer
therefore appends each step's tensors here and reads them back in ONE transfer only where it must: at a log
step, a DRO update step, before a checkpoint, at the end. The reweighting rule then sees every step's
observation in step order, exactly as if it had read them one step at a time (docs/TRAINING.md, "Speed").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch


@dataclass
class StepNumbers:
    """One step's numbers, on the device (``PendingSteps.add``) or read back to the host (``read``)."""

    step: int
    lr: float
    tokens: int                                  # known on the host: accumulation x micro x seq x world size
    loss_sum: torch.Tensor                       # [k] per-domain token-loss sums over every rank
    count: torch.Tensor                          # [k] per-domain token counts
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)  # the method's loss terms, per-micro means
    sparsity: Optional[torch.Tensor] = None      # the method's expected sparsity, or None
    kd_loss: Optional[torch.Tensor] = None       # distillation's per-token KD, or None
    skipped: bool = False                        # the spike guard skipped the step (its weights did not move)


def _scalar(x) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.tensor(float(x))
    return t.detach().reshape(-1).to(torch.float64)


class PendingSteps:
    """Steps not yet read back; ``read()`` moves all their numbers to the host in one copy and clears them."""

    def __init__(self):
        self._steps: List[StepNumbers] = []

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, numbers: StepNumbers) -> None:
        self._steps.append(numbers)

    def read(self) -> List[StepNumbers]:
        """Every pending step with host (CPU float64) tensors, in step order: one device-to-host copy in all."""
        steps, self._steps = self._steps, []
        if not steps:
            return []
        parts = []
        for s in steps:
            parts += [_scalar(s.loss_sum), _scalar(s.count)] + [_scalar(v) for v in s.extras.values()]
            parts += [_scalar(v) for v in (s.sparsity, s.kd_loss) if v is not None]
        devices = {p.device for p in parts}
        if len(devices) > 1:  # a CPU scalar among device tensors: gather on the device, then copy once
            dev = next(d for d in devices if d.type != "cpu")
            parts = [p.to(dev, non_blocking=True) for p in parts]
        flat = torch.cat(parts).cpu()
        out, offset = [], 0

        def take(n: int) -> torch.Tensor:
            nonlocal offset
            offset += n
            return flat[offset - n:offset]

        for s in steps:
            k = s.loss_sum.numel()
            loss_sum, count = take(k), take(k)
            extras = {name: take(1)[0] for name in s.extras}
            sparsity = None if s.sparsity is None else take(1)[0]
            kd = None if s.kd_loss is None else take(1)[0]
            out.append(StepNumbers(s.step, s.lr, s.tokens, loss_sum, count, extras, sparsity, kd, s.skipped))
        return out
