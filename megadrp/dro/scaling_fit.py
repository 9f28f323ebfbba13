"""Scaling-law fit behind DRPruning's dynamic reference loss: l(D, s) = A D^-alpha s^-beta + E.

D is tokens seen of a domain, s the *kept* fraction of the model (1 - expected sparsity, so that
s^-beta grows as the model shrinks and stays finite at the start of pruning, s = 1). During continued
pretraining there is no s term (``s=None``: beta fixed at 0).
The fit is Chinchilla-style: log l is modelled as logsumexp(a - alpha log D - beta log s, e)
(A = e^a, E = e^e, both positive) and the Huber loss (delta 1e-3) of the log residuals is minimised by
L-BFGS-B (scipy, analytic gradient) from the best few points of a grid of starts. D is divided by its
largest value inside the fit for conditioning; the returned A is in the caller's units.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy.optimize import minimize

HUBER_DELTA = 1e-3
_GRID_A = (-2.0, 0.0, 2.0, 4.0)
_GRID_ALPHA = (0.05, 0.2, 0.5, 1.0)
_GRID_BETA = (0.0, 0.5, 1.0, 2.0)
_GRID_E = (-1.0, 0.0, 0.5, 1.0, 1.5, 2.0)
_NUM_REFINED = 4
_BOUNDS = [(-30.0, 30.0), (0.0, 4.0), (0.0, 6.0), (-6.0, 6.0)]  # a, alpha, beta, e


@dataclass(frozen=True)
class ScalingLaw:
    """l(D, s) = A D^-alpha s^-beta + E, with s the kept fraction (ignored when beta is 0)."""
    A: float
    alpha: float
    beta: float
    E: float

    def predict(self, tokens, kept=None):
        d = np.asarray(tokens, dtype=np.float64)
        s = np.ones_like(d) if kept is None else np.asarray(kept, dtype=np.float64)
        return self.A * d ** -self.alpha * s ** -self.beta + self.E


def _huber(x: np.ndarray):
    small = np.abs(x) <= HUBER_DELTA
    value = np.where(small, 0.5 * x * x, HUBER_DELTA * (np.abs(x) - 0.5 * HUBER_DELTA))
    grad = np.where(small, x, HUBER_DELTA * np.sign(x))
    return value, grad


def _objective(theta, log_d, log_s, log_l):
    a, alpha, beta, e = theta
    u = a - alpha * log_d - beta * log_s
    log_pred = np.logaddexp(u, e)
    w = np.exp(u - log_pred)  # d log_pred / d u
    value, g = _huber(log_pred - log_l)
    grad = np.array([np.sum(g * w), -np.sum(g * w * log_d), -np.sum(g * w * log_s), np.sum(g * (1.0 - w))])
    return float(value.sum()), grad


def _grid_values(grid: np.ndarray, log_d, log_s, log_l) -> np.ndarray:
    u = grid[:, :1] - grid[:, 1:2] * log_d[None] - grid[:, 2:3] * log_s[None]
    value, _ = _huber(np.logaddexp(u, grid[:, 3:4]) - log_l[None])
    return value.sum(axis=1)


def fit_scaling_law(tokens: Sequence[float], losses: Sequence[float],
                    kept: Optional[Sequence[float]] = None, min_points: Optional[int] = None) -> Optional[ScalingLaw]:
    """Fit A, alpha, beta, E to (tokens, kept, loss) points; None when there are too few usable points.

    min_points defaults to one more than the free parameters (3 without ``kept``, else 4); an exactly
    determined fit (e.g. a model family's three sizes) passes the parameter count itself.
    """
    d = np.asarray(tokens, dtype=np.float64)
    l = np.asarray(losses, dtype=np.float64)
    s = np.ones_like(d) if kept is None else np.asarray(kept, dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(l) & np.isfinite(s) & (d > 0) & (l > 0) & (s > 0)
    d, l, s = d[ok], l[ok], s[ok]
    num_params = 3 if kept is None else 4
    if d.size < (num_params + 1 if min_points is None else min_points):
        return None
    d_scale = d.max()
    log_d, log_s, log_l = np.log(d / d_scale), np.log(s), np.log(l)
    betas = (0.0,) if kept is None else _GRID_BETA
    grid = np.array(list(itertools.product(_GRID_A, _GRID_ALPHA, betas, _GRID_E)), dtype=np.float64)
    starts = grid[np.argsort(_grid_values(grid, log_d, log_s, log_l), kind="stable")[:_NUM_REFINED]]
    bounds = list(_BOUNDS)
    if kept is None:
        bounds[2] = (0.0, 0.0)
    best = None
    for x0 in starts:
        res = minimize(_objective, x0, args=(log_d, log_s, log_l), jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 1000, "ftol": 1e-14, "gtol": 1e-12})
        if best is None or res.fun < best.fun:
            best = res
    a, alpha, beta, e = best.x
    # Undo the normalisation: A (D/d_scale)^-alpha = (A d_scale^alpha) D^-alpha.
    return ScalingLaw(A=float(np.exp(a + alpha * np.log(d_scale))), alpha=float(alpha), beta=float(beta),
                      E=float(np.exp(e)))


def predict_reference(tokens, losses, kept, end_tokens: float, end_kept: Optional[float],
                      lowest_observed: Optional[float] = None) -> Optional[float]:
    """Predicted loss at the end of training, capped *above* at the lowest loss observed; None if no fit.

    The reference is where the loss is heading, so it is never above where it has already been (DRPruning,
    DRO_server.py: ``min(prediction, min(losses))``, then ``max(., 0)``). lowest_observed defaults to the
    smallest of ``losses`` (pass the true minimum when points were thinned).
    """
    law = fit_scaling_law(tokens, losses, kept)
    if law is None:
        return None
    pred = float(law.predict(end_tokens, end_kept if kept is not None else None))
    if not np.isfinite(pred):
        return None
    cap = float(np.min(losses)) if lowest_observed is None else float(lowest_observed)
    return max(min(pred, cap), 0.0)
