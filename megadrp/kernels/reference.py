"""PyTorch references of megadrp's masked ops: the ground truth every fast path is tested against.

Shapes: x [..., K]; nn.Linear weight layout [N, K]; masks are 1-D and broadcast over leading dims.
Masks are differentiable (they carry learned hard-concrete samples).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  z_in: Optional[torch.Tensor] = None, z_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = ((x * z_in) @ weight.T + bias) * z_out; z_in [K], z_out [N]."""
    if z_in is not None:
        x = x * z_in.to(x.dtype)
    y = F.linear(x, weight, bias)
    if z_out is not None:
        y = y * z_out.to(y.dtype)
    return y


def masked_swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                  z_int: Optional[torch.Tensor] = None) -> torch.Tensor:
    """silu(x @ w_gate.T) * (x @ w_up.T) * z_int; w_gate, w_up [m, d], z_int [m] -> [..., m]."""
    h = F.silu(F.linear(x, w_gate)) * F.linear(x, w_up)
    if z_int is not None:
        h = h * z_int.to(h.dtype)
    return h


def masked_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                   z_hidden: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RMSNorm whose variance runs over the kept dims only (z != 0), output times z.

    Static-shape form: no index_select, no host sync. With z None it is HF's LlamaRMSNorm
    (statistics in fp32, weight applied in the input dtype).
    """
    dtype = x.dtype
    h = x.float()
    if z_hidden is None:
        var = h.pow(2).mean(-1, keepdim=True)
    else:
        keep = (z_hidden != 0).to(h.dtype)
        var = (h.pow(2) * keep).sum(-1, keepdim=True) / keep.sum().clamp_min(1.0)
    y = weight * (h * torch.rsqrt(var + eps)).to(dtype)
    if z_hidden is not None:
        y = y * z_hidden.to(y.dtype)
    return y


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Causal grouped-query attention, eager math; q [B, H, T, hd], k/v [B, G, T, hd] -> [B, H, T, hd]."""
    h, g = q.shape[1], k.shape[1]
    if g != h:  # the reference may repeat K/V; fast paths must not
        k = k.repeat_interleave(h // g, dim=1)
        v = v.repeat_interleave(h // g, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / (q.shape[-1] ** 0.5)
    if causal:
        t = q.shape[2]
        mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - t)
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)
