"""DRPruning's rule: chi-square DRO over per-domain excess loss, with a dynamic reference loss and ratio.

Per step: an EMA (factor ``ema`` per step) of each domain's training loss, started from the domain's first
observation (not 0). The EMA is per *step*, not per observation: a domain last seen ``a`` steps ago weighs
its new observation ``1 - (1 - ema)^a``, as if the new value had held over the steps it was not sampled.
Per observation (the reference), a domain sampled one step in eight at the 0.2 p floor averages over eight
times as many steps as a frequent one, so its stale, lower (pruning raises losses) estimate keeps it down.
Per update: excess r = l_hat - l_ref; q = the chi-square-ball worst case around the reference ratio p
(``chi2_dro_weights``), floored at q_i >= min_ratio p_i. If every r < 0, the references are scaled by 0.9,
0.8, ... (for this update only) until some r > 0. A domain never observed yet gets the p-weighted mean
excess of the others (neutral).

Dynamic reference loss: from 2% of training each update records, per domain seen in the interval,
(D_i tokens at the interval's middle, kept fraction 1 - sparsity, mean loss over the interval), thinning to
at most 64 points (every other point, newest kept) so the record spans the whole run. From 10% each update
launches a fit of l(D, s) = A D^-alpha s^-beta + E per domain (no s term without a target sparsity, i.e. in
CPT) on a snapshot of that record; the result is consumed at the *next* update. The prediction is at the end
of training (D_i scaled to total steps, s at the target), capped above at the lowest loss observed; a
domain's first prediction *replaces* its initial reference, later ones lower it (l_ref_i = min(l_ref_i,
prediction)), as in the reference (DRO_loading_callback.py). With ``fit_in_background`` the fit runs in a
thread between the two updates, off the training step's path; otherwise it runs at launch. Either way the
result used at update j is the one launched at update j-1 from the same global data, so both modes give
identical weights. Every rank fits the same data; the references are then broadcast from rank 0 with the
weights.

Held-out signal (``heldout_signal``, config dro.signal = heldout): at each update the excess is measured on
the trainer's held-out losses over the same fixed windows every time (the rule then sets
``uses_heldout_losses``, as Sheared-LLaMA's does) instead of the training-loss EMA, which at one machine's
batch sizes rests on a few hundred tokens per domain: the weights then move with the model, not with which
documents an interval happened to draw (docs/DRO.md). The dynamic reference fit still reads training losses.

Dynamic ratio: from 20%, p <- 0.9 p + 0.1 q, renormalised, clamped to [p0/2, 2 p0], renormalised, clamped to
[min p0, max p0], renormalised (the reference's two clamps; with a uniform p0 the second keeps p uniform).
"""
from __future__ import annotations

import threading
from typing import Optional, Sequence

import numpy as np

from .base import DomainReweighter, _t
from .chi2 import chi2_dro_weights
from .scaling_fit import predict_reference

RECORD_FROM, FIT_FROM, RATIO_FROM = 0.02, 0.10, 0.20
MAX_POINTS = 64
RATIO_EMA = 0.1
REF_SCALES = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def run_reference_fit(snapshot: dict) -> np.ndarray:
    """Pure function of a fit snapshot: predicted end-of-training loss per domain (NaN where no fit)."""
    end_kept = snapshot["end_kept"]
    preds = []
    for rows, end_tokens, lowest in zip(snapshot["history"], snapshot["end_tokens"].tolist(),
                                        snapshot["min_loss"].tolist()):
        rows = rows.double().numpy()
        pred = None
        if len(rows) and end_tokens > 0:
            kept = None if end_kept is None else rows[:, 1]
            pred = predict_reference(rows[:, 0], rows[:, 2], kept, end_tokens, end_kept, lowest)
        preds.append(np.nan if pred is None else pred)
    return np.asarray(preds, dtype=np.float64)


