"""Dispatcher and hard-mask semantics on the PyTorch path (no interpreter): backend switch, no-mask fast path,
the hard path equal to the soft path, and the cached kept indices following mask changes."""
import pytest
import torch
import torch.nn.functional as F

from experiments import hard_mask_ops as hard
from megadrp.kernels import backend as kb
from megadrp.kernels import ops, reference


def test_backend_switch_and_errors():
    assert kb.get_backend() in ("auto", "triton", "torch")
    x = torch.randn(3, 8)
    with kb.backend("torch"):
        assert not kb.use_triton(x)
    if not kb.interpreting():
        with kb.backend("auto"):
            assert not kb.use_triton(x)  # CPU tensor, no interpreter: the reference
        with kb.backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            kb.use_triton(x)
    with pytest.raises(ValueError):
        kb.set_backend("cuda")
    with pytest.raises(ValueError):
        ops.set_gemm_impl("magic")


def test_unmasked_linear_is_plain_linear():
    x, w, b = torch.randn(4, 5, 6), torch.randn(7, 6), torch.randn(7)
    assert torch.equal(ops.masked_linear(x, w, b), F.linear(x, w, b))


def test_ops_follow_reference_on_cpu():
    g = torch.Generator().manual_seed(0)
    x, w, z = torch.randn(3, 10, generator=g), torch.randn(6, 10, generator=g), torch.rand(10, generator=g)
    assert torch.equal(ops.masked_linear(x, w, None, z_in=z), reference.masked_linear(x, w, None, z_in=z))


def _soft_hard_mlp(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    d, m = 16, 24
    x = torch.randn(2, 5, d, generator=g, dtype=dtype)
    ws = [torch.randn(*s, generator=g, dtype=dtype) / 4 for s in [(m, d), (m, d), (d, m)]]
    z = torch.rand(m, generator=g)
    z[::3] = 0.0
    return x, ws, z, torch.rand(d, generator=g)


def test_hard_mlp_equals_soft_and_skips_pruned():
    x, ws, z, z_out = _soft_hard_mlp()
    soft_in = [t.clone().requires_grad_() for t in [x, *ws]]
    hard_in = [t.clone().requires_grad_() for t in [x, *ws]]
    soft = ops.masked_linear(ops.masked_swiglu(soft_in[0], soft_in[1], soft_in[2], z), soft_in[3], None,
                             z_out=z_out)
    y = hard.hard_masked_mlp(*hard_in, z, z_out)
    torch.testing.assert_close(y, soft, rtol=1e-5, atol=1e-6)
    dy = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, hard_in, dy), torch.autograd.grad(soft, soft_in, dy)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert hard.kept_index(z).numel() == int((z != 0).sum())


def test_kept_index_cache_follows_in_place_changes():
    z = torch.ones(9)
    assert hard.kept_index(z).tolist() == list(range(9))
    z[4] = 0.0  # bumps the tensor version: the cache must not serve the stale indices
    assert hard.kept_index(z).tolist() == [0, 1, 2, 3, 5, 6, 7, 8]


@pytest.mark.parametrize("heads,groups", [(6, 3), (4, 4)])
def test_hard_attention_equals_soft(heads, groups):
    g = torch.Generator().manual_seed(2)
    hd, d, b, t = 8, 20, 2, 7
    h = torch.randn(b, t, d, generator=g)
    wq, wo = torch.randn(heads * hd, d, generator=g) / 4, torch.randn(d, heads * hd, generator=g) / 4
    wk, wv = torch.randn(groups * hd, d, generator=g) / 4, torch.randn(groups * hd, d, generator=g) / 4
    z_head = torch.rand(groups, generator=g) + 0.1
    z_head[1] = 0.0
    z_out = torch.rand(d, generator=g)

    def soft(h, wq, wk, wv, wo):
        q = F.linear(h, wq).view(b, t, heads, hd).transpose(1, 2)
        k = F.linear(h, wk).view(b, t, groups, hd).transpose(1, 2)
        v = F.linear(h, wv).view(b, t, groups, hd).transpose(1, 2)
        ctx = ops.attention(q, k, v).transpose(1, 2).reshape(b, t, heads * hd)
        return ops.masked_linear(ctx, wo, None, z_in=z_head.repeat_interleave(heads // groups * hd), z_out=z_out)

    ins = [t_.clone().requires_grad_() for t_ in (h, wq, wk, wv, wo)]
    hins = [t_.clone().requires_grad_() for t_ in (h, wq, wk, wv, wo)]
    ys, yh = soft(*ins), hard.hard_masked_attention(*hins, z_head, heads, hd, z_out=z_out)
    torch.testing.assert_close(yh, ys, rtol=1e-5, atol=1e-6)
    dy = torch.randn(ys.shape, generator=g)
    for a, c in zip(torch.autograd.grad(yh, hins, dy), torch.autograd.grad(ys, ins, dy)):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
