"""Masked linear y = ((x * z_in) @ W^T + b) * z_out at dense cost: masks folded into W, GEMMs on cuBLAS.

Forward: W_eff = z_out W z_in (Triton, one pass over W), y = x @ W_eff^T + b * z_out (cuBLAS, bias in its
epilogue) -- the tokens are never touched by a mask. Backward: dx = dy @ W_eff (W_eff recomputed rather than
kept, so no extra activation memory), dW_eff = dy^T @ x, then one Triton pass turns dW_eff into dW and the mask
gradients (see mask_fold). `fused=True` swaps the forward GEMM for the Triton kernel of fused_gemm.py that
applies z_in in the K loop and z_out in the epilogue (kept for comparison: see docs/BENCHMARKS.md).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from megadrp.kernels import mask_fold


class MaskedLinearFn(torch.autograd.Function):
    """x [M, K], weight [N, K], bias [N] | None, z_in [K] fp32 | None, z_out [N] fp32 | None -> y [M, N]."""

    @staticmethod
    def forward(ctx, x, weight, bias, z_in, z_out, fused=False):
        if fused:
            from megadrp.kernels.fused_gemm import masked_gemm
            y = masked_gemm(x, weight, bias, z_in, z_out)
        else:
            w_eff = mask_fold.fold(weight, z_out, z_in)
            b_eff = None if bias is None else (bias if z_out is None else (bias.float() * z_out).to(bias.dtype))
            y = F.linear(x, w_eff, b_eff)
        ctx.save_for_backward(x, weight, bias, z_in, z_out)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, z_in, z_out = ctx.saved_tensors
        need_x, need_w, need_b, need_zi, need_zo = ctx.needs_input_grad[:5]
        dy = dy.contiguous()
        dx = dw = db = dzi = dzo = None
        if need_x:
            dx = dy @ mask_fold.fold(weight, z_out, z_in)
        if need_w or need_zi or need_zo:
            g = dy.t() @ x  # dW_eff [N, K]
            g, dzo, dzi = mask_fold.unfold_grad(g, weight, z_out if (need_w or need_zo) else None,
                                                z_in if (need_w or need_zi) else None)
            dw = g if need_w else None
        if bias is not None and (need_b or need_zo):
            dy_sum = dy.float().sum(0)  # [N]
            if need_b:
                db = (dy_sum if z_out is None else dy_sum * z_out).to(bias.dtype)
            if need_zo:
                dzo = dzo + dy_sum * bias.float()
        return dx, dw, db, dzi if need_zi else None, dzo if need_zo else None, None


def masked_linear(x, weight, bias=None, z_in: Optional[torch.Tensor] = None, z_out: Optional[torch.Tensor] = None,
                  fused: bool = False):
    """Reference semantics of reference.masked_linear; z_in/z_out 1-D of length K/N (or 1, broadcast)."""
    n, k = weight.shape
    z_in = None if z_in is None else z_in.float().expand(k).contiguous()
    z_out = None if z_out is None else z_out.float().expand(n).contiguous()
    lead = x.shape[:-1]
    y = MaskedLinearFn.apply(x.reshape(-1, k), weight, bias, z_in, z_out, fused)
    return y.reshape(*lead, n)
