"""The masked ops the model calls, dispatched to Triton kernels or to the PyTorch references.

Dispatch rule (backend.py): Triton on CUDA tensors (or on CPU under TRITON_INTERPRET=1) when the backend is
'auto' or 'triton'; the references otherwise. The model knows only these functions. The masked GEMMs run
'fold' (masks folded into the weights, cuBLAS GEMMs; the default, measured fastest) or 'fused' (Triton GEMM
with the masks applied on the tile): MEGADRP_GEMM or `set_gemm_impl`.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

from megadrp.kernels import reference
from megadrp.kernels.backend import backend, get_backend, set_backend, use_triton  # noqa: F401 (re-exported)

_GEMM_IMPLS = ("fold", "fused")
_gemm_impl = os.environ.get("MEGADRP_GEMM", "fold")


def set_gemm_impl(name: str) -> None:
    """'fold' (masks on the weights, cuBLAS) or 'fused' (masks inside a Triton GEMM)."""
    global _gemm_impl
    if name not in _GEMM_IMPLS:
        raise ValueError(f"gemm impl {name!r}: choose one of {_GEMM_IMPLS}")
    _gemm_impl = name


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  z_in: Optional[torch.Tensor] = None, z_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = ((x * z_in) @ weight.T + bias) * z_out; z_in [K], z_out [N] (or [1])."""
    if z_in is None and z_out is None:
        return F.linear(x, weight, bias)
    if use_triton(x):
        from megadrp.kernels import linear
        return linear.masked_linear(x, weight, bias, z_in, z_out, fused=_gemm_impl == "fused")
    return reference.masked_linear(x, weight, bias, z_in, z_out)


def masked_swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                  z_int: Optional[torch.Tensor] = None) -> torch.Tensor:
    """silu(x @ w_gate.T) * (x @ w_up.T) * z_int -> [..., m]."""
    if use_triton(x):
        from megadrp.kernels import swiglu
        return swiglu.masked_swiglu(x, w_gate, w_up, z_int, fused=_gemm_impl == "fused")
    return reference.masked_swiglu(x, w_gate, w_up, z_int)


def masked_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                   z_hidden: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RMSNorm with the variance over the kept dims (z != 0), output times z."""
    if use_triton(x):
        from megadrp.kernels import rmsnorm
        return rmsnorm.masked_rmsnorm(x, weight, eps, z_hidden)
    return reference.masked_rmsnorm(x, weight, eps, z_hidden)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              backend: str = "sdpa") -> torch.Tensor:  # noqa: F811 (an SDPA/flash choice, not the kernel switch)
    """Causal GQA attention without materialised K/V repeats; q [B, H, T, hd], k/v [B, G, T, hd].

    The head mask is not applied here: it is the z_in of o_proj's masked GEMM (folded into W_o's columns),
    which costs nothing on the [B, T, H*hd] context (docs/BENCHMARKS.md, Kernels).
    """
    if backend == "eager":
        return reference.attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])
