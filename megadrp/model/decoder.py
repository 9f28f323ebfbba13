"""MaskedCausalLM: a LLaMA-family decoder (llama, mistral, qwen2) that runs with optional pruning masks.

The module holds only dense weights; masks arrive per forward as a dict (any subset of layer [L],
head [L, G], intermediate [L, m], hidden [d]). All masked math goes through megadrp.kernels.ops so the Triton
kernels can replace the references. Each parameter is owned by the module whose forward uses it, so that
ZeRO-3's per-module gather hooks fetch it; nothing in __init__ reads or initialises weights (zero.Init-safe).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from megadrp.kernels import ops
from megadrp.kernels.cross_entropy import linear_cross_entropy
from megadrp.model.families import ModelFamily, get_family
from megadrp.model.rope import apply_rope, cos_sin
from megadrp.model.shape import ModelShape


def _param(*shape, dtype=None) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype))


def _mul(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if a is None:
        return b
    return a if b is None else a * b


class MaskedRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = _param(dim, dtype=dtype)

    def forward(self, x, z_hidden=None):
        return ops.masked_rmsnorm(x, self.weight, self.eps, z_hidden)


class MaskedAttention(nn.Module):
    def __init__(self, s: ModelShape, dtype=None):
        super().__init__()
        self.num_heads, self.num_kv, self.head_dim = s.num_attention_heads, s.num_key_value_heads, s.head_dim
        d, qd, kvd = s.hidden_size, s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim
        self.q_weight, self.k_weight, self.v_weight = _param(qd, d, dtype=dtype), _param(kvd, d, dtype=dtype), \
            _param(kvd, d, dtype=dtype)
        self.o_weight = _param(d, qd, dtype=dtype)
        if s.attention_bias:
            self.q_bias, self.k_bias, self.v_bias = _param(qd, dtype=dtype), _param(kvd, dtype=dtype), \
                _param(kvd, dtype=dtype)
        else:
            self.q_bias = self.k_bias = self.v_bias = None

    def forward(self, h, cos, sin, z_head=None, z_out=None, backend="sdpa"):
        b, t, _ = h.shape
        q = ops.masked_linear(h, self.q_weight, self.q_bias).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = ops.masked_linear(h, self.k_weight, self.k_bias).view(b, t, self.num_kv, self.head_dim).transpose(1, 2)
        v = ops.masked_linear(h, self.v_weight, self.v_bias).view(b, t, self.num_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        ctx = ops.attention(q, k, v, backend=backend).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        z_in = None
        if z_head is not None:
            # z_head has one value per KV group (per head under MHA); query head j belongs to group j // (H/G),
            # as in HF's repeat_kv, so each value covers (H/G) * head_dim context columns.
            z_in = z_head.repeat_interleave(self.num_heads // z_head.shape[0] * self.head_dim)
        return ops.masked_linear(ctx, self.o_weight, None, z_in=z_in, z_out=z_out)


class MaskedMLP(nn.Module):
    def __init__(self, s: ModelShape, dtype=None):
        super().__init__()
        d, m = s.hidden_size, s.intermediate_size
        self.gate_weight, self.up_weight = _param(m, d, dtype=dtype), _param(m, d, dtype=dtype)
        self.down_weight = _param(d, m, dtype=dtype)

    def forward(self, h, z_int=None, z_out=None):
        return ops.masked_linear(ops.masked_swiglu(h, self.gate_weight, self.up_weight, z_int), self.down_weight,
                                 None, z_out=z_out)


class MaskedDecoderLayer(nn.Module):
    def __init__(self, s: ModelShape, dtype=None):
        super().__init__()
        self.input_layernorm = MaskedRMSNorm(s.hidden_size, s.rms_norm_eps, dtype)
        self.self_attn = MaskedAttention(s, dtype)
        self.post_attention_layernorm = MaskedRMSNorm(s.hidden_size, s.rms_norm_eps, dtype)
        self.mlp = MaskedMLP(s, dtype)

    def forward(self, x, cos, sin, z_layer=None, z_head=None, z_int=None, z_hidden=None, backend="sdpa"):
        # Every write into the residual stream is gated by z_layer * z_hidden, so pruned hidden dims stay 0
        # and a pruned layer (z_layer = 0) is an identity, while shapes stay static for training.
        z_out = _mul(z_layer, z_hidden)
        x = x + self.self_attn(self.input_layernorm(x, z_hidden), cos, sin, z_head, z_out, backend)
        return x + self.mlp(self.post_attention_layernorm(x, z_hidden), z_int, z_out)


class LMHead(nn.Module):
    """The output projection (``weight`` [V, d]). Given targets it returns fp32 per-token losses through the
    fused, chunked linear + cross-entropy (megadrp/kernels/cross_entropy.py) instead of the [.., V] logits.
    The loss runs inside this module's forward so that ZeRO-3's gather hook of the head fetches its weight."""

    def __init__(self, hidden_size: int, vocab_size: int, dtype=None):
        super().__init__()
        self.weight = _param(vocab_size, hidden_size, dtype=dtype)

    def forward(self, h, targets: Optional[torch.Tensor] = None):
        if targets is None:
            return F.linear(h, self.weight)
        return linear_cross_entropy(h, self.weight, targets)


class MaskedCausalLM(nn.Module):
    """forward(input_ids [B, T], masks=None) -> logits [B, T, V] in the weight dtype;
    forward(input_ids, masks, targets=[B, T]) -> fp32 per-token losses [B, T] (fused LM head + CE, no logits)."""

    def __init__(self, shape: ModelShape, family="llama", dtype: Optional[torch.dtype] = None,
                 activation_checkpointing: bool = False, attn_backend: str = "sdpa"):
        super().__init__()
        self.shape = shape
        self.family: ModelFamily = get_family(family) if isinstance(family, str) else family
        if shape.attention_bias != self.family.qkv_bias:
            raise ValueError(f"family {self.family.name} has qkv_bias={self.family.qkv_bias} but the shape has "
                             f"attention_bias={shape.attention_bias}")
        self.activation_checkpointing = activation_checkpointing
        self.attn_backend = attn_backend
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(MaskedDecoderLayer(shape, dtype) for _ in range(shape.num_hidden_layers))
        self.norm = MaskedRMSNorm(shape.hidden_size, shape.rms_norm_eps, dtype)
        self.lm_head = LMHead(shape.hidden_size, shape.vocab_size, dtype=dtype)
        if shape.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: Optional[torch.Generator] = None):
        """Random init: normal(0, std) matrices and embeddings, zero biases, unit norms (HF's scheme)."""
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                p.fill_(1.0)
            elif name.endswith("_bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=generator)
        return self

    def forward(self, input_ids: torch.Tensor, masks: Optional[Dict[str, torch.Tensor]] = None,
                targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        masks = masks or {}
        unknown = set(masks) - {"layer", "head", "intermediate", "hidden"}
        if unknown:
            raise KeyError(f"unknown mask families {sorted(unknown)}")
        t = input_ids.shape[1]
        if self.shape.sliding_window is not None and t > self.shape.sliding_window:
            raise ValueError(f"sequence length {t} exceeds sliding_window {self.shape.sliding_window}; "
                             "sliding-window attention is not implemented")
        z_hidden, z_layer = masks.get("hidden"), masks.get("layer")
        z_head, z_int = masks.get("head"), masks.get("intermediate")
        x = self.embed_tokens(input_ids)
        if z_hidden is not None:
            x = x * z_hidden.to(x.dtype)
        cos, sin = cos_sin(t, self.shape.head_dim, self.shape.rope_theta, self.shape.rope_scaling, x.device, x.dtype)
        for i, layer in enumerate(self.layers):
            args = (x, cos, sin, None if z_layer is None else z_layer[i:i + 1],
                    None if z_head is None else z_head[i], None if z_int is None else z_int[i], z_hidden,
                    self.attn_backend)
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return self.lm_head(self.norm(x, z_hidden), targets)
