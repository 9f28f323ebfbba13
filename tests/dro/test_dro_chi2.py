"""chi2_dro_weights against a general constrained solver (scipy SLSQP), the floor, and the edge cases."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from megadrp.dro import chi2_dro_weights


def _divergence(q, p):
    return 0.5 * np.sum(p * (q / p - 1.0) ** 2)


def _slsqp(r, p, rho):
    cons = [{"type": "eq", "fun": lambda q: q.sum() - 1.0, "jac": lambda q: np.ones_like(q)},
            {"type": "ineq", "fun": lambda q: rho - _divergence(q, p), "jac": lambda q: -(q / p - 1.0)}]
    res = minimize(lambda q: -q @ r, p.copy(), jac=lambda q: -r, method="SLSQP", bounds=[(0, 1)] * len(p),
                   constraints=cons, options={"ftol": 1e-13, "maxiter": 1000})
    return res.x


def test_matches_scipy_on_random_instances():
    rng = np.random.default_rng(0)
    for _ in range(30):
        k = int(rng.integers(2, 9))
        p = rng.dirichlet(np.ones(k))
        r = rng.normal(0.0, 0.5, k)
        rho = float(rng.choice([0.01, 0.05, 0.1, 0.3, 1.0]))
        q = chi2_dro_weights(r, p, rho, 0.0)
        ref = _slsqp(r, p, rho)
        assert q.shape == (k,) and np.all(q >= 0) and abs(q.sum() - 1) < 1e-12
        assert _divergence(q, p) <= rho + 1e-4
        assert abs(q @ r - ref @ r) <= 1e-4, (q @ r, ref @ r)


def test_floor_respected_and_on_simplex():
    rng = np.random.default_rng(1)
    for _ in range(30):
        k = int(rng.integers(2, 9))
        p = rng.dirichlet(np.ones(k))
        r = rng.normal(0.0, 1.0, k)
        q = chi2_dro_weights(r, p, 0.5, 0.2)
        assert abs(q.sum() - 1) < 1e-12
        assert np.all(q / p >= 0.2 - 1e-9)
        # floored domains sit exactly on the floor, the others keep their relative order of excess
        assert np.min(q / p) < 0.2 + 1e-6 or np.all(chi2_dro_weights(r, p, 0.5, 0.0) / p >= 0.2)


def test_edge_cases():
    p = np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(chi2_dro_weights(np.full(3, 0.7), p, 0.1, 0.2), p)
    np.testing.assert_allclose(chi2_dro_weights(np.array([3.0]), np.array([1.0]), 0.1, 0.2), [1.0])
    # a ball large enough to hold the vertex: all mass on the argmax
    np.testing.assert_allclose(chi2_dro_weights(np.array([0.1, 0.5, 0.2]), p, 100.0, 0.0), [0, 1, 0], atol=1e-12)
    # moving weight towards the largest excess, away from the smallest
    q = chi2_dro_weights(np.array([0.1, 0.5, 0.2]), p, 0.1, 0.0)
    assert q[1] > p[1] and q[0] < p[0]
    with pytest.raises(ValueError):
        chi2_dro_weights(np.array([np.nan, 1.0]), np.array([0.5, 0.5]), 0.1, 0.2)


def test_torch_in_torch_out():
    r = torch.tensor([0.3, -0.1, 0.05], dtype=torch.float32)
    q = chi2_dro_weights(r, torch.tensor([0.2, 0.5, 0.3]), 0.1, 0.2)
    assert isinstance(q, torch.Tensor) and q.dtype == torch.float32 and q.shape == (3,)
    np.testing.assert_allclose(q.numpy(), chi2_dro_weights(r.double().numpy(), np.array([0.2, 0.5, 0.3]), 0.1, 0.2),
                               rtol=1e-6)
