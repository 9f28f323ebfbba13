"""Sheared-LLaMA's dynamic batch loading: an exponentiated update on the clamped excess loss.

Every update: w <- softmax(log w + max(l - l_ref, 0)), then (1 - c) w + c / k. l is the per-domain held-out
loss, as in the paper: the rule sets ``uses_heldout_losses``, so a trainer with held-out data evaluates at each
update step and passes ``eval_losses``; without them (no held-out data) l is the interval's mean training
loss. l_ref is the same held-out reference DRPruning gets (the trainer measures the starting model's loss
when none is configured; the paper used scaling-law predictions for the target size: pass those as
``dro.reference_losses``). Without either, a domain's first observed loss becomes its reference. The clamp
max(., 0) is the paper's (Algorithm 1); the released code (dynamic_loading_callback.py) omits it, so there a
domain already below its reference is pushed down; megadrp keeps the paper's. A domain with no observation
gets no push (excess 0), not a loss of 0. The rule is multiplicative and unbounded, so it can
run away (one domain reached 0.94 of the mix in LLM-Shearing issues 15 and 36): ``log_stats`` exposes
max_weight and entropy so that shows in the logs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .base import DomainReweighter, _t


class ShearedReweighter(DomainReweighter):
    name = "sheared"
    _synced = ("_weights", "ref")
    uses_heldout_losses = True

    def __init__(self, domains: Sequence[str], ratio: np.ndarray, update_interval: int, total_steps: int,
                 reference_losses: Optional[Sequence[float]] = None, smoothing: float = 1e-4, group=None):
        super().__init__(domains, ratio, update_interval, total_steps, group)
        self.smoothing = float(smoothing)
        self.ref = (np.full(self.num_domains, np.nan) if reference_losses is None
                    else np.asarray(reference_losses, dtype=np.float64).copy())
        if self.ref.shape != (self.num_domains,):
            raise ValueError(f"need one reference loss per domain ({self.num_domains}), got {reference_losses}")
        self.last_excess = np.zeros(self.num_domains)

    def current_losses(self):
        """The losses the rule reads: held-out ones if given this interval, else training means."""
        if self.eval_losses is not None:
            l = self.eval_losses.copy()
            present = np.isfinite(l)
            return np.where(present, l, 0.0), present
        return self.interval_means()

    def _update(self, step: int) -> np.ndarray:
        l, present = self.current_losses()
        fresh = present & np.isnan(self.ref)
        self.ref[fresh] = l[fresh]
        known = present & np.isfinite(self.ref)
        excess = np.where(known, np.maximum(l - np.where(known, self.ref, 0.0), 0.0), 0.0)
        self.last_excess = excess
        logits = np.log(np.maximum(self._weights, 1e-300)) + excess
        w = np.exp(logits - logits.max())
        w /= w.sum()
        return (1.0 - self.smoothing) * w + self.smoothing / self.num_domains

    def log_stats(self):
        stats = super().log_stats()
        stats.update({f"dro/excess/{d}": float(x) for d, x in zip(self.domains, self.last_excess)})
        return stats

    def _rule_state(self) -> dict:
        return {"ref": _t(self.ref), "last_excess": _t(self.last_excess)}

    def _load_rule_state(self, state: dict):
        self.ref = state["ref"].double().numpy().copy()
        self.last_excess = state["last_excess"].double().numpy().copy()
