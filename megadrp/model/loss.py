"""The language-model loss, defined once: per-token next-token cross-entropy in float32.

Training (the step loop, DReSS's Taylor scores, the plain-torch loop), the trainer's periodic held-out
evaluation and ``megadrp eval`` all take their nats from :func:`token_cross_entropy`, so a loss logged by
one is the same number as the other's on the same tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL in nats, float32, shaped like ``targets``: ``logits`` [..., V] predict ``targets`` [...].

    float32 whatever the logits' dtype: bf16 log-softmax sums drift over thousands of tokens.
    """
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="none").view(targets.shape)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean NLL of ``tokens`` [B, T+1] given the logits [B, T, V] of their first T positions."""
    return token_cross_entropy(logits, tokens[:, 1:]).mean()
