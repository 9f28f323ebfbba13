"""DRPruning's worst case over a chi-square ball around the reference ratio, in closed form.

Solves  max_q sum_i q_i r_i  s.t.  1/2 sum_i p_i (q_i/p_i - 1)^2 <= rho,  q in the simplex.
The objective is linear, so unless every excess is equal the constraint is active and the KKT conditions
give q_i = p_i max(r_i - eta, 0) / Z. The divergence D(eta) of that q grows with eta, from 0 at
eta -> -inf to 1/2 (1/P_max - 1) at eta -> max r (all mass on the argmax set, P_max its prior mass):
for eta <= min r it has the closed form 1/2 Var_p(r) / (mean_p(r) - eta)^2, otherwise bisection finds it.
Then the likelihood-ratio floor q_i >= min_ratio p_i, applied by rescaling the unfloored part so the sum
stays 1 (the floor then holds exactly, unlike clip-then-renormalise).
"""
from __future__ import annotations

import numpy as np
import torch

_BISECT_STEPS = 200


def _divergence(q: np.ndarray, p: np.ndarray) -> float:
    on = p > 0
    return 0.5 * float(np.sum((q[on] - p[on]) ** 2 / p[on]))


def _tilted(r: np.ndarray, p: np.ndarray, eta: float) -> np.ndarray:
    w = p * np.maximum(r - eta, 0.0)
    return w / w.sum()


def _solve_ball(r: np.ndarray, p: np.ndarray, rho: float) -> np.ndarray:
    on = p > 0
    r_on = r[on]
    r_max, r_min = r_on.max(), r_on.min()
    if r_max - r_min <= 1e-12 * max(1.0, abs(r_max)):
        return p.copy()  # every q in the ball has the same objective: keep the reference
    top = on & (r >= r_max)
    corner = np.where(top, p, 0.0) / p[top].sum()
    if _divergence(corner, p) <= rho:
        return corner  # the ball contains the best vertex (rho large): all mass on the argmax
    mean = float(np.sum(p * r))
    var = float(np.sum(p * (r - mean) ** 2))
    eta = mean - np.sqrt(var / (2.0 * rho))
    if eta <= r_min:
        return _tilted(r, p, eta)  # every domain keeps mass: exact solution
    lo, hi = r_min, r_max  # D(lo) <= rho < D(hi-) by the two checks above
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if _divergence(_tilted(r, p, mid), p) <= rho:
            lo = mid
        else:
            hi = mid
    return _tilted(r, p, lo)  # the feasible end of the bracket


def apply_floor(q: np.ndarray, p: np.ndarray, min_ratio: float) -> np.ndarray:
    """Smallest change making q_i >= min_ratio p_i with sum 1: q' = max(c q, min_ratio p), c by bisection."""
    if min_ratio <= 0:
        return q
    floor = min_ratio * p
    lo, hi = 0.0, 1.0  # f(0) = min_ratio < 1 <= f(1)
    for _ in range(_BISECT_STEPS):
        c = 0.5 * (lo + hi)
        if np.maximum(c * q, floor).sum() < 1.0:
            lo = c
        else:
            hi = c
    out = np.maximum(hi * q, floor)
    return out / out.sum()


def chi2_dro_weights(excess, prior, rho: float, min_ratio: float = 0.0):
    """New domain weights (1-D, on the simplex), same type, dtype and device as ``excess``.

    excess: per-domain r_i = loss - reference (finite); prior: reference ratio p (normalised here);
    rho: radius of the chi-square ball; min_ratio: floor on q_i / p_i, in [0, 1).
    """
    is_torch = isinstance(excess, torch.Tensor)
    r = (excess.detach().cpu().double().numpy() if is_torch else np.asarray(excess, dtype=np.float64)).reshape(-1)
    p = (prior.detach().cpu().double().numpy() if isinstance(prior, torch.Tensor)
         else np.asarray(prior, dtype=np.float64)).reshape(-1)
    if r.shape != p.shape or r.size == 0:
        raise ValueError(f"excess and prior must be 1-D of the same non-zero length; got {r.shape} and {p.shape}")
    if not np.all(np.isfinite(r)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError("excess must be finite and prior non-negative with a positive sum")
    if not 0.0 <= min_ratio < 1.0:
        raise ValueError(f"min_ratio must be in [0, 1), got {min_ratio}")
    p = p / p.sum()
    q = p.copy() if r.size == 1 else _solve_ball(r, p, float(rho))
    q = apply_floor(q, p, min_ratio)
    if is_torch:
        return torch.as_tensor(q, dtype=excess.dtype if excess.is_floating_point() else torch.float64,
                               device=excess.device)
    return q
