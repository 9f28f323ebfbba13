"""Hard-mask path: deterministic masks with exact zeros, pruned channels and heads skipped, not multiplied.

The kept indices are gathered once per mask change (one host sync, cached on the mask tensor's identity and
version); each call then gathers the kept rows/columns of the weights (a weight-sized copy, differentiable)
and runs the masked ops on the compacted shapes, so GEMM and attention time falls with the kept fraction.
Outputs and weight gradients equal the soft path's when the masks have exact zeros; the gradient of a pruned
unit's mask value is not computed (0), since a hard mask is a decision, not a parameter being learned.
"""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Optional, Tuple

import torch

from megadrp.kernels import ops

_cache: Dict[Tuple[int, str], Tuple[weakref.ref, int, object]] = {}


def _cached(z: torch.Tensor, tag: str, make: Callable[[], object]):
    key = (id(z), tag)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is z and hit[1] == z._version:
        return hit[2]
    if len(_cache) > 256:  # masks change rarely; drop dead entries now and then
        for k in [k for k, v in _cache.items() if v[0]() is None]:
            del _cache[k]
    value = make()
    _cache[key] = (weakref.ref(z), z._version, value)
    return value


def kept_index(z: torch.Tensor) -> torch.Tensor:
    """Indices of the nonzero entries of a 1-D mask (cached per mask tensor and version)."""
    return _cached(z, "kept", lambda: torch.nonzero(z.detach() != 0).flatten())


def head_columns(z_head: torch.Tensor, num_heads: int, head_dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """For a per-KV-group mask z_head [G]: (q/o feature indices of the kept groups' query heads [H' * hd],
    k/v feature indices of the kept groups [G' * hd]), in HF's head order (query head j is in group j // (H/G))."""
    def make():
        g = z_head.shape[0]
        groups = kept_index(z_head)
        rep = num_heads // g
        ar = torch.arange(head_dim, device=z_head.device)
        q_heads = (groups[:, None] * rep + torch.arange(rep, device=z_head.device)[None, :]).flatten()
        return (q_heads[:, None] * head_dim + ar).flatten(), (groups[:, None] * head_dim + ar).flatten()
    return _cached(z_head, f"heads{num_heads}x{head_dim}", make)


def hard_masked_mlp(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                    z_int: torch.Tensor, z_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """masked_linear(masked_swiglu(x, w_gate, w_up, z_int), w_down, z_out=z_out) over the kept channels only."""
    idx = kept_index(z_int)
    h = ops.masked_swiglu(x, w_gate.index_select(0, idx), w_up.index_select(0, idx), z_int.index_select(0, idx))
    return ops.masked_linear(h, w_down.index_select(1, idx), None, z_out=z_out)  # [..., d]


def hard_masked_attention(h: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, wo: torch.Tensor,
                          z_head: torch.Tensor, num_heads: int, head_dim: int,
                          z_out: Optional[torch.Tensor] = None,
                          biases: Tuple[Optional[torch.Tensor], ...] = (None, None, None),
                          rope: Optional[Callable] = None, backend: str = "sdpa") -> torch.Tensor:
    """Attention block (q/k/v projections, causal GQA core, o_proj with z_head on its input and z_out on its
    output) over the kept KV groups only; h [B, T, d], z_head [G] -> [B, T, d]. `rope(q, k) -> (q, k)`."""
    b, t, _ = h.shape
    q_idx, kv_idx = head_columns(z_head, num_heads, head_dim)
    g_kept = kv_idx.numel() // head_dim
    h_kept = q_idx.numel() // head_dim

    def proj(w, bias, idx, n):
        bias = None if bias is None else bias.index_select(0, idx)
        return ops.masked_linear(h, w.index_select(0, idx), bias).view(b, t, n, head_dim).transpose(1, 2)

    q, k, v = proj(wq, biases[0], q_idx, h_kept), proj(wk, biases[1], kv_idx, g_kept), \
        proj(wv, biases[2], kv_idx, g_kept)
    if rope is not None:
        q, k = rope(q, k)
    ctx = ops.attention(q, k, v, backend=backend).transpose(1, 2).reshape(b, t, h_kept * head_dim)
    z_in = z_head.index_select(0, kept_index(z_head)).repeat_interleave(num_heads // z_head.shape[0] * head_dim)
    return ops.masked_linear(ctx, wo.index_select(1, q_idx), None, z_in=z_in, z_out=z_out)
