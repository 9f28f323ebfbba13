"""Masked SwiGLU h = silu(x Wg^T) * (x Wu^T) * z_int: z_int folded into W_up's rows, one fused epilogue pass.

silu(g) * u * z == silu(g) * (x (z W_up)^T), so the mask costs one pass over W_up [m, d] instead of one over the
[M, m] activations. The two GEMMs run on cuBLAS (or both in one Triton kernel with `fused=True`, see
fused_gemm.py); silu, product and (in backward) both activation gradients are one Triton elementwise pass each.
Saved for backward: g and u' = u * z (less than eager PyTorch, which also keeps silu(g)).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from megadrp.kernels import mask_fold

_BLOCK = 1024


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, h_ptr, n, BLOCK: tl.constexpr):
    # flat [M * m]: h = silu(g) * u, math in fp32
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    g = tl.load(g_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    tl.store(h_ptr + offs, (g * tl.sigmoid(g) * u).to(h_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _silu_mul_bwd_kernel(dh_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, n, BLOCK: tl.constexpr):
    # flat [M * m]: dg = dh * u * silu'(g), du = dh * silu(g); silu'(g) = s (1 + g (1 - s)), s = sigmoid(g)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    dh = tl.load(dh_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    tl.store(dg_ptr + offs, (dh * u * s * (1.0 + g * (1.0 - s))).to(dg_ptr.dtype.element_ty), mask=inb)
    tl.store(du_ptr + offs, (dh * g * s).to(du_ptr.dtype.element_ty), mask=inb)


def silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    h = torch.empty_like(g)
    n = g.numel()
    _silu_mul_kernel[(triton.cdiv(n, _BLOCK),)](g, u, h, n, BLOCK=_BLOCK)
    return h


class MaskedSwiGLUFn(torch.autograd.Function):
    """x [M, d], w_gate/w_up [m, d], z_int [m] fp32 | None -> h [M, m]."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, z_int, fused=False):
        if fused:
            from megadrp.kernels.fused_gemm import swiglu_gemm
            g, u, h = swiglu_gemm(x, w_gate, w_up, z_int)
        else:
            wu = w_up if z_int is None else mask_fold.fold(w_up, z_int, None)
            g, u = F.linear(x, w_gate), F.linear(x, wu)
            h = silu_mul(g, u)
        ctx.save_for_backward(x, w_gate, w_up, z_int, g, u)
        return h

    @staticmethod
    def backward(ctx, dh):
        x, w_gate, w_up, z_int, g, u = ctx.saved_tensors
        need_x, need_wg, need_wu, need_z = ctx.needs_input_grad[:4]
        dh = dh.contiguous()
        dg, du = torch.empty_like(g), torch.empty_like(u)
        n = g.numel()
        _silu_mul_bwd_kernel[(triton.cdiv(n, _BLOCK),)](dh, g, u, dg, du, n, BLOCK=_BLOCK)
        dx = dwg = dwu = dz = None
        if need_x:
            wu = w_up if z_int is None else mask_fold.fold(w_up, z_int, None)
            dx = dg @ w_gate
            dx.addmm_(du, wu)  # accumulate in the GEMM epilogue (beta = 1): no extra pass
        if need_wg:
            dwg = dg.t() @ x
        if need_wu or need_z:
            dwu = du.t() @ x  # dW_up_eff [m, d]
            if z_int is not None:
                dwu, dz, _ = mask_fold.unfold_grad(dwu, w_up, z_int, None)
        return dx, dwg if need_wg else None, dwu if need_wu else None, dz if need_z else None, None


def masked_swiglu(x, w_gate, w_up, z_int: Optional[torch.Tensor] = None, fused: bool = False):
    """Reference semantics of reference.masked_swiglu; z_int [m] (or [1], broadcast)."""
    m, d = w_gate.shape
    z_int = None if z_int is None else z_int.float().expand(m).contiguous()
    lead = x.shape[:-1]
    return MaskedSwiGLUFn.apply(x.reshape(-1, d), w_gate, w_up, z_int, fused).reshape(*lead, m)
