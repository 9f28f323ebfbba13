"""Hard-concrete (L0) gate math of Louizos et al., as used by Sheared-LLaMA: pure functions over log_alpha.

Constants and formulas follow docs METHOD section 1. Scores are not clamped to [eps, 1-eps] (the reference
code did), so that fully open / fully closed gates count exactly 1 / 0 in the expected-parameter count.
"""
from __future__ import annotations

import math

import torch

GAMMA, ZETA, BETA, EPS = -0.1, 1.1, 2.0 / 3.0, 1e-6
# log_alpha is kept in [ln 0.01, ln 100] after init and after every optimizer step (reference behaviour).
LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-2), math.log(1e2)
# Deterministic masks use sigmoid(log_alpha / beta * 0.8): the reference's "magical number".
DETERMINISTIC_SCALE = 0.8


def sample(log_alpha: torch.Tensor, u: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """z = clamp(sigmoid((log u - log(1-u) + log_alpha)/beta) * (zeta-gamma) + gamma, 0, 1); u in (eps, 1-eps)."""
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def score(log_alpha: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """P(z > 0) = 1 - sigmoid(beta * log(-gamma/zeta) - log_alpha)."""
    return 1.0 - torch.sigmoid(beta * math.log(-GAMMA / ZETA) - log_alpha)


def deterministic(log_alpha: torch.Tensor, num_zeros: int, beta: float = BETA,
                  protected: torch.Tensor | None = None) -> torch.Tensor:
    """soft = sigmoid(log_alpha / beta * 0.8) with the num_zeros smallest of each row (last dim) set to 0.

    1-D input: the n smallest overall; 2-D [L, n]: the n smallest of each row, so every layer keeps the same
    width. Kept units keep their soft value (export folds it into the weights). ``protected`` units (a bool
    tensor like log_alpha) are never zeroed and are exactly 1, as they were in every training sample.
    """
    soft = torch.sigmoid(log_alpha.detach() / beta * DETERMINISTIC_SCALE)
    if protected is not None:
        soft = torch.where(protected, torch.ones_like(soft), soft)
    if num_zeros <= 0:
        return soft
    rank = soft if protected is None else soft.masked_fill(protected, float("inf"))
    idx = rank.topk(num_zeros, dim=-1, largest=False).indices
    return soft.scatter(-1, idx, 0.0)
