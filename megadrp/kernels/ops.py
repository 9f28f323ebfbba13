"""The masked ops the model calls, dispatched to Triton kernels or to the PyTorch references.

Dispatch rule: Triton on CUDA tensors (or anywhere under TRITON_INTERPRET=1) when the backend is
'auto' or 'triton'; the references otherwise. The model knows only these functions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from megadrp.kernels import reference

masked_linear = reference.masked_linear
masked_swiglu = reference.masked_swiglu
masked_rmsnorm = reference.masked_rmsnorm


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Causal GQA attention without materialised K/V repeats; q [B, H, T, hd], k/v [B, G, T, hd]."""
    if backend == "eager":
        return reference.attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])
