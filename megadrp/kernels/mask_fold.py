"""Triton kernels that move a mask onto the weight instead of the tokens.

((x * z_in) @ W^T) * z_out == x @ (z_out[:, None] * W * z_in[None, :])^T, and W [N, K] is far smaller than the
token matrix x [M, K] at training shapes, so folding the masks into W costs one pass over the weight and lets
the GEMMs run at cuBLAS speed on unmasked activations. The backward undoes the fold on the weight gradient and
reads the mask gradients off it as reductions over the weight:
  dW = dW_eff * z_out z_in^T,   dz_in[k] = sum_n dW_eff * W * z_out,   dz_out[n] = sum_k dW_eff * W * z_in.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from megadrp.kernels.backend import interpreting


def _blocks() -> Tuple[int, int]:
    return (16, 32) if interpreting() else (64, 128)


@triton.jit
def _fold_kernel(w_ptr, zo_ptr, zi_ptr, out_ptr, N, K,
                 HAS_OUT: tl.constexpr, HAS_IN: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # one [BN, BK] tile of W [N, K] -> W * z_out[:, None] * z_in[None, :], math in fp32
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rk = tl.program_id(1) * BK + tl.arange(0, BK)
    inb = (rn[:, None] < N) & (rk[None, :] < K)
    offs = rn[:, None] * K + rk[None, :]
    w = tl.load(w_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    if HAS_OUT:
        w = w * tl.load(zo_ptr + rn, mask=rn < N, other=0.0)[:, None]
    if HAS_IN:
        w = w * tl.load(zi_ptr + rk, mask=rk < K, other=0.0)[None, :]
    tl.store(out_ptr + offs, w.to(out_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _unfold_grad_kernel(g_ptr, w_ptr, zo_ptr, zi_ptr, dzi_part_ptr, dzo_part_ptr, N, K,
                        HAS_OUT: tl.constexpr, HAS_IN: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # g = dW_eff [N, K], overwritten in place by dW; per-tile partial mask gradients:
    # dzi_part [cdiv(N, BN), K] (column sums of this row block), dzo_part [cdiv(K, BK), N] (row sums)
    pn, pk = tl.program_id(0), tl.program_id(1)
    rn = pn * BN + tl.arange(0, BN)
    rk = pk * BK + tl.arange(0, BK)
    inb = (rn[:, None] < N) & (rk[None, :] < K)
    offs = rn[:, None] * K + rk[None, :]
    g = tl.load(g_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    gw = g * tl.load(w_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    zo = tl.load(zo_ptr + rn, mask=rn < N, other=0.0) if HAS_OUT else tl.full((BN,), 1.0, tl.float32)
    zi = tl.load(zi_ptr + rk, mask=rk < K, other=0.0) if HAS_IN else tl.full((BK,), 1.0, tl.float32)
    if HAS_IN:
        tl.store(dzi_part_ptr + pn * K + rk, tl.sum(gw * zo[:, None], axis=0), mask=rk < K)
    if HAS_OUT:
        tl.store(dzo_part_ptr + pk * N + rn, tl.sum(gw * zi[None, :], axis=1), mask=rn < N)
    tl.store(g_ptr + offs, (g * zo[:, None] * zi[None, :]).to(g_ptr.dtype.element_ty), mask=inb)


def fold(w: torch.Tensor, z_out: Optional[torch.Tensor], z_in: Optional[torch.Tensor]) -> torch.Tensor:
    """W [N, K] -> z_out[:, None] * W * z_in[None, :] in W's dtype (one read, one write of W)."""
    w = w.contiguous()
    n, k = w.shape
    out = torch.empty_like(w)
    bn, bk = _blocks()
    _fold_kernel[(triton.cdiv(n, bn), triton.cdiv(k, bk))](
        w, w if z_out is None else z_out, w if z_in is None else z_in, out, n, k,
        HAS_OUT=z_out is not None, HAS_IN=z_in is not None, BN=bn, BK=bk)
    return out


def unfold_grad(g: torch.Tensor, w: torch.Tensor, z_out: Optional[torch.Tensor], z_in: Optional[torch.Tensor]):
    """dW_eff [N, K] (overwritten) -> (dW, dz_out [N] fp32 or None, dz_in [K] fp32 or None)."""
    n, k = g.shape
    bn, bk = _blocks()
    grid = (triton.cdiv(n, bn), triton.cdiv(k, bk))
    dzi = torch.empty(grid[0], k, device=g.device, dtype=torch.float32) if z_in is not None else None
    dzo = torch.empty(grid[1], n, device=g.device, dtype=torch.float32) if z_out is not None else None
    _unfold_grad_kernel[grid](g, w.contiguous(), g if z_out is None else z_out, g if z_in is None else z_in,
                              g if dzi is None else dzi, g if dzo is None else dzo, n, k,
                              HAS_OUT=z_out is not None, HAS_IN=z_in is not None, BN=bn, BK=bk)
    return g, None if dzo is None else dzo.sum(0), None if dzi is None else dzi.sum(0)
