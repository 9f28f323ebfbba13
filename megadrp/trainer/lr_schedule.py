"""Learning-rate schedule computed on the client: linear warm-up, then cosine decay to a floor.

DeepSpeed's config schedulers (WarmupLR, WarmupCosineLR) overwrite the LR of every parameter group, so they
cannot leave the mask and multiplier groups alone; megadrp computes the weight LR here and writes it into the
engine optimizer's groups itself. The mask / multiplier groups (SideOptimizer) follow the same factor
(lr_at / peak), as the reference's scheduler spans every group, unless ``pruning.side_lr_schedule: constant``.
"""
from __future__ import annotations

import math


def lr_at(step: int, max_steps: int, peak: float, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> float:
    """LR for optimizer step ``step`` (0-based): warm-up reaches ``peak`` at step warmup_steps - 1."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    floor = peak * min_lr_ratio
    span = max(max_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    """Write ``lr`` into every group of the (DeepSpeed-wrapped) weight optimizer."""
    for group in optimizer.param_groups:
        group["lr"] = lr
