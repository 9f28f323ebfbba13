"""Fused linear + cross-entropy (megadrp/kernels/cross_entropy.py) against the logits path, and the model's
``targets=`` forward that the training step and the held-out evaluation use."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megadrp.kernels.cross_entropy import linear_cross_entropy, token_cross_entropy


def _pair(dtype=torch.float32, n=(3, 37), d=24, v=203, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*n, d, generator=g).to(dtype).requires_grad_()
    w = (0.3 * torch.randn(v, d, generator=g)).to(dtype).requires_grad_()
    t = torch.randint(0, v, n, generator=g)
    return h, w, t


def _grads(loss_fn, h, w, t, autocast=False):
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = loss_fn(h, w, t)
    (2.5 * losses.mean()).backward()
    return losses.detach(), h.grad.clone(), w.grad.clone()


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_losses_and_gradients_match_the_logits_path_fp32(chunk):
    h, w, t = _pair()
    fused = _grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk=chunk), h, w, t)
    plain = _grads(lambda h, w, t: token_cross_entropy(F.linear(h, w), t), h, w, t)
    assert fused[0].shape == t.shape and fused[0].dtype == torch.float32
    for a, b in zip(fused, plain):
        assert _rel(a, b) < 1e-6


@pytest.mark.parametrize("dtype,autocast", [(torch.bfloat16, False), (torch.float32, True)])
def test_bf16_weights_and_bf16_autocast_stay_within_bf16_rounding(dtype, autocast):
    h, w, t = _pair(dtype)
    fused = _grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk=16), h, w, t, autocast)
    plain = _grads(lambda h, w, t: token_cross_entropy(F.linear(h, w), t), h, w, t, autocast)
    assert fused[1].dtype == dtype and fused[2].dtype == dtype  # gradients in the parameters' dtypes
    for a, b in zip(fused, plain):
        assert _rel(a, b) < 2e-2


def test_per_token_weights_raise_instead_of_a_wrong_gradient():
    h, w, t = _pair()
    losses = linear_cross_entropy(h, w, t)
    with pytest.raises(RuntimeError, match="uniform weighting"):
        (losses * torch.linspace(0, 1, t.shape[-1])).sum().backward()


def test_model_targets_forward_equals_logits_then_ce_with_tied_embeddings():
    from megadrp.model import MaskedCausalLM, ModelShape

    shape = ModelShape(vocab_size=300, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       intermediate_size=64, num_hidden_layers=2, tie_word_embeddings=True)
    model = MaskedCausalLM(shape).init_weights(generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(1))
    masks = {"intermediate": torch.rand(2, 64, generator=torch.Generator().manual_seed(2))}
    fused = model(tokens[:, :-1], masks, targets=tokens[:, 1:])
    fused.mean().backward()
    g_fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = token_cross_entropy(model(tokens[:, :-1], masks), tokens[:, 1:])
    plain.mean().backward()
    assert torch.allclose(fused, plain, atol=1e-5)
    for n, p in model.named_parameters():  # the tied embedding gets both its input and its head gradient
        assert _rel(g_fused[n], p.grad) < 1e-5, n
    with torch.no_grad():  # evaluation: no gradient work, same losses
        assert torch.allclose(model(tokens[:, :-1], masks, targets=tokens[:, 1:]), plain, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_ce_on_cuda_bf16_matches_fp32_reference():
    h, w, t = _pair(torch.float32, n=(4, 512), d=256, v=32000)
    ref = _grads(lambda h, w, t: token_cross_entropy(F.linear(h, w), t), h, w, t)
    hc, wc = h.detach().cuda().bfloat16().requires_grad_(), w.detach().cuda().bfloat16().requires_grad_()
    fused = _grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk=300), hc, wc, t.cuda())
    for a, b in zip(fused, ref):
        assert _rel(a.cpu(), b) < 2e-2
