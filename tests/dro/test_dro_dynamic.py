"""DRPruning's dynamic parts against the reference's semantics: where the fitted reference heads, the per-step
loss EMA of rarely sampled domains, and the dynamic ratio's two clamps."""
import numpy as np
import pytest

from megadrp.config.schema import DroConfig
from megadrp.dro import make_reweighter
from megadrp.dro.drpruning import dynamic_ratio_step

DOMAINS = ["web", "code", "books"]
LAWS = [(40.0, 0.30, 2.0), (25.0, 0.25, 1.2), (60.0, 0.35, 2.6)]  # A, alpha, E per domain
TOKENS_PER_STEP = [600.0, 300.0, 100.0]


def _true_loss(i: int, step: float) -> float:
    a, alpha, e = LAWS[i]
    return a * (TOKENS_PER_STEP[i] * step) ** -alpha + e


def test_fitted_references_capture_the_improvement_still_to_come():
    """Half-way through a run whose losses follow A D^-alpha + E (1% noise), the references sit near where the
    losses end, not where they have been: the fit's prediction, capped above at the lowest loss seen, replaces
    the initial reference. (Capping from below and taking min(initial, .) left them near the running minimum.)"""
    total = 400
    cfg = DroConfig(update_interval=10, dynamic_ratio=False, fit_in_background=False)
    rw = make_reweighter(cfg, DOMAINS, [6, 3, 1], total,
                         reference_losses=[_true_loss(i, 1) for i in range(3)])  # the starting model's loss
    rng = np.random.default_rng(0)
    counts = np.array(TOKENS_PER_STEP)
    for step in range(1, total // 2 + 1):
        mean = np.array([_true_loss(i, step) for i in range(3)]) * (1 + 0.01 * rng.standard_normal(3))
        rw.observe(step, mean * counts, counts)
        rw.maybe_update(step)
    now = np.array([_true_loss(i, total // 2) for i in range(3)])
    end = np.array([_true_loss(i, total) for i in range(3)])
    captured = (now - rw.ref) / (now - end)
    assert np.all(captured >= 0.8), captured
    assert np.all(captured <= 1.3), captured  # and not far past the end either


def test_first_fit_replaces_a_reference_below_the_prediction():
    """A pruned model heads above the source's loss: the first fit moves the reference *up* to its prediction."""
    cfg = DroConfig(update_interval=10, dynamic_ratio=False, fit_in_background=False)
    rw = make_reweighter(cfg, DOMAINS, [6, 3, 1], 200, reference_losses=[0.5, 0.5, 0.5])
    counts = np.array(TOKENS_PER_STEP)
    for step in range(1, 101):
        mean = np.array([_true_loss(i, step) for i in range(3)])
        rw.observe(step, mean * counts, counts)
        rw.maybe_update(step)
    assert np.all(rw.ref > 1.0) and np.all(rw.fitted)
    lowest = rw.min_loss
    assert np.all(rw.ref <= lowest + 1e-12)


def test_rarely_sampled_domain_ema_lags_no_more_than_a_frequent_one():
    """Both domains' losses rise at the same rate (pruning); one is seen every step, one every 8th. The EMA is
    per step, so both lag the same; per observation the rare one lagged 8x as far behind."""
    cfg = DroConfig(update_interval=1000, dynamic_reference_loss=False, dynamic_ratio=False)
    rw = make_reweighter(cfg, DOMAINS[:2], [1, 1], 1000, reference_losses=[1.0, 1.0])
    for step in range(1, 201):
        loss = 2.0 + 0.01 * step
        seen = np.array([1.0, 1.0 if step % 8 == 0 else 0.0])
        rw.observe(step, loss * seen, seen)
    true = 2.0 + 0.01 * 200
    lag = true - rw.ema
    assert lag[0] == pytest.approx(0.09, abs=0.01)  # a per-step EMA of a linear ramp lags (1-a)/a steps
    assert abs(lag[1] - lag[0]) < 0.03, lag  # per observation: lag[1] ~ 0.63


def test_dynamic_ratio_has_both_reference_clamps():
    p0 = np.array([0.4, 0.3, 0.3])
    p, q = p0.copy(), np.array([0.98, 0.01, 0.01])
    for _ in range(60):
        p = dynamic_ratio_step(p, q, p0)
    # The first clamp alone lets domain 0 reach 2 x 0.4; the second holds it inside [min p0, max p0].
    assert p.sum() == pytest.approx(1.0)
    assert p[0] == pytest.approx(0.4, abs=0.02) and np.all(p >= 0.28)
    uniform = np.full(3, 1 / 3)
    np.testing.assert_allclose(dynamic_ratio_step(uniform, q, uniform), uniform)


def test_initial_references_fitted_over_the_model_family():
    """Three family sizes determine L(N) = A N^-alpha + E; the references are its prediction at the end size
    (source params x kept fraction), unless references are configured."""
    law = [(300.0, 0.30, 1.6), (80.0, 0.25, 0.7)]
    sizes = [7e9, 13e9, 70e9]
    losses = [[a * n ** -alpha + e for a, alpha, e in law] for n in sizes]
    cfg = DroConfig(family_params=sizes, family_losses=losses)
    rw = make_reweighter(cfg, DOMAINS[:2], [1, 1], 100, target_sparsity=0.8, model_params=7e9)
    want = [a * 1.4e9 ** -alpha + e for a, alpha, e in law]
    np.testing.assert_allclose(rw.ref, want, rtol=2e-3)
    assert not rw.needs_reference_losses()
    given = make_reweighter(DroConfig(family_params=sizes, family_losses=losses, reference_losses=[1.0, 2.0]),
                            DOMAINS[:2], [1, 1], 100, target_sparsity=0.8, model_params=7e9)
    np.testing.assert_allclose(given.ref, [1.0, 2.0])
    with pytest.raises(ValueError, match="one row of 2 losses"):
        make_reweighter(DroConfig(family_params=sizes, family_losses=losses[:2]), DOMAINS[:2], [1, 1], 100,
                        model_params=7e9)
