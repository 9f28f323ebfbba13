"""Lagrangian constraint terms pulling each family's expected sparsity to its target, with maximised multipliers.

L_f = mean(lambda1_f * (s_f - t_f) + lambda2_f * (s_f - t_f)^2), summed over active families. The multipliers
start at 0 and go up the gradient: either torch AdamW(maximize=True), or register_ascent_hooks() (DeepSpeed's
Adam ignores maximize; a gradient-negating hook works with every optimizer). Multipliers have shape (1,):
ZeRO-3 and DeepSpeed's initialize crash on 0-dim parameters.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Union

import torch
import torch.nn as nn


def negate_gradients(params: Iterable[torch.Tensor]) -> List[torch.utils.hooks.RemovableHandle]:
    """Register hooks that flip each parameter's gradient, turning any minimiser into gradient ascent."""
    return [p.register_hook(torch.neg) for p in params]


class Lagrangian(nn.Module):
    def __init__(self, families: Iterable[str]):
        super().__init__()
        self.families = tuple(families)
        self.lambda1 = nn.ParameterDict({f: nn.Parameter(torch.zeros(1)) for f in self.families})
        self.lambda2 = nn.ParameterDict({f: nn.Parameter(torch.zeros(1)) for f in self.families})

    def terms(self, expected: Dict[str, torch.Tensor],
              target: Dict[str, Union[float, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        out = {}
        for f in self.families:
            diff = expected[f] - target[f]
            out[f] = (self.lambda1[f] * diff + self.lambda2[f] * diff.pow(2)).mean()
        return out

    def forward(self, expected: Dict[str, torch.Tensor], target: Dict[str, Union[float, torch.Tensor]]) -> torch.Tensor:
        """Sum over families of L_f; expected from MaskSet.expected_sparsity, target from target_sparsity."""
        return torch.stack(list(self.terms(expected, target).values())).sum()

    def register_ascent_hooks(self) -> List[torch.utils.hooks.RemovableHandle]:
        return negate_gradients(self.parameters())

    def values(self) -> Dict[str, float]:
        """{'family.lambda1': v, 'family.lambda2': v} for the metrics file."""
        out = {}
        for f in self.families:
            out[f"{f}.lambda1"] = float(self.lambda1[f].detach())
            out[f"{f}.lambda2"] = float(self.lambda2[f].detach())
        return out
