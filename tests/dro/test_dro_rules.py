"""The rules: Sheared-LLaMA's steps by hand, DRPruning's EMA and reference scaling, absent domains, save/load."""
import io

import numpy as np
import pytest
import torch

from megadrp.config.schema import DroConfig
from megadrp.dro import initial_ratio, make_reweighter

DOMAINS = ["web", "code", "books"]
COUNTS = [600, 300, 100]


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_initial_ratios():
    np.testing.assert_allclose(initial_ratio("natural", COUNTS), [0.6, 0.3, 0.1])
    np.testing.assert_allclose(initial_ratio("uniform", COUNTS), [1 / 3] * 3)
    t = np.array(COUNTS, float) ** 0.3
    np.testing.assert_allclose(initial_ratio("temperature", COUNTS, 0.3), t / t.sum())


def test_constant_keeps_ratio():
    rw = make_reweighter(DroConfig(method="constant", update_interval=1), DOMAINS, COUNTS, 10)
    rw.observe(1, [9.0, 1.0, 0.0], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(rw.update(1), [0.6, 0.3, 0.1])


def test_sheared_against_hand_computed_steps():
    c = 1e-4
    cfg = DroConfig(method="sheared", update_interval=1, sheared_smoothing=c)
    rw = make_reweighter(cfg, DOMAINS, COUNTS, 10, reference_losses=[2.0, 1.0, 3.0])
    # step 1: eval losses given -> excess max(l - ref, 0) = [0.5, 0, 0]
    rw.observe(1, [0, 0, 0], [0, 0, 0], eval_losses=[2.5, 0.8, 2.0])
    w1 = rw.update(1)
    hand1 = (1 - c) * _softmax(np.log([0.6, 0.3, 0.1]) + [0.5, 0.0, 0.0]) + c / 3
    np.testing.assert_allclose(w1, hand1, rtol=1e-12)
    # step 2: no eval losses -> training means [2.0, 1.5, absent]; excess [0, 0.5, 0 (no observation)]
    rw.observe(2, [4.0, 3.0, 0.0], [2.0, 2.0, 0.0])
    w2 = rw.update(2)
    hand2 = (1 - c) * _softmax(np.log(hand1) + [0.0, 0.5, 0.0]) + c / 3
    np.testing.assert_allclose(w2, hand2, rtol=1e-12)
    assert rw.log_stats()["dro/max_weight"] == pytest.approx(hand2.max())


def test_sheared_runaway_visible():
    rw = make_reweighter(DroConfig(method="sheared", update_interval=1), DOMAINS, COUNTS, 100,
                         reference_losses=[1.0, 1.0, 1.0])
    for step in range(1, 11):
        rw.observe(step, [1.0, 1.0, 2.0], [1.0, 1.0, 1.0])
        rw.update(step)
    stats = rw.log_stats()
    assert stats["dro/max_weight"] > 0.99 and stats["dro/entropy"] < 0.05


def test_drpruning_ema_starts_from_first_observation():
    cfg = DroConfig(update_interval=1, dynamic_reference_loss=False, dynamic_ratio=False)
    rw = make_reweighter(cfg, DOMAINS, COUNTS, 100, reference_losses=[1.0, 1.0, 1.0])
    rw.observe(1, [3.0, 0.0, 0.0], [1.0, 0.0, 0.0])
    assert rw.ema[0] == 3.0 and np.isnan(rw.ema[1])
    rw.observe(2, [1.0, 4.0, 0.0], [1.0, 2.0, 0.0])
    assert rw.ema[0] == pytest.approx(0.9 * 3.0 + 0.1 * 1.0) and rw.ema[1] == 2.0


def test_drpruning_measured_references_replace_first_observations():
    cfg = DroConfig(update_interval=1, dynamic_reference_loss=False, dynamic_ratio=False)
    rw = make_reweighter(cfg, DOMAINS, COUNTS, 100)
    assert rw.needs_reference_losses()
    with pytest.raises(ValueError, match="one finite reference loss per domain"):
        rw.set_reference_losses([2.0, float("nan"), 3.0])
    rw.set_reference_losses([2.0, 1.0, 3.0])  # what the trainer measures on held-out text before step 1
    assert not rw.needs_reference_losses()
    rw.observe(1, [3.0, 6.0, 3.5], [1.0, 2.0, 1.0])  # a first observation no longer sets the reference
    np.testing.assert_allclose(rw.ref, [2.0, 1.0, 3.0])
    rw.update(1)
    np.testing.assert_allclose(rw.last_excess, [1.0, 2.0, 0.5])
    given = make_reweighter(cfg, DOMAINS, COUNTS, 100, reference_losses=[1.0, 1.0, 1.0])
    assert not given.needs_reference_losses()
    # Sheared-LLaMA's rule gets the same measured held-out references (it has no fit of its own).
    sheared = make_reweighter(DroConfig(method="sheared"), DOMAINS, COUNTS, 100)
    assert sheared.needs_reference_losses() and sheared.uses_heldout_losses and not rw.uses_heldout_losses
    sheared.set_reference_losses([2.0, 1.0, 3.0])
    np.testing.assert_allclose(sheared.ref, [2.0, 1.0, 3.0])
    assert not make_reweighter(DroConfig(method="constant"), DOMAINS, COUNTS, 100).needs_reference_losses()


def test_drpruning_all_negative_excess_scales_references():
    cfg = DroConfig(update_interval=1, dynamic_reference_loss=False, dynamic_ratio=False, rho=0.1, min_ratio=0.2)
    refs = [3.0, 2.0, 4.0]
    rw = make_reweighter(cfg, DOMAINS, COUNTS, 100, reference_losses=refs)
    losses = np.array([2.5, 1.9, 3.0])  # every excess negative
    rw.observe(1, losses, [1.0, 1.0, 1.0])
    w = rw.update(1)
    # 0.9 leaves [-0.2, 0.1, -0.6]: the first scale with an excess > 0
    assert rw.ref_scale == 0.9
    np.testing.assert_allclose(rw.last_excess, losses - 0.9 * np.array(refs))
    assert w[1] > 0.3 and w[0] < 0.6  # towards the only positive excess, away from the prior
    assert w[2] == pytest.approx(0.2 * 0.1)  # the most negative excess sits on the floor
    np.testing.assert_allclose(rw.ref, refs)  # the scaling is for this update only


def test_absent_domains_never_nan():
    cfg = DroConfig(update_interval=2)
    for method in ("constant", "sheared", "drpruning"):
        cfg.method = method
        rw = make_reweighter(cfg, DOMAINS, COUNTS, 40, target_sparsity=0.5)
        for step in range(1, 41):
            present = np.array([1.0, 0.0, float(step > 20)])  # books appears late, code never
            rw.observe(step, present * 2.0 * 8, present * 8, sparsity=0.5 * min(1, step / 8))
            w = rw.maybe_update(step)
            if w is not None:
                assert np.all(np.isfinite(w)) and w.sum() == pytest.approx(1.0)
        assert all(np.isfinite(v) for k, v in rw.log_stats().items() if "/ref/" not in k and "/ema/" not in k)


def _drive(rw, steps, rng_seed=0):
    """Feeds a deterministic synthetic run; returns the weights after every update."""
    out = []
    for step in steps:
        rng = np.random.default_rng(rng_seed + step)
        count = np.array([600.0, 300.0, 100.0]) * rng.integers(0, 2, 3)
        base = np.array([2.0, 1.2, 2.8]) + 40 * (step * count.clip(1)) ** -0.3
        rw.observe(step, base * count * (1 + 0.01 * rng.normal(size=3)), count, sparsity=0.4 * min(1, step / 30))
        w = rw.maybe_update(step)
        if w is not None:
            out.append(w)
    return out


def test_save_load_mid_run_continues_identically_and_background_fit_is_deterministic():
    make = lambda bg: make_reweighter(DroConfig(update_interval=10, fit_in_background=bg),  # noqa: E731
                                      DOMAINS, COUNTS, 200, target_sparsity=0.4)
    full = make(True)
    seq_full = _drive(full, range(1, 201))
    # the same run with every fit computed in the foreground gives the same bits
    foreground = make(False)
    np.testing.assert_array_equal(np.array(_drive(foreground, range(1, 201))), np.array(seq_full))
    np.testing.assert_array_equal(foreground.ref, full.ref)
    half = make(True)
    seq_a = _drive(half, range(1, 96))  # saved between updates, with a fit in flight
    assert half._pending is not None
    buf = io.BytesIO()
    torch.save(half.state_dict(), buf)
    buf.seek(0)
    resumed = make(True)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    seq_b = _drive(resumed, range(96, 201))
    assert len(seq_a + seq_b) == len(seq_full) == 20
    np.testing.assert_array_equal(np.array(seq_a + seq_b), np.array(seq_full))
    np.testing.assert_array_equal(resumed.ref, full.ref)
    np.testing.assert_array_equal(resumed.ratio, full.ratio)
    assert np.any(full.ratio != full.initial)  # the dynamic ratio moved
    first = make(False)
    _drive(first, range(1, 11))  # before any fit: references are first observations
    assert np.all(np.isfinite(first.ref))
    assert np.all(full.ref <= first.ref) and np.any(full.ref < first.ref)  # the fit lowered some references


def test_drpruning_heldout_signal_follows_the_model_not_the_sampling():
    """dro.signal = heldout: the excess is the held-out loss on fixed windows at each update, so two runs whose
    training batches drew different documents (noisy per-domain training losses) but whose model is the same
    get the same weights; on the training-loss EMA (the paper's) they do not."""
    refs = [2.0, 2.0, 2.0]
    heldout = [2.6, 2.2, 2.4]  # the model's held-out loss per domain: what should drive the weights
    rng = np.random.default_rng(0)
    out = {}
    for signal in ("train", "heldout"):
        cfg = DroConfig(update_interval=4, dynamic_reference_loss=False, dynamic_ratio=False, signal=signal)
        runs = []
        for _ in range(2):  # two samplings of the same model's training losses (~256 tokens per domain a step)
            rw = make_reweighter(cfg, DOMAINS, COUNTS, 100, reference_losses=refs)
            assert rw.uses_heldout_losses == (signal == "heldout")
            for step in range(1, 5):
                train = np.array(heldout) + rng.normal(0, 0.3, size=3)  # sampling noise of a small batch
                rw.observe(step, train * 8, np.full(3, 8.0), eval_losses=heldout if step == 4 else None)
            runs.append(rw.update(4))
        out[signal] = runs
    np.testing.assert_allclose(out["heldout"][0], out["heldout"][1])
    from megadrp.dro import chi2_dro_weights

    prior = initial_ratio("natural", COUNTS)
    np.testing.assert_allclose(out["heldout"][0], chi2_dro_weights(np.subtract(heldout, refs), prior, 0.1, 0.2))
    assert np.argmax(out["heldout"][0] / prior) == 0  # the domain furthest above its reference gains most
    assert np.abs(out["train"][0] - out["train"][1]).max() > 0.01  # the EMA's weights moved with the draw
