"""Per-token cross-entropy: the one home of the language-model loss.

Training (the step loop, DReSS's Taylor scores, the plain-torch DReSS loop), the trainer's periodic held-out
evaluation and ``megadrp eval`` all take their nats from :func:`token_cross_entropy`, so a loss logged by one
is the same number as the other's on the same tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """fp32 per-token losses with the shape of ``targets`` from logits [..., V] (any dtype)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="none").view(targets.shape)
