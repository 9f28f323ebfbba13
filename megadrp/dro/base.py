"""The interface every domain-reweighting rule follows, the initial data ratios, and the constant rule.

A rule sees only global per-domain vectors: the trainer calls ``observe`` after each optimizer step with
the tracker's reduced (loss_sum, count) and context (current expected sparsity, held-out losses when it
has them), and ``update`` every ``update_interval`` steps (``maybe_update`` does the modulo). Because every
rank observes the same globally reduced numbers, every rank computes the same update; the state vectors
that feed the sampler are then broadcast from rank 0 anyway, so ranks stay bit-identical even if their
floating-point libraries differ (the reference code updated only rank 0's sampler and the ranks diverged).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .tracker import _distributed, broadcast_vector, mean_losses


def initial_ratio(kind: str, token_counts: Sequence[float], temperature: float = 0.3) -> np.ndarray:
    """The reference data ratio p0: 'natural' (token shares), 'uniform', or 'temperature' (tokens^t)."""
    counts = np.asarray(token_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or np.any(counts < 0):
        raise ValueError(f"token_counts must be a non-empty list of non-negative numbers, got {token_counts}")
    if kind == "uniform":
        p = np.ones_like(counts)
    elif kind == "natural":
        p = counts.copy()
    elif kind == "temperature":
        p = np.where(counts > 0, counts, 0.0) ** temperature
    else:
        raise ValueError(f"unknown initial ratio {kind!r}: expected natural, uniform or temperature")
    if p.sum() <= 0:
        raise ValueError("token_counts are all zero: the natural or temperature ratio is undefined")
    return p / p.sum()


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy().reshape(-1)
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64).copy())


class DomainReweighter(ABC):
    """Base of the rules: observation bookkeeping, weights, logging, state, cross-rank sync."""

    name = "base"
    #: array attributes broadcast from rank 0 after every update (subclasses extend)
    _synced = ("_weights",)

    def __init__(self, domains: Sequence[str], ratio: np.ndarray, update_interval: int, total_steps: int,
                 group=None):
        self.domains: List[str] = list(domains)
        k = len(self.domains)
        if ratio.shape != (k,):
            raise ValueError(f"ratio has shape {ratio.shape}, expected ({k},) for domains {self.domains}")
        self.update_interval = int(update_interval)
        self.total_steps = max(int(total_steps), 1)
        self.group = group
        self.initial = ratio.copy()
        self._weights = ratio.copy()
        self.tokens_seen = np.zeros(k)
        self.interval_sum = np.zeros(k)
        self.interval_count = np.zeros(k)
        self.sparsity: Optional[float] = None
        self.eval_losses: Optional[np.ndarray] = None  # latest held-out losses since the last update (NaN = none)
        self.num_updates = 0
        self.last_step = 0

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def weights(self) -> np.ndarray:
        return self._weights.copy()

    def observe(self, step: int, loss_sum, count, sparsity: Optional[float] = None, eval_losses=None, **ctx):
        """Feed one step's global per-domain loss sums and token counts.

        sparsity: the model's current expected sparsity as a fraction *removed* in [0, 1] (one number for the
        whole model, e.g. 1 - expected params / source params); rules that need it use the kept fraction.
        eval_losses: per-domain held-out losses (NaN or None for a domain not evaluated), when the trainer has them.
        """
        loss_sum, count = _to_numpy(loss_sum), _to_numpy(count)
        if loss_sum.shape != (self.num_domains,) or count.shape != (self.num_domains,):
            raise ValueError(f"expected {self.num_domains} per-domain values, got {loss_sum.shape}, {count.shape}")
        self.tokens_seen += count
        self.interval_sum += loss_sum
        self.interval_count += count
        if sparsity is not None:
            self.sparsity = float(sparsity)
        if eval_losses is not None:
            self.eval_losses = _to_numpy(eval_losses)
        self.last_step = int(step)
        self._observe(step, *mean_losses(loss_sum, count))

    #: True for a rule that reads held-out losses at each update (Sheared-LLaMA): the trainer then runs its
    #: held-out evaluation at the rule's update steps and passes the result as ``eval_losses``.
    uses_heldout_losses = False

    def needs_reference_losses(self) -> bool:
        """True for a rule that measures excess loss (it has ``ref``) and was given no per-domain references."""
        ref = getattr(self, "ref", None)
        return ref is not None and bool(np.all(np.isnan(ref)))

    def set_reference_losses(self, losses: Sequence[float]) -> None:
        """The initial l_ref (e.g. the starting model's own held-out loss per domain, measured by the trainer)."""
        if getattr(self, "ref", None) is None:
            raise NotImplementedError(f"the {self.name} rule has no reference losses")
        losses = np.asarray(losses, dtype=np.float64)
        if losses.shape != self.ref.shape or not np.all(np.isfinite(losses)):
            raise ValueError(f"need one finite reference loss per domain ({self.num_domains}), got {losses}")
        self.ref = losses.copy()

    def _observe(self, step: int, mean: np.ndarray, present: np.ndarray):
        """Per-step hook of a rule (mean is 0 where present is False)."""

    def interval_means(self):
        """Mean training loss per domain since the last update, and which domains were seen."""
        return mean_losses(self.interval_sum, self.interval_count)

    def update(self, step: int) -> np.ndarray:
        """New weights from the observations so far; identical on every rank. Returns a copy."""
        self._weights = np.asarray(self._update(int(step)), dtype=np.float64)
        self._sync()
        self.interval_sum[:] = 0.0
        self.interval_count[:] = 0.0
        self.eval_losses = None
        self.num_updates += 1
        return self.weights

    def maybe_update(self, step: int) -> Optional[np.ndarray]:
        """``update(step)`` when step is a positive multiple of update_interval, else None."""
        if step > 0 and step % self.update_interval == 0:
            return self.update(step)
        return None

    @abstractmethod
    def _update(self, step: int) -> np.ndarray:
        ...

    def _sync(self):
        if not _distributed(self.group):
            return
        parts = [getattr(self, name) for name in self._synced]
        flat = broadcast_vector(np.concatenate(parts), self.group)
        offset = 0
        for name, part in zip(self._synced, parts):
            setattr(self, name, flat[offset:offset + part.size].copy())
            offset += part.size

    def log_stats(self) -> Dict[str, float]:
        """Scalars for the step log; a runaway mix shows as max_weight near 1 and entropy near 0."""
        w = self._weights
        nz = w[w > 0]
        stats = {"dro/max_weight": float(w.max()), "dro/entropy": float(-(nz * np.log(nz)).sum()),
                 "dro/entropy_max": float(np.log(self.num_domains))}
        stats.update({f"dro/weight/{d}": float(x) for d, x in zip(self.domains, w)})
        return stats

    def state_dict(self) -> dict:
        """Plain tensors, numbers and lists only: torch.save/torch.load(weights_only=True) round-trips."""
        return {"name": self.name, "domains": list(self.domains), "initial": _t(self.initial),
                "weights": _t(self._weights), "tokens_seen": _t(self.tokens_seen),
                "interval_sum": _t(self.interval_sum), "interval_count": _t(self.interval_count),
                "sparsity": self.sparsity,
                "eval_losses": None if self.eval_losses is None else _t(self.eval_losses),
                "num_updates": self.num_updates, "last_step": self.last_step, "rule": self._rule_state()}

    def load_state_dict(self, state: dict):
        if state["name"] != self.name or list(state["domains"]) != self.domains:
            raise ValueError(f"reweighter state is for {state['name']} over {state['domains']}, "
                             f"not {self.name} over {self.domains}")
        self.initial = state["initial"].double().numpy().copy()
        self._weights = state["weights"].double().numpy().copy()
        self.tokens_seen = state["tokens_seen"].double().numpy().copy()
        self.interval_sum = state["interval_sum"].double().numpy().copy()
        self.interval_count = state["interval_count"].double().numpy().copy()
        self.sparsity = state["sparsity"]
        ev = state["eval_losses"]
        self.eval_losses = None if ev is None else ev.double().numpy().copy()
        self.num_updates, self.last_step = int(state["num_updates"]), int(state["last_step"])
        self._load_rule_state(state["rule"])

    def _rule_state(self) -> dict:
        return {}

    def _load_rule_state(self, state: dict):
        pass


class ConstantReweighter(DomainReweighter):
    """Keeps the initial ratio for the whole run (still tracks losses for logging)."""

    name = "constant"

    def _update(self, step: int) -> np.ndarray:
        return self.initial.copy()
