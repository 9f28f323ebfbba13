"""Mask -> dense surgery: a pure function over state dicts (no model, no DeepSpeed, no files).

Given a source state dict, its shape and the deterministic masks (exact zeros for pruned units, soft
values for kept ones), fold every mask into the weights exactly once and slice the pruned units away,
so that a plain Hugging Face decoder of the achieved shape computes the masked model's logits.

Where each mask goes (the mask placement of Sheared-LLaMA, Xia et al. 2023, which DRPruning follows;
docs/EXPORT.md; x is the residual stream, which carries z_hidden):
- z_head (per KV group): rows of v_proj (and its bias): softmax(qk) @ (v * z) == (softmax(qk) @ v) * z.
- z_layer * z_hidden: output rows of o_proj and down_proj (the only writes into the residual stream
  besides the embedding).
- z_int: rows of up_proj: silu(gate) * (up * z) == silu(gate) * up * z.
- z_hidden: the embedding columns and every RMSNorm weight. The masked RMSNorm takes its variance over
  kept dims only; once pruned dims are sliced away a plain RMSNorm over d' computes the same variance,
  and its output times z_hidden is a norm whose weight is w * z_hidden.
- The LM head is unmasked in the masked model: it is sliced, never scaled, and reads ln_f(x) * z_hidden.
  A *tied* source keeps one matrix E for both ends, so the final norm's z_hidden moves into E instead:
  logits = (E * z) (n * w_f) = E (n * w_f * z), and the input side needs E * z anyway. The final norm is
  then sliced but not scaled, the export stays tied, and z_hidden still enters the logits exactly once.
Input projections (q, k, v, gate, up, lm_head) read only normed, already z_hidden-scaled activations,
so their hidden columns are sliced but not scaled: scaling them too would fold z_hidden twice.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import torch

from megadrp.model.families import HF_EMBED, HF_FINAL_NORM, HF_LAYER_NORMS, HF_LM_HEAD, hf_layer_param, hf_layer_prefix
from megadrp.model.units import FAMILIES, mask_shape


class ExportError(ValueError):
    """A checkpoint or mask set that cannot be exported as asked; the message says why and what to do."""


def normalize_masks(masks: Optional[Mapping[str, torch.Tensor]], shape) -> dict[str, torch.Tensor]:
    """Full fp32 masks for all four families, from any subset of masks or keep-indices.

    A float tensor is a mask of the source's size ([L], [L, G], [L, m], [d]); an integer tensor lists the
    kept units (DReSS passes these): [k] for layer/hidden, [L, k] for head/intermediate. A missing family
    keeps everything (all ones), so a dense ``cpt`` checkpoint goes through the same path.
    """
    masks = dict(masks or {})
    unknown = set(masks) - set(FAMILIES)
    if unknown:
        raise ExportError(f"unknown mask families {sorted(unknown)}; expected a subset of {list(FAMILIES)}")
    num_layers = shape.num_hidden_layers
    out = {}
    for name in FAMILIES:
        full = mask_shape(shape, name)
        z = masks.get(name)
        if z is None:
            out[name] = torch.ones(full)
            continue
        z = torch.as_tensor(z).detach().cpu()
        if not z.is_floating_point() and z.dtype != torch.bool:  # keep-indices -> 0/1 mask
            keep = z.long().reshape(num_layers, -1) if len(full) == 2 else z.long().reshape(-1)
            z = torch.zeros(full).scatter_(len(full) - 1, keep, 1.0)
        z = z.float()
        if tuple(z.shape) != full:
            raise ExportError(f"mask '{name}' has shape {tuple(z.shape)}, the source shape needs {full} "
                              f"(head masks are per KV group: [L, num_key_value_heads])")
        if (z < 0).any() or not torch.isfinite(z).all():
            raise ExportError(f"mask '{name}' has negative or non-finite values; pass deterministic masks")
        out[name] = z
    return out


def kept_counts(masks: Mapping[str, torch.Tensor], shape) -> dict[str, Any]:
    """What the masks keep: layers, hidden dims, and per kept layer the KV groups and FFN channels."""
    z = normalize_masks(masks, shape)
    layers = torch.nonzero(z["layer"]).flatten().tolist()
    return {"num_hidden_layers": len(layers), "hidden_size": int((z["hidden"] != 0).sum()),
            "num_key_value_heads": sorted({int((z["head"][i] != 0).sum()) for i in layers}),
            "intermediate_size": sorted({int((z["intermediate"][i] != 0).sum()) for i in layers})}


def achieved_shape(masks: Mapping[str, torch.Tensor], shape):
    """The ModelShape the masks give (same type as ``shape``); raises if layers would differ in width."""
    counts = kept_counts(masks, shape)
    if counts["num_hidden_layers"] == 0 or counts["hidden_size"] == 0:
        raise ExportError(f"masks keep no layer or no hidden dim: {counts}")
    for name in ("num_key_value_heads", "intermediate_size"):
        if len(counts[name]) != 1 or counts[name][0] == 0:
            raise ExportError(f"masks keep {counts[name]} {name} across the kept layers; a dense HF model needs "
                              f"the same non-zero width in every layer (deterministic masks prune per layer)")
    groups = counts["num_key_value_heads"][0]
    heads_per_group = shape.num_attention_heads // shape.num_key_value_heads
    return dataclasses.replace(
        shape, hidden_size=counts["hidden_size"], num_hidden_layers=counts["num_hidden_layers"],
        num_key_value_heads=groups, num_attention_heads=groups * heads_per_group,
        intermediate_size=counts["intermediate_size"][0], head_dim=_head_dim(shape))


def _head_dim(shape) -> int:
    # head_dim stays the source's even when hidden_size shrinks: never re-derive it from d' / H'.
    return getattr(shape, "head_dim", None) or shape.hidden_size // shape.num_attention_heads


def _rows(groups: torch.Tensor, width: int) -> torch.Tensor:
    """Row indices of the given blocks of ``width`` consecutive rows (heads or KV groups)."""
    return (groups[:, None] * width + torch.arange(width)).flatten()


def prune_hf_state_dict(hf_sd: Mapping[str, torch.Tensor], shape,
                        masks: Optional[Mapping[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], Any]:
    """Fold and slice an HF-named state dict; returns (pruned HF state dict, achieved shape).

    Math runs in fp32 (float64 stays float64); the caller casts to the export dtype. The achieved shape's
    ``tie_word_embeddings`` follows the source: a tied source (no ``lm_head.weight``, or one equal to the
    embedding) folds the final norm's z_hidden into the shared embedding and stays tied.
    """
    z = normalize_masks(masks, shape)
    target = achieved_shape(z, shape)
    hd = _head_dim(shape)
    rep = shape.num_attention_heads // shape.num_key_value_heads
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in hf_sd.values()) else torch.float32

    used: set[str] = set()

    def get(name: str) -> torch.Tensor:
        used.add(name)
        if name not in hf_sd:
            raise ExportError(f"state dict lacks '{name}' (have e.g. {sorted(hf_sd)[:4]})")
        return hf_sd[name].detach().to("cpu", dtype)

    hid = torch.nonzero(z["hidden"]).flatten()
    z_hid = z["hidden"][hid].to(dtype)
    out: dict[str, torch.Tensor] = {}
    embed = get(HF_EMBED)[:, hid]
    head = get(HF_LM_HEAD)[:, hid] if HF_LM_HEAD in hf_sd else embed  # tied sources may omit lm_head
    tied = bool(getattr(shape, "tie_word_embeddings", False)) and torch.equal(head, embed)
    out[HF_EMBED] = embed * z_hid
    # Tied: the final norm's z_hidden lives in the shared embedding (module docstring); untied: in the norm.
    out[HF_FINAL_NORM] = get(HF_FINAL_NORM)[hid] * (1.0 if tied else z_hid)
    if not tied:
        out[HF_LM_HEAD] = head
    target = dataclasses.replace(target, tie_word_embeddings=tied)

    for new, old in enumerate(torch.nonzero(z["layer"]).flatten().tolist()):
        src = lambda name, kind="weight": hf_layer_param(old, name, kind)
        dst = lambda name, kind="weight": hf_layer_param(new, name, kind)
        z_out = (z["layer"][old] * z_hid)[:, None]  # scales every write into the residual stream
        groups = torch.nonzero(z["head"][old]).flatten()
        q_rows, kv_rows = _rows(groups, rep * hd), _rows(groups, hd)
        z_v = z["head"][old][groups].to(dtype).repeat_interleave(hd)
        chans = torch.nonzero(z["intermediate"][old]).flatten()
        z_int = z["intermediate"][old][chans].to(dtype)[:, None]
        out[dst("q_proj")] = get(src("q_proj"))[q_rows][:, hid]
        out[dst("k_proj")] = get(src("k_proj"))[kv_rows][:, hid]
        out[dst("v_proj")] = get(src("v_proj"))[kv_rows][:, hid] * z_v[:, None]
        for proj, rows, scale in (("q_proj", q_rows, None), ("k_proj", kv_rows, None), ("v_proj", kv_rows, z_v)):
            if src(proj, "bias") in hf_sd:  # qwen2: q/k/v biases
                out[dst(proj, "bias")] = get(src(proj, "bias"))[rows] * (1.0 if scale is None else scale)
        out[dst("o_proj")] = get(src("o_proj"))[hid][:, q_rows] * z_out
        if src("o_proj", "bias") in hf_sd:  # llama with attention_bias=True
            out[dst("o_proj", "bias")] = get(src("o_proj", "bias"))[hid] * z_out[:, 0]
        out[dst("gate_proj")] = get(src("gate_proj"))[chans][:, hid]
        out[dst("up_proj")] = get(src("up_proj"))[chans][:, hid] * z_int
        out[dst("down_proj")] = get(src("down_proj"))[hid][:, chans] * z_out
        for norm in HF_LAYER_NORMS:
            out[dst(norm)] = get(src(norm))[hid] * z_hid
    # Refuse rather than silently drop a tensor this surgery does not know how to slice (e.g. MLP biases).
    dropped = {hf_layer_prefix(i) for i in range(shape.num_hidden_layers) if z["layer"][i] == 0}
    unknown = [k for k in hf_sd if k not in used and not k.endswith("rotary_emb.inv_freq")
               and not any(k.startswith(p) for p in dropped)]
    if unknown:
        raise ExportError(f"do not know how to prune {unknown[:4]} ({len(unknown)} tensors)")
    return {k: v.contiguous() for k, v in out.items()}, target


def prune_state_dict(internal_sd: Mapping[str, torch.Tensor], source_shape, family,
                     masks: Optional[Mapping[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], Any]:
    """MaskedCausalLM state dict -> (pruned HF state dict, achieved ModelShape) for ``family``.

    Keys go through the family registry's explicit map first, so an unknown or missing weight is an
    error; ``masks=None`` (a dense ``cpt`` checkpoint) only converts names.
    """
    from megadrp.model.families import get_family

    fam = get_family(family) if isinstance(family, str) else family
    hf_sd = fam.internal_to_hf(dict(internal_sd), tie_word_embeddings=bool(source_shape.tie_word_embeddings))
    return prune_hf_state_dict(hf_sd, source_shape, masks)
