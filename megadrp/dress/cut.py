"""Cut the selected units out through the export path (megadrp.export), with DReSS's one correction.

The regularised model is dense: removed hidden dims are (near) zero in the residual stream but still counted
in every RMSNorm's mean of squares (over d). The sliced model averages over d' dims only, so every norm
output would grow by sqrt(d / d')... in the wrong direction for the dense model's function: the dense model
computes w * x / sqrt(sum_kept(x^2) / d) = sqrt(d / d') * (w * x / rms_kept). Folding sqrt(d / d') into every
norm weight, and eps * d / d' into rms_norm_eps (the mean is over d' dims now), makes the sliced model compute
exactly what the dense model computed with those dims at zero.
(Embeddings and the LM head are left unscaled, so a tied source stays tied.) Heads, channels and layers
need no correction: a zero slice contributes exactly nothing.
"""
from __future__ import annotations

from typing import Mapping

import torch

from megadrp.dress.select import keep_indices


def hidden_norm_scale(masks: Mapping[str, torch.Tensor], hidden_size: int) -> float:
    """sqrt(d / d') when hidden dims are removed, else 1."""
    if "hidden" not in masks:
        return 1.0
    kept = int((torch.as_tensor(masks["hidden"]) != 0).sum())
    return (hidden_size / kept) ** 0.5


def prune_dense_state_dict(internal_sd: Mapping[str, torch.Tensor], shape, family,
                           masks: Mapping[str, torch.Tensor], compensate_norms: bool = True):
    """MaskedCausalLM state dict + 0/1 keep masks -> (pruned HF state dict, achieved ModelShape).

    The masks go to megadrp.export as keep-indices (nothing is folded: kept units keep their weights).
    """
    from megadrp.export import prune_state_dict

    sd = compensated_state_dict(internal_sd, shape, masks) if compensate_norms else dict(internal_sd)
    return prune_state_dict(sd, compensated_shape(shape, masks) if compensate_norms else shape, family,
                            keep_indices(masks))


def compensated_shape(shape, masks):
    """The source shape with rms_norm_eps * d / d' (the pruned model's norms average over d' dims)."""
    scale = hidden_norm_scale(masks, shape.hidden_size)
    return shape if scale == 1.0 else shape.replace(rms_norm_eps=shape.rms_norm_eps * scale ** 2)


def compensated_state_dict(internal_sd: Mapping[str, torch.Tensor], shape, masks) -> dict:
    """The internal state dict with every RMSNorm weight times sqrt(d / d') (a copy; no-op without hidden pruning)."""
    sd = dict(internal_sd)
    scale = hidden_norm_scale(masks, shape.hidden_size)
    if scale != 1.0:
        for k in list(sd):
            if k.endswith("layernorm.weight") or k == "norm.weight":
                sd[k] = sd[k].detach().float() * scale
    return sd


def export_pruned(internal_sd: Mapping[str, torch.Tensor], shape, family, masks: Mapping[str, torch.Tensor], out_dir,
                  tokenizer_src=None, dtype: str = "float32", compensate_norms: bool = True, **kw):
    """Write the pruned dense HF folder through ``megadrp.export.export_from_model``; returns its path."""
    from megadrp.export import export_from_model

    sd = compensated_state_dict(internal_sd, shape, masks) if compensate_norms else dict(internal_sd)
    card = {"mode": "dress", **(kw.pop("card_info", None) or {}), "selected_units": True}  # sliced by a selection
    shape = compensated_shape(shape, masks) if compensate_norms else shape
    return export_from_model(sd, keep_indices(masks), shape, family, out_dir, tokenizer_src, dtype=dtype,
                             card_info=card, progress=False, **kw)


def prune_model(model, masks: Mapping[str, torch.Tensor], compensate_norms: bool = True):
    """The same for a plain (non-ZeRO) MaskedCausalLM in memory."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return prune_dense_state_dict(sd, model.shape, model.family, masks, compensate_norms)


def pruned_copy(model, masks: Mapping[str, torch.Tensor], compensate_norms: bool = True):
    """A new, smaller MaskedCausalLM holding the pruned weights (to measure the cut without writing files)."""
    from megadrp.model import MaskedCausalLM

    hf_sd, shape = prune_model(model, masks, compensate_norms)
    small = MaskedCausalLM(shape, model.family, attn_backend=model.attn_backend)
    small.load_state_dict(model.family.hf_to_internal(hf_sd), strict=True)
    return small
