"""MaskSet and Lagrangian: counts, deterministic masks, sampling, gradients, and the constraint's direction."""
import math

import pytest
import torch

from megadrp.config import ConfigError, TargetShape
from megadrp.masks import Lagrangian, MaskSet, negate_gradients
from megadrp.masks import hard_concrete as hc
from megadrp.model import MaskedCausalLM, get_family

SHAPES = {
    "gqa": get_family("llama").debug_shape,
    "mha_tied": get_family("llama").debug_shape.replace(num_key_value_heads=4, tie_word_embeddings=True),
    "qwen2_bias": get_family("qwen2").debug_shape,
}
TARGETS = {
    "gqa": TargetShape(hidden_size=48, num_key_value_heads=1, intermediate_size=96, num_hidden_layers=3),
    "mha_tied": TargetShape(hidden_size=40, num_attention_heads=3, intermediate_size=64, num_hidden_layers=2),
    "qwen2_bias": TargetShape(num_attention_heads=2, intermediate_size=100),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_deterministic_binary_masks_count_the_target_shape(name):
    ms = MaskSet(SHAPES[name], TARGETS[name], seed=1)
    with torch.no_grad():  # spread log_alpha so deterministic masks pick a non-trivial subset
        for p in ms.log_alpha.values():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    det = ms.deterministic()
    for f, z in det.items():  # every layer ends with the same width; kept values are soft, pruned exactly 0
        kept = (z != 0).sum(-1)
        assert torch.all(kept == kept.reshape(-1)[0])
        assert torch.all((z > 0) & (z < 1) | (z == 0))
    binary = {f: (z != 0).float() for f, z in det.items()}
    for emb in (True, False):
        assert ms.expected_num_params(binary, include_embeddings=emb).item() == \
            ms.target.num_params(include_embeddings=emb)
    # log_alpha at the clamp-free extremes: expected scores are exactly those 0/1 masks
    with torch.no_grad():
        for f, p in ms.log_alpha.items():
            p.copy_(binary[f] * 200 - 100)
    assert ms.expected_num_params().item() == ms.target.num_params()
    assert ms.expected_num_params(include_embeddings=False) < SHAPES[name].num_params(include_embeddings=False)


def test_families_are_derived_and_init_keeps_everything():
    src = SHAPES["gqa"]
    assert MaskSet(src, TargetShape(intermediate_size=64)).families == ("intermediate",)
    ms = MaskSet(src, TARGETS["gqa"])
    assert ms.families == ("layer", "head", "intermediate", "hidden")
    assert {f: tuple(p.shape) for f, p in ms.log_alpha.items()} == \
        {"layer": (4,), "head": (4, 2), "intermediate": (4, 128), "hidden": (64,)}
    for p in ms.log_alpha.values():
        assert p.dtype == torch.float32 and p.dim() >= 1
        assert torch.all(p <= math.log(100) + 1e-6) and torch.all(p >= math.log(100) - 0.05)
    assert all(float(s.detach().max()) < 0.01 for s in ms.expected_sparsity().values())
    with pytest.raises(ConfigError, match="nothing to prune"):
        MaskSet(src, TargetShape())


def test_sample_is_seeded_and_in_range():
    ms = MaskSet(SHAPES["gqa"], TARGETS["gqa"])
    with torch.no_grad():
        for p in ms.log_alpha.values():
            p.zero_()  # log_alpha 0: about 40% of samples land strictly inside (0, 1)
    a, b, c = ms.sample(3, 10, 0), ms.sample(3, 10, 0), ms.sample(3, 10, 1)
    assert all(torch.equal(a[f], b[f]) for f in a)
    assert any(not torch.equal(a[f], c[f]) for f in a)
    z = a["intermediate"]
    assert z.min() >= 0 and z.max() <= 1 and (z == 0).any() and (z == 1).any() and ((z > 0) & (z < 1)).any()


def test_hard_concrete_sample_mean_matches_score():
    la = torch.linspace(-3, 3, 7)
    u = torch.rand(20000, 7, generator=torch.Generator().manual_seed(0)) * (1 - 2 * hc.EPS) + hc.EPS
    frac_nonzero = (hc.sample(la, u) > 0).float().mean(0)
    torch.testing.assert_close(frac_nonzero, hc.score(la), atol=0.015, rtol=0)


def test_gradients_reach_log_alpha_through_the_model():
    shape = SHAPES["gqa"]
    model = MaskedCausalLM(shape, "llama").init_weights(0.05, torch.Generator().manual_seed(0))
    ms = MaskSet(shape, TARGETS["gqa"])
    with torch.no_grad():
        for p in ms.log_alpha.values():
            p.fill_(0.5)  # away from saturation so every family's sample has a gradient
    ids = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(0))
    logits = model(ids[:, :-1], ms.sample(0, 0, 0))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), ids[:, 1:].reshape(-1))
    lag = Lagrangian(ms.families)
    with torch.no_grad():
        for p in lag.lambda1.values():
            p.fill_(1.0)
    (loss + lag(ms.expected_sparsity(), ms.target_sparsity(5, 10))).backward()
    for f, p in ms.log_alpha.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f
    assert all(p.grad is not None for p in lag.parameters())


