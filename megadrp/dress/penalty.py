"""The DReSS penalty on the selected units' coupled slices, computed where ZeRO-3 parameters are whole.

Under ZeRO-3 a parameter holds its data only while its owning module runs forward. So the penalty is
gathered by forward hooks, registered with ``prepend=True`` so that they run *before* DeepSpeed's
release hook, on each module that owns a penalised parameter: each hook stores per-unit sums
(|w| or w^2) of its slices; ``total()`` combines them after the forward into one differentiable
scalar, which the trainer adds to the LM loss times the scheduled coefficient. Gradients reach the shards
through the same autograd path as the module's own ops. A root pre-hook clears the store at every
forward, so activation-checkpoint recomputation cannot double count.

Norms (``dress.penalty``):
- ``l2``: sum of squares of every selected slice (targeted weight decay).
- ``l1``: sum of absolute values.
- ``group_l2``: sum over units of the L2 norm of the unit's concatenated slices (group lasso): it pushes
  whole units to exactly zero rather than shrinking them proportionally.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from megadrp.dress.units import Slice, slice_stats

NORMS = ("l2", "l1", "group_l2")


class SlicePenalty:
    """Penalty over ``slices`` of ``model``'s parameters; ``to_model_name`` maps HF names to the model's names."""

    def __init__(self, model: nn.Module, slices: Iterable[Slice], norm: str = "l2",
                 to_model_name: Optional[Callable[[str], str]] = None):
        if norm not in NORMS:
            raise ValueError(f"dress.penalty = {norm!r}; choose one of {NORMS}")
        self.model, self.norm = model, norm
        self.slices = list(slices)
        to_model_name = to_model_name or (lambda n: n)
        params = dict(model.named_parameters())
        self._units: dict[str, int] = defaultdict(int)
        by_owner: dict[str, list] = defaultdict(list)
        for s in self.slices:
            name = to_model_name(s.param)
            if name not in params:
                raise KeyError(f"penalised parameter {s.param} -> {name} is not in the model")
            owner, _, attr = name.rpartition(".")
            by_owner[owner].append((attr, s))
            self._units[s.group] = max(self._units[s.group], int(s.unit.max()) + 1)
        self._by_owner = dict(by_owner)
        self._store: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._handles: list = []

    # ---- hooks ------------------------------------------------------------------------------------------
    def attach(self) -> "SlicePenalty":
        """Register the hooks (call before ``deepspeed.initialize`` or any time on a plain module)."""
        self.detach()
        self._handles.append(self.model.register_forward_pre_hook(lambda m, a: self._store.clear(), prepend=True))
        for owner, items in self._by_owner.items():
            module = self.model.get_submodule(owner)
            self._handles.append(module.register_forward_hook(self._make_hook(owner, items), prepend=True))
        return self

    def detach(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def _make_hook(self, owner: str, items):
        def hook(module, args, output):
            self._store[owner] = self._stats_of(module, items)
        return hook

    def _stats_of(self, module: nn.Module, items) -> dict:
        out = {}
        for attr, s in items:
            w = getattr(module, attr)
            n = self._units[s.group]
            sq = slice_stats(w, s, n, 2)
            ab = slice_stats(w, s, n, 1) if self.norm == "l1" else None
            prev = out.get(s.group)
            if prev is not None:
                sq = sq + prev[0]
                ab = None if ab is None else ab + prev[1]
            out[s.group] = (sq, ab)
        return out

    # ---- reading ----------------------------------------------------------------------------------------
    def _per_group(self) -> dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]]:
        groups: dict[str, list] = {}
        for stats in self._store.values():
            for g, (sq, ab) in stats.items():
                if g in groups:
                    groups[g] = [groups[g][0] + sq, None if ab is None else groups[g][1] + ab]
                else:
                    groups[g] = [sq, ab]
        return groups

    def total(self) -> torch.Tensor:
        """The penalty of the last forward pass (differentiable); 0 if no hooked module ran."""
        groups = self._per_group()
        if not groups:
            return torch.zeros(())
        if self.norm == "l2":
            return sum(sq.sum() for sq, _ in groups.values())
        if self.norm == "l1":
            return sum(ab.sum() for _, ab in groups.values())
        # group lasso; eps keeps the gradient of sqrt finite once a unit reaches exactly 0
        return sum(torch.sqrt(sq + 1e-12).sum() for sq, _ in groups.values())

    def norms(self) -> dict[str, float]:
        """L2 norm of the selected slices per family (and ``all``) from the last forward, for logging."""
        acc: dict[str, float] = defaultdict(float)
        for g, (sq, _) in self._per_group().items():
            v = float(sq.detach().sum())
            acc[g.split(".")[0]] += v
            acc["all"] += v
        return {k: v ** 0.5 for k, v in acc.items()}

    @torch.no_grad()
    def norms_of(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """The same norms from a full HF-named state dict (no forward needed; CPU, tests, export time)."""
        acc: dict[str, float] = defaultdict(float)
        for s in self.slices:
            v = float(slice_stats(state[s.param], s, self._units[s.group], 2).sum())
            acc[s.group.split(".")[0]] += v
            acc["all"] += v
        return {k: v ** 0.5 for k, v in acc.items()}
