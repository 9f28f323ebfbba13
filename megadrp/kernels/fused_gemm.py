"""Fused Triton GEMM forwards: the masked GEMM (z_in in the K loop, bias and z_out in the epilogue) and the
SwiGLU dual GEMM (gate and up tiles accumulated side by side, silu * u * z_int in the epilogue).

These are the "one pass over the output tile" forms; the default path (linear.py, swiglu.py) folds the
masks into the weights and runs cuBLAS instead, because that measured faster on an H100 (docs/BENCHMARKS.md).
Both share the cuBLAS backward of their autograd Functions.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from megadrp.kernels.backend import interpreting


def _configs():
    if interpreting():  # the interpreter fails with more than one autotune config, and is slow on big tiles
        return [triton.Config({"BM": 16, "BN": 16, "BK": 32, "GROUP_M": 2}, num_warps=1, num_stages=1)]
    return [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in [(128, 256, 64, 8, 3), (128, 128, 64, 4, 4), (128, 128, 64, 8, 3),
                                     (64, 128, 64, 4, 4)]]


@triton.jit
def _tile(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    # grouped launch order: GROUP_M row blocks share each column block of W while it sits in L2
    pid = tl.program_id(0)
    num_m, num_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pm = first_m + (pid % (GROUP_M * num_n)) % size_m
    pn = (pid % (GROUP_M * num_n)) // size_m
    return pm, pn


@triton.autotune(configs=_configs(), key=["M", "N", "K"])
@triton.jit
def _masked_gemm_kernel(x_ptr, w_ptr, b_ptr, zi_ptr, zo_ptr, y_ptr, M, N, K,
                        HAS_B: tl.constexpr, HAS_IN: tl.constexpr, HAS_OUT: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    # x [M, K] @ W[N, K]^T -> y [M, N]; tile [BM, BN]
    pm, pn = _tile(M, N, BM, BN, GROUP_M)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        a = tl.load(x_ptr + rm[:, None].to(tl.int64) * K + rk[None, :],
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)  # [BM, BK]
        if HAS_IN:
            a = (a * tl.load(zi_ptr + rk, mask=rk < K, other=0.0)[None, :]).to(x_ptr.dtype.element_ty)
        b = tl.load(w_ptr + rn[None, :].to(tl.int64) * K + rk[:, None],
                    mask=(rn[None, :] < N) & (rk[:, None] < K), other=0.0)  # [BK, BN] view of W^T
        acc = tl.dot(a, b, acc)
    if HAS_B:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if HAS_OUT:
        acc *= tl.load(zo_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.autotune(configs=_configs(), key=["M", "N", "K"])
@triton.jit
def _swiglu_gemm_kernel(x_ptr, wg_ptr, wu_ptr, z_ptr, g_ptr, u_ptr, h_ptr, M, N, K, HAS_Z: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    # x [M, K] @ Wg[N, K]^T, x @ Wu[N, K]^T in one K loop -> g, u * z, h = silu(g) * u * z, each [M, N]
    pm, pn = _tile(M, N, BM, BN, GROUP_M)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        a = tl.load(x_ptr + rm[:, None].to(tl.int64) * K + rk[None, :],
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)  # [BM, BK]
        wmask = (rn[None, :] < N) & (rk[:, None] < K)
        woffs = rn[None, :].to(tl.int64) * K + rk[:, None]
        acc_g = tl.dot(a, tl.load(wg_ptr + woffs, mask=wmask, other=0.0), acc_g)  # [BK, BN] tiles
        acc_u = tl.dot(a, tl.load(wu_ptr + woffs, mask=wmask, other=0.0), acc_u)
    if HAS_Z:
        acc_u *= tl.load(z_ptr + rn, mask=rn < N, other=0.0)[None, :]
    dt = h_ptr.dtype.element_ty
    # round g and u' to the storage dtype first so that backward (which reads them back) sees the same values
    g = acc_g.to(dt).to(tl.float32)
    u = acc_u.to(dt).to(tl.float32)
    offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    omask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(g_ptr + offs, g.to(dt), mask=omask)
    tl.store(u_ptr + offs, u.to(dt), mask=omask)
    tl.store(h_ptr + offs, (g * tl.sigmoid(g) * u).to(dt), mask=omask)


def _grid(m, n):
    return lambda meta: (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),)


def masked_gemm(x, w, b, z_in, z_out):
    """((x [M, K] * z_in) @ w [N, K]^T + b) * z_out -> [M, N]; masks fp32, length K / N."""
    x, w = x.contiguous(), w.contiguous()
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    _masked_gemm_kernel[_grid(m, n)](x, w, x if b is None else b, x if z_in is None else z_in,
                                     x if z_out is None else z_out, y, m, n, k, HAS_B=b is not None,
                                     HAS_IN=z_in is not None, HAS_OUT=z_out is not None)
    return y


def swiglu_gemm(x, w_gate, w_up, z_int):
    """x [M, d], w_gate/w_up [m, d], z_int [m] fp32 | None -> (g, u * z_int, h), each [M, m]."""
    x, w_gate, w_up = x.contiguous(), w_gate.contiguous(), w_up.contiguous()
    mm, k = x.shape
    n = w_gate.shape[0]
    g, u, h = (torch.empty(mm, n, device=x.device, dtype=x.dtype) for _ in range(3))
    _swiglu_gemm_kernel[_grid(mm, n)](x, w_gate, w_up, x if z_int is None else z_int, g, u, h, mm, n, k,
                                      HAS_Z=z_int is not None)
    return g, u, h
