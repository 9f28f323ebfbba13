"""Rotary position embeddings as Hugging Face computes them (default, linear and llama3 scaling).

The inverse frequencies are recomputed from python numbers in each forward instead of living in a buffer:
a buffer would be cast by `model.to(bfloat16)` and lose RoPE precision, and it would be one more thing for
ZeRO-3 to manage. The cost is a few hundred flops.
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def inv_freq(head_dim: int, theta: float, scaling: Optional[dict], device=None) -> torch.Tensor:
    """[head_dim // 2] fp32 inverse frequencies, bit-identical to transformers' RoPE init functions."""
    # arange on the device: a host arange copied over would be a blocking host-to-device copy every forward
    f = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).to(torch.float) / head_dim))
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type == "default":
        return f
    if rope_type == "linear":
        return f / scaling["factor"]
    if rope_type == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / f
        scaled = torch.where(wavelen > low_wavelen, f / factor, f)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"rope_type {rope_type!r} is not supported; supported: default, linear, llama3")


def cos_sin(seq_len: int, head_dim: int, theta: float, scaling: Optional[dict], device, dtype):
    """cos, sin [T, head_dim] for positions 0..T-1, computed in fp32 then cast (as HF does)."""
    f = inv_freq(head_dim, theta, scaling, device)
    pos = torch.arange(seq_len, device=device, dtype=torch.float)
    freqs = pos[:, None] * f[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, hd]; HF's rotate-half convention."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
