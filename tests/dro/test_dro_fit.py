"""The scaling-law fit recovers known parameters from noisy synthetic power-law curves."""
import numpy as np

from megadrp.dro import fit_scaling_law, predict_reference


def _curves(rng, A, alpha, beta, E, kepts, noise=0.003):
    d, s, l = [], [], []
    for kept in kepts:
        tokens = np.geomspace(1e6, 1e8, 16)
        d += list(tokens)
        s += [kept] * len(tokens)
        l += list((A * tokens ** -alpha * kept ** -beta + E) * np.exp(rng.normal(0, noise, len(tokens))))
    return np.array(d), np.array(s), np.array(l)


def test_recovers_pruning_law():
    rng = np.random.default_rng(0)
    for A, alpha, beta, E in [(200.0, 0.3, 0.5, 2.0), (60.0, 0.25, 1.0, 1.5)]:
        d, s, l = _curves(rng, A, alpha, beta, E, [1.0, 0.8, 0.6, 0.5])
        law = fit_scaling_law(d, l, s)
        assert abs(law.alpha - alpha) < 0.02 and abs(law.beta - beta) < 0.05 and abs(law.E - E) < 0.05
        assert abs(np.log(law.A / A)) < 0.25
        # the extrapolation the reference loss needs: 4x the tokens, at the smallest width
        true = A * 4e8 ** -alpha * 0.5 ** -beta + E
        assert abs(law.predict(4e8, 0.5) - true) < 0.02 * true


def test_recovers_cpt_law_without_sparsity_term():
    rng = np.random.default_rng(1)
    d, _, l = _curves(rng, 120.0, 0.35, 0.0, 1.8, [1.0])
    law = fit_scaling_law(d, l)
    assert law.beta == 0.0 and abs(law.alpha - 0.35) < 0.03 and abs(law.E - 1.8) < 0.05


def test_prediction_capped_above_at_lowest_observed_and_too_few_points():
    d = np.geomspace(1e6, 1e8, 10)
    l = 100 * d ** -0.3 + 2.0
    true = 100 * 1e9 ** -0.3 + 2.0  # 2.20, below every observed loss (lowest 2.40): the prediction stands
    assert abs(predict_reference(d, l, None, end_tokens=1e9, end_kept=None) - true) < 1e-3
    # A loss rising with sparsity (pruning) extrapolates above what was seen: capped at the lowest observed.
    kept = np.linspace(1.0, 0.6, 10)
    rising = 100 * d ** -0.3 * kept ** -3.0 + 2.0
    pred = predict_reference(d, rising, kept, end_tokens=1e9, end_kept=0.3)
    assert pred == rising.min()
    assert predict_reference(d, l, None, end_tokens=1e9, end_kept=None, lowest_observed=2.1) == 2.1
    assert fit_scaling_law(d[:3], l[:3]) is None
