"""GPU parity of the compiled Triton kernels: bf16 on CUDA vs the references in fp32 on the same values.

Relative L2 error under 1e-2 (bf16 operands land between 1e-3 and 1e-2); odd sizes off the block grid.
"""
import pytest
import torch

from experiments import hard_mask_ops as hard
from megadrp.kernels import ops, reference
from megadrp.kernels.backend import backend

pytestmark = pytest.mark.gpu
TOL = 1e-2


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def _check(fast, ref, inputs, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    f_in = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    r_in = [None if t is None else t.detach().float().clone().requires_grad_() for t in inputs]
    with backend("triton"):
        y = fast(*f_in)
    y_ref = ref(*r_in)
    assert torch.isfinite(y).all() and y.dtype == torch.bfloat16
    dy = torch.randn(y_ref.shape, device="cuda", generator=g)
    with backend("triton"):
        grads = torch.autograd.grad(y, [t for t in f_in if t is not None], dy.bfloat16())
    grads_ref = torch.autograd.grad(y_ref, [t for t in r_in if t is not None], dy)
    assert _rel(y, y_ref) < TOL, _rel(y, y_ref)
    for i, (a, b) in enumerate(zip(grads, grads_ref)):
        assert torch.isfinite(a).all() and _rel(a, b) < TOL, (i, _rel(a, b))


def _mask(n, zeros=True):
    z = torch.rand(n, device="cuda") * 0.9 + 0.1
    if zeros:
        z[torch.randperm(n, device="cuda")[: n // 4]] = 0.0
    return z


def _r(*shape, scale=1.0):
    return torch.randn(*shape, device="cuda").mul(scale).bfloat16()


@pytest.mark.parametrize("impl", ["fold", "fused"])
@pytest.mark.parametrize("bias", [False, True])
def test_masked_linear_bf16(impl, bias):
    m, k, n = 1000, 1000, 777
    ops.set_gemm_impl(impl)
    try:
        _check(ops.masked_linear, reference.masked_linear,
               [_r(m, k), _r(n, k, scale=k ** -0.5), _r(n) if bias else None, _mask(k), _mask(n)], 1)
    finally:
        ops.set_gemm_impl("fold")


@pytest.mark.parametrize("impl", ["fold", "fused"])
def test_masked_swiglu_bf16(impl):
    m, d, f = 999, 576, 1531
    ops.set_gemm_impl(impl)
    try:
        _check(ops.masked_swiglu, reference.masked_swiglu,
               [_r(m, d), _r(f, d, scale=d ** -0.5), _r(f, d, scale=d ** -0.5), _mask(f)], 2)
    finally:
        ops.set_gemm_impl("fold")


@pytest.mark.parametrize("d", [576, 4096, 1000])
def test_masked_rmsnorm_bf16(d):
    _check(lambda x, w, z: ops.masked_rmsnorm(x, w, 1e-6, z), lambda x, w, z: reference.masked_rmsnorm(x, w, 1e-6, z),
           [_r(777, d, scale=3.0), 1 + _r(d, scale=0.3), _mask(d)], 3)


def test_hard_mlp_matches_soft_bf16():
    x, wg, wu, wd = _r(513, 320), _r(900, 320, scale=0.05), _r(900, 320, scale=0.05), _r(320, 900, scale=0.05)
    z, zo = _mask(900), _mask(320, zeros=False)
    with backend("triton"):
        soft = ops.masked_linear(ops.masked_swiglu(x, wg, wu, z), wd, None, z_out=zo)
        assert _rel(hard.hard_masked_mlp(x, wg, wu, wd, z, zo), soft) < TOL
