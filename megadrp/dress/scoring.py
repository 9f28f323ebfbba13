"""Importance of every prunable unit on calibration batches (higher = more important = kept).

Criteria (``dress.criterion``):
- ``activation``: the mean L2 norm of each unit's *output contribution* (Minitron-style activation
  magnitude, made exact per unit): KV group g -> ||ctx_g W_o[:, g]^T||, FFN channel j -> |h_j| ||W_down[:, j]||,
  hidden dim c -> mean |normed activation_c| over every RMSNorm output (what every read projection sees).
- ``taylor``: first-order Taylor, sum over the unit's coupled slices (units.coupled_slices) of |w * dL/dw|,
  accumulated batch by batch (per-batch absolute values, so opposite-signed batches do not cancel).
- ``magnitude``: the L2 norm of the unit's coupled slices (no data; a baseline).
Layers are always scored by 1 - cos(x_in, x_out) of the residual stream (ShortGPT/Minitron): a layer that
barely turns its input is the cheapest to drop; it needs no gradient and works with every criterion.

``activation`` also runs on a ZeRO-3 engine's module: its hooks read weights inside the owning module's
forward (prepended, so before DeepSpeed releases them). ``taylor`` and ``magnitude`` read whole weights and
gradients outside a forward, so they need a plain (non-ZeRO-3) model.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from megadrp.dress.units import coupled_slices, slice_stats
from megadrp.kernels import ops
from megadrp.kernels.cross_entropy import token_cross_entropy
from megadrp.model.rope import apply_rope

CRITERIA = ("activation", "taylor", "magnitude")


def _all_units(shape) -> dict[str, torch.Tensor]:
    """Masks that mark every head/channel/hidden unit as removed, to enumerate all their coupled slices."""
    return {"head": torch.zeros(shape.num_hidden_layers, shape.num_key_value_heads),
            "intermediate": torch.zeros(shape.num_hidden_layers, shape.intermediate_size),
            "hidden": torch.zeros(shape.hidden_size)}


def _zeros(shape) -> dict[str, torch.Tensor]:
    return {"head": torch.zeros(shape.num_hidden_layers, shape.num_key_value_heads),
            "intermediate": torch.zeros(shape.num_hidden_layers, shape.intermediate_size),
            "hidden": torch.zeros(shape.hidden_size)}


def _unit_sums(model, values: dict[str, torch.Tensor], shape) -> dict[str, torch.Tensor]:
    """Per-unit sums of ``values`` (HF-named tensors, e.g. |w*g|) over every unit's coupled slices."""
    out = _zeros(shape)
    for s in coupled_slices(_all_units(shape), shape, values.keys()):
        family, _, layer = s.group.partition(".")
        n = out[family].shape[-1]
        stats = slice_stats(values[s.param], s, n, 1).cpu()
        if layer:
            out[family][int(layer)] += stats
        else:
            out[family] += stats
    return out


def _hf_params(model) -> dict[str, torch.Tensor]:
    shape, fam = model.shape, model.family
    kmap = fam.key_map(shape.num_hidden_layers, shape.tie_word_embeddings)
    params = dict(model.named_parameters(remove_duplicate=False))
    return {hf: params[internal] for internal, hf in kmap.items()}


def _attention_context(attn, h, cos, sin, backend) -> torch.Tensor:
    """Recompute the attention context [B, T, H*hd] that feeds o_proj (the module keeps it internal)."""
    b, t, _ = h.shape
    q = ops.masked_linear(h, attn.q_weight, attn.q_bias).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = ops.masked_linear(h, attn.k_weight, attn.k_bias).view(b, t, attn.num_kv, attn.head_dim).transpose(1, 2)
    v = ops.masked_linear(h, attn.v_weight, attn.v_bias).view(b, t, attn.num_kv, attn.head_dim).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return ops.attention(q, k, v, backend=backend).transpose(1, 2).reshape(b, t, -1)


