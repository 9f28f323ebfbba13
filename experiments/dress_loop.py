"""A plain-torch DReSS regularisation loop (one process, no DeepSpeed): tests and small CPU experiments.

The DeepSpeed trainer's dress mode runs the same DressRegularizer inside its own step loop; this loop exists
so that the method can be measured on a laptop-sized model without a launcher.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from megadrp.dress.regularizer import DressRegularizer
from megadrp.kernels.cross_entropy import token_cross_entropy


def lm_loss(model, tokens: torch.Tensor, masks=None) -> torch.Tensor:
    """Mean next-token cross-entropy of tokens [B, T+1]."""
    return token_cross_entropy(model(tokens[:, :-1], masks), tokens[:, 1:]).mean()


def train_steps(model, batches: Iterator[torch.Tensor], steps: int, lr: float,
                regularizer: Optional[DressRegularizer] = None, log: Optional[Callable[[dict], None]] = None,
                log_interval: int = 10, weight_decay: float = 0.0, grad_clip: float = 1.0) -> list[dict]:
    """AdamW(0.9, 0.95) for ``steps`` steps on LM loss (+ the regulariser's term); returns the logged records.

    Constant LR: the penalty's pull is set by its own schedule, and a decaying LR would stall the slices'
    descent towards zero just as the coefficient peaks.
    """
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    history = []
    for step in range(steps):
        tokens = next(batches)
        loss = lm_loss(model, tokens)
        total = loss + (regularizer.loss_term(step) if regularizer is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if regularizer is not None:
            regularizer.after_step(step)
        if step % log_interval == 0 or step == steps - 1:
            rec = {"step": step, "lm_loss": float(loss.detach())}
            if regularizer is not None:
                rec.update(regularizer.metrics())
            history.append(rec)
            if log:
                log(rec)
    return history


@torch.no_grad()
def mean_loss(model, batches: list, masks=None) -> float:
    was = model.training
    model.eval()
    value = sum(float(lm_loss(model, b, masks)) for b in batches) / len(batches)
    model.train(was)
    return value