def dynamic_ratio_step(ratio: np.ndarray, q: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """p <- 0.9 p + 0.1 q, then the reference's two clamps: [p0/2, 2 p0] and [min p0, max p0], each renormalised."""
    p = (1.0 - RATIO_EMA) * ratio + RATIO_EMA * q
    p = p / p.sum()
    p = np.clip(p, initial / 2.0, 2.0 * initial)
    p = p / p.sum()
    p = np.clip(p, initial.min(), initial.max())
    return p / p.sum()


class _PendingFit:
    """A fit launched at one update and collected at the next; in a thread or computed at once."""

    def __init__(self, snapshot: dict, background: bool):
        self.snapshot = snapshot
        self._result: Optional[np.ndarray] = None
        self._error: Optional[BaseException] = None
        self._thread = None
        if background:
            # Not a daemon: the interpreter then waits for a fit in flight instead of killing it mid-scipy.
            self._thread = threading.Thread(target=self._run, name="megadrp-dro-fit", daemon=False)
            self._thread.start()
        else:
            self._run()

    def _run(self):
        try:
            self._result = run_reference_fit(self.snapshot)
        except BaseException as exc:  # surfaced in result(), on the training thread
            self._error = exc

    def result(self) -> np.ndarray:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise RuntimeError("reference-loss fit failed") from self._error
        return self._result


class DRPruningReweighter(DomainReweighter):
    name = "drpruning"
    _synced = ("_weights", "ref", "ratio")

    def __init__(self, domains: Sequence[str], ratio: np.ndarray, update_interval: int, total_steps: int,
                 reference_losses: Optional[Sequence[float]] = None, rho: float = 0.1, min_ratio: float = 0.2,
                 ema: float = 0.1, dynamic_reference_loss: bool = True, dynamic_ratio: bool = True,
                 target_sparsity: Optional[float] = None, fit_in_background: bool = True, group=None,
                 heldout_signal: bool = False):
        super().__init__(domains, ratio, update_interval, total_steps, group)
        self.uses_heldout_losses = bool(heldout_signal)
        k = self.num_domains
        self.rho, self.min_ratio, self.ema_factor = float(rho), float(min_ratio), float(ema)
        self.dynamic_reference_loss, self.dynamic_ratio = bool(dynamic_reference_loss), bool(dynamic_ratio)
        self.target_sparsity = target_sparsity
        self.fit_in_background = bool(fit_in_background)
        self.ema = np.full(k, np.nan)
        self.last_seen = np.zeros(k)  # step of each domain's latest observation (for the per-step EMA)
        self.fitted = np.zeros(k, dtype=bool)  # has a fit replaced the domain's initial reference yet
        self.ref = (np.full(k, np.nan) if reference_losses is None
                    else np.asarray(reference_losses, dtype=np.float64).copy())
        if self.ref.shape != (k,):
            raise ValueError(f"need one reference loss per domain ({k}), got {reference_losses}")
        self.ratio = ratio.copy()
        self.history = [np.zeros((0, 3)) for _ in range(k)]  # rows: tokens seen, kept fraction, loss
        self.min_loss = np.full(k, np.inf)
        self.last_excess = np.zeros(k)
        self.ref_scale = 1.0
        self._pending: Optional[_PendingFit] = None

    def _observe(self, step: int, mean: np.ndarray, present: np.ndarray):
        first = present & np.isnan(self.ema)
        again = present & ~first
        self.ema[first] = mean[first]
        age = np.maximum(step - self.last_seen[again], 1.0)
        keep = (1.0 - self.ema_factor) ** age
        self.ema[again] = keep * self.ema[again] + (1.0 - keep) * mean[again]
        self.last_seen[present] = step
        # Without given or measured references (Trainer._measure_reference_losses), a domain's first observation is.
        unset = present & np.isnan(self.ref)
        self.ref[unset] = mean[unset]

    def _kept(self) -> float:
        return 1.0 if self.sparsity is None else 1.0 - self.sparsity

    def _record(self):
        mean, present = self.interval_means()
        for i in np.flatnonzero(present):
            # The interval's mean loss belongs to the interval's middle, not its end: at the end its D would be
            # overstated (badly so early, when an interval is a large share of the tokens seen).
            mid_tokens = self.tokens_seen[i] - 0.5 * self.interval_count[i]
            row = np.array([[mid_tokens, self._kept(), mean[i]]])
            rows = np.concatenate([self.history[i], row])
            if len(rows) > MAX_POINTS:
                rows = rows[::-1][::2][::-1]
            self.history[i] = rows
            self.min_loss[i] = min(self.min_loss[i], mean[i])

    def _snapshot(self, step: int) -> dict:
        end_kept = None if self.target_sparsity is None else 1.0 - float(self.target_sparsity)
        return {"step": step, "history": [_t(h) for h in self.history],
                "end_tokens": _t(self.tokens_seen * self.total_steps / max(step, 1)), "end_kept": end_kept,
                "min_loss": _t(self.min_loss)}

    def _refresh_references(self, step: int):
        frac = step / self.total_steps
        if frac >= RECORD_FROM:
            self._record()
        if self._pending is not None:
            pred = self._pending.result()
            self._pending = None
            ok = np.isfinite(pred)
            # The first fit replaces the initial reference (the source's loss is not where a pruned model heads).
            first = ok & ~self.fitted
            later = ok & self.fitted
            self.ref[first] = pred[first]
            self.ref[later] = np.fmin(self.ref[later], pred[later])
            self.fitted |= ok
        if frac >= FIT_FROM:
            self._pending = _PendingFit(self._snapshot(step), self.fit_in_background)

    def signal(self) -> np.ndarray:
        """l_hat: this update's held-out losses where the rule reads them (held-out signal), else the EMA."""
        if self.uses_heldout_losses and self.eval_losses is not None:
            return np.where(np.isfinite(self.eval_losses), self.eval_losses, self.ema)
        return self.ema

    def excess(self) -> np.ndarray:
        """r = l_hat - l_ref (after the all-negative scaling); unobserved domains get the mean excess."""
        l_hat = self.signal()
        seen = np.isfinite(l_hat) & np.isfinite(self.ref)
        self.ref_scale = 1.0
        r = l_hat - self.ref
        if seen.any() and np.all(r[seen] < 0):
            for scale in REF_SCALES:
                self.ref_scale = scale
                r = l_hat - scale * self.ref
                if np.any(r[seen] > 0):
                    break
        neutral = float(np.sum(self.ratio[seen] * r[seen]) / np.sum(self.ratio[seen])) if seen.any() else 0.0
        return np.where(seen, r, neutral)

    def _update(self, step: int) -> np.ndarray:
        if self.dynamic_reference_loss:
            self._refresh_references(step)
        if not np.any(np.isfinite(self.signal()) & np.isfinite(self.ref)):
            return self._weights  # nothing observed yet: keep the mix
        r = self.excess()
        self.last_excess = r
        q = chi2_dro_weights(r, self.ratio, self.rho, self.min_ratio)
        if self.dynamic_ratio and step / self.total_steps >= RATIO_FROM:
            self.ratio = dynamic_ratio_step(self.ratio, q, self.initial)
        return q

    def log_stats(self):
        stats = super().log_stats()
        stats["dro/ref_scale"] = self.ref_scale
        for name, vec in (("ema", self.ema), ("ref", self.ref), ("excess", self.last_excess), ("ratio", self.ratio)):
            stats.update({f"dro/{name}/{d}": float(x) for d, x in zip(self.domains, vec)})
        return stats

    def _rule_state(self) -> dict:
        pending = None if self._pending is None else self._pending.snapshot
        return {"ema": _t(self.ema), "last_seen": _t(self.last_seen), "fitted": _t(self.fitted.astype(np.float64)),
                "ref": _t(self.ref), "ratio": _t(self.ratio),
                "history": [_t(h) for h in self.history], "min_loss": _t(self.min_loss),
                "last_excess": _t(self.last_excess), "ref_scale": self.ref_scale, "pending_fit": pending}

    def _load_rule_state(self, state: dict):
        arr = lambda t: t.double().numpy().copy()  # noqa: E731
        self.ema, self.ref, self.ratio = arr(state["ema"]), arr(state["ref"]), arr(state["ratio"])
        self.last_seen, self.fitted = arr(state["last_seen"]), arr(state["fitted"]) > 0.5
        self.history = [arr(h).reshape(-1, 3) for h in state["history"]]
        self.min_loss, self.last_excess = arr(state["min_loss"]), arr(state["last_excess"])
        self.ref_scale = float(state["ref_scale"])
        # A fit in flight at save time is relaunched from its snapshot: same inputs, same result.
        snap = state["pending_fit"]
        self._pending = None if snap is None else _PendingFit(snap, self.fit_in_background)