@pytest.mark.parametrize("start,use_hooks", [(5.0, False), (-3.0, True)])
def test_multipliers_push_sparsity_to_target(start, use_hooks):
    """A task loss that wants every unit kept; the constraint (multipliers ascending) must still move the
    expected sparsity towards the target, from below (start kept) and from above (start pruned)."""
    ms = MaskSet(SHAPES["gqa"], TargetShape(intermediate_size=64), init_mean=start)  # target sparsity 0.5
    with torch.no_grad():
        ms.log_alpha["intermediate"].fill_(start)  # below ln 0.01 too: test the descent from above
    lag = Lagrangian(ms.families)
    opt_mask = torch.optim.AdamW(ms.parameters(), lr=0.1, betas=(0.9, 0.95), weight_decay=0.0)
    if use_hooks:
        negate_gradients(lag.parameters())
        opt_lag = torch.optim.AdamW(lag.parameters(), lr=0.1, betas=(0.9, 0.95), weight_decay=0.0)
    else:
        opt_lag = torch.optim.AdamW(lag.parameters(), lr=0.1, betas=(0.9, 0.95), weight_decay=0.0, maximize=True)
    target = ms.target_sparsity(100, 100)
    s0 = float(ms.expected_sparsity()["intermediate"].detach().mean())
    l1_early = None
    for i in range(60):
        task = 0.01 * ms.expected_sparsity()["intermediate"].mean()  # prefers keeping units
        loss = task + lag(ms.expected_sparsity(), target)
        opt_mask.zero_grad()
        opt_lag.zero_grad()
        loss.backward()
        opt_mask.step()
        opt_lag.step()
        if i == 4:
            l1_early = lag.values()["intermediate.lambda1"]
    s1 = float(ms.expected_sparsity()["intermediate"].detach().mean())
    assert target["intermediate"] == 0.5
    assert abs(s1 - 0.5) < 0.5 * abs(s0 - 0.5), (s0, s1)
    # ascent makes the multiplier's sign follow the violated side (s < t: lambda1 < 0, which rewards sparsity)
    assert (l1_early < 0) if s0 < 0.5 else (l1_early > 0)


def test_target_sparsity_ramp_and_clamp():
    ms = MaskSet(SHAPES["gqa"], TARGETS["gqa"])
    final = ms.target_sparsity(1000, 1000)
    assert final == pytest.approx({"layer": 0.25, "head": 0.5, "intermediate": 0.25, "hidden": 0.25})
    assert ms.target_sparsity(0, 1000) == {f: 0.0 for f in final}
    assert ms.target_sparsity(100, 1000, 0.2)["head"] == pytest.approx(0.25)
    assert ms.target_sparsity(300, 1000, 0.2) == pytest.approx(final)
    assert ms.target_sparsity(0, 1000, 0.0) == pytest.approx(final)
    with torch.no_grad():
        ms.log_alpha["head"].fill_(50)
    ms.clamp_()
    assert float(ms.log_alpha["head"].detach().max()) == pytest.approx(math.log(100))