class _ActivationHooks:
    """Forward hooks accumulating layer (1 - cos), and, if asked, activation scores of heads, channels, dims."""

    def __init__(self, model, with_units: bool):
        s = model.shape
        self.model, self.with_units, self.tokens = model, with_units, 0
        self.layer = torch.zeros(s.num_hidden_layers, dtype=torch.float64)
        self.head = torch.zeros(s.num_hidden_layers, s.num_key_value_heads, dtype=torch.float64)
        self.intermediate = torch.zeros(s.num_hidden_layers, s.intermediate_size, dtype=torch.float64)
        self.hidden = torch.zeros(s.hidden_size, dtype=torch.float64)
        self.handles = []

    def __enter__(self):
        for i, layer in enumerate(self.model.layers):
            self.handles.append(layer.register_forward_hook(self._layer_hook(i)))
            if self.with_units:
                self.handles.append(layer.self_attn.register_forward_hook(self._attn_hook(i), prepend=True))
                self.handles.append(layer.mlp.register_forward_hook(self._mlp_hook(i), prepend=True))
                for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                    self.handles.append(norm.register_forward_hook(self._norm_hook))
        if self.with_units:
            self.handles.append(self.model.norm.register_forward_hook(self._norm_hook))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def _layer_hook(self, i):
        def hook(module, args, out):
            x_in = args[0].detach().float()
            cos = F.cosine_similarity(x_in, out.detach().float(), dim=-1)  # [B, T]
            self.layer[i] += (1.0 - cos).sum().double()
            if i == 0:
                self.tokens += cos.numel()
        return hook

    def _attn_hook(self, i):
        def hook(module, args, out):
            with torch.no_grad():
                h, cos, sin = args[0], args[1], args[2]
                backend = args[5] if len(args) > 5 else "sdpa"
                ctx = _attention_context(module, h, cos, sin, backend).float()
                width = module.num_heads // module.num_kv * module.head_dim
                w_o = module.o_weight.float()
                for g in range(module.num_kv):
                    cols = slice(g * width, (g + 1) * width)
                    contrib = ctx[..., cols] @ w_o[:, cols].T  # [B, T, d]
                    self.head[i, g] += contrib.norm(dim=-1).sum().double()
        return hook

    def _mlp_hook(self, i):
        def hook(module, args, out):
            with torch.no_grad():
                act = ops.masked_swiglu(args[0], module.gate_weight, module.up_weight).float()  # [B, T, m]
                col_norm = module.down_weight.float().norm(dim=0)  # [m]
                self.intermediate[i] += (act.abs().sum(dim=(0, 1)) * col_norm).double()
        return hook

    def _norm_hook(self, module, args, out):
        self.hidden += out.detach().float().abs().sum(dim=(0, 1)).double()


def score_units(model, batches: Iterable[torch.Tensor], criterion: str = "activation",
                progress=None) -> dict[str, torch.Tensor]:
    """Scores ``layer`` [L], ``head`` [L, G], ``intermediate`` [L, m], ``hidden`` [d] (fp32, CPU).

    ``batches``: token tensors [B, T+1] (inputs and shifted labels), as the domain sampler yields them;
    ``progress(i)`` is called after the i-th batch (1-based).
    The model is left in its original train/eval state with no gradients.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"dress.criterion = {criterion!r}; choose one of {CRITERIA}")
    shape = model.shape
    was_training = model.training
    model.eval()
    params = _hf_params(model)
    taylor = _zeros(shape)
    hooks = _ActivationHooks(model, with_units=criterion == "activation")
    try:
        with hooks:
            for i, tokens in enumerate(batches, 1):
                inputs, labels = tokens[:, :-1], tokens[:, 1:]
                if criterion == "taylor":
                    model.zero_grad(set_to_none=True)
                    logits = model(inputs)
                    token_cross_entropy(logits, labels).mean().backward()
                    with torch.no_grad():
                        wg = {k: (p.detach() * p.grad).abs() for k, p in params.items() if p.grad is not None}
                        for k, v in _unit_sums(model, wg, shape).items():
                            taylor[k] += v
                else:
                    with torch.no_grad():
                        model(inputs)
                if progress is not None:
                    progress(i)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if hooks.tokens == 0:
        raise ValueError("no calibration batches were given")
    scores = {"layer": (hooks.layer / hooks.tokens).float()}
    if criterion == "activation":
        scores.update(head=hooks.head / hooks.tokens, intermediate=hooks.intermediate / hooks.tokens,
                      hidden=hooks.hidden / hooks.tokens)
    elif criterion == "taylor":
        scores.update(taylor)
    else:
        with torch.no_grad():
            sq = _unit_sums(model, {k: p.detach().float().pow(2) for k, p in params.items()}, shape)
        scores.update({k: v.sqrt() for k, v in sq.items()})
    return {k: v.float() for k, v in scores.items()}
