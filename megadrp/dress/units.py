"""The coupled parameter slices of the selected units (docs/DRESS.md; the unit table: megadrp.model.units).

A unit is what a mask family gates: a KV group (its q/k/v rows, its o_proj columns), an FFN channel (rows of
gate/up, the column of down), a hidden dim (the column of every input projection, the row of every output
projection, the embedding/LM-head column, the norm weights) or a whole layer (all its projection weights).
Each slice is one (parameter, axis, indices) triple plus, for every index, the unit it belongs to, so the
penalty can form per-unit norms (group lasso) across all the matrices the unit touches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from megadrp.model.families import (
    HF_ATTN_IN,
    HF_EMBED,
    HF_FINAL_NORM,
    HF_LAYER_NORMS,
    HF_LM_HEAD,
    HF_MLP_IN,
    HF_PROJ_BLOCK,
    hf_layer_param,
)


@dataclass
class Slice:
    """``param[index along axis]``; ``unit[k]`` numbers the unit of ``index[k]`` within ``group``."""
    param: str          # HF parameter name
    axis: int           # 0 rows, 1 columns (ignored for 1-D tensors)
    index: torch.Tensor  # int64 [n]
    group: str          # e.g. "head.3", "intermediate.0", "hidden", "layer.7": norms are formed per group
    unit: torch.Tensor  # int64 [n], unit id within the group


def _blocks(units: list, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of consecutive blocks of ``width`` rows for each unit, and each index's unit ordinal."""
    u = torch.as_tensor(units, dtype=torch.long)
    index = (u[:, None] * width + torch.arange(width)).flatten()
    return index, torch.arange(len(units)).repeat_interleave(width)


def coupled_slices(masks: Mapping[str, torch.Tensor], shape, param_names) -> list[Slice]:
    """Every slice that reads or writes a removed unit (mask value 0). ``param_names``: the HF names present
    (decides whether q/k/v biases and a separate LM head exist)."""
    names = set(param_names)
    hd = getattr(shape, "head_dim", None) or shape.hidden_size // shape.num_attention_heads
    rep = shape.num_attention_heads // shape.num_key_value_heads
    slices: list[Slice] = []

    def add(param, axis, index, group, unit):
        if param in names and len(index):
            slices.append(Slice(param, axis, index, group, unit))

    dropped_layers = set()
    if "layer" in masks:
        dropped_layers = set(torch.nonzero(torch.as_tensor(masks["layer"]) == 0).flatten().tolist())
        for i in sorted(dropped_layers):
            for proj in HF_PROJ_BLOCK:  # the whole layer is one unit: every matrix it has
                n = shape.hidden_size if proj in ("o_proj", "down_proj") else _out_dim(shape, proj, hd)
                add(hf_layer_param(i, proj), 0, torch.arange(n), f"layer.{i}", torch.zeros(n, dtype=torch.long))
    for i in range(shape.num_hidden_layers):
        if i in dropped_layers:
            continue  # already wholly penalised; do not count its heads/channels twice
        if "head" in masks:
            groups = torch.nonzero(torch.as_tensor(masks["head"][i]) == 0).flatten().tolist()
            if groups:
                q_idx, q_unit = _blocks(groups, rep * hd)
                kv_idx, kv_unit = _blocks(groups, hd)
                g = f"head.{i}"
                for proj, idx, unit in (("q_proj", q_idx, q_unit), ("k_proj", kv_idx, kv_unit),
                                        ("v_proj", kv_idx, kv_unit)):
                    add(hf_layer_param(i, proj), 0, idx, g, unit)
                    add(hf_layer_param(i, proj, "bias"), 0, idx, g, unit)
                add(hf_layer_param(i, "o_proj"), 1, q_idx, g, q_unit)
        if "intermediate" in masks:
            chans = torch.nonzero(torch.as_tensor(masks["intermediate"][i]) == 0).flatten()
            if len(chans):
                unit, g = torch.arange(len(chans)), f"intermediate.{i}"
                add(hf_layer_param(i, "gate_proj"), 0, chans, g, unit)
                add(hf_layer_param(i, "up_proj"), 0, chans, g, unit)
                add(hf_layer_param(i, "down_proj"), 1, chans, g, unit)
    if "hidden" in masks:
        dims = torch.nonzero(torch.as_tensor(masks["hidden"]) == 0).flatten()
        unit = torch.arange(len(dims))
        if len(dims):
            add(HF_EMBED, 1, dims, "hidden", unit)
            add(HF_LM_HEAD, 1, dims, "hidden", unit)  # absent when tied: the embedding is the head
            add(HF_FINAL_NORM, 0, dims, "hidden", unit)
            for i in range(shape.num_hidden_layers):
                if i in dropped_layers:
                    continue
                for proj in HF_ATTN_IN + HF_MLP_IN:
                    add(hf_layer_param(i, proj), 1, dims, "hidden", unit)
                add(hf_layer_param(i, "o_proj"), 0, dims, "hidden", unit)
                add(hf_layer_param(i, "down_proj"), 0, dims, "hidden", unit)
                for norm in HF_LAYER_NORMS:
                    add(hf_layer_param(i, norm), 0, dims, "hidden", unit)
    return slices


def _out_dim(shape, proj: str, hd: int) -> int:
    if proj == "q_proj":
        return shape.num_attention_heads * hd
    if proj in ("k_proj", "v_proj"):
        return shape.num_key_value_heads * hd
    return shape.intermediate_size  # gate/up


def slice_stats(weight: torch.Tensor, s: Slice, num_units: int, power: int) -> torch.Tensor:
    """Per-unit sum of |w|^power over the slice: fp32 [num_units], differentiable w.r.t. ``weight``."""
    idx = s.index.to(weight.device)
    if weight.dim() == 1:
        part = weight.index_select(0, idx).float()
        per_index = part.abs() if power == 1 else part.pow(2)
    else:
        part = weight.index_select(s.axis, idx).float()
        per_index = (part.abs() if power == 1 else part.pow(2)).sum(dim=1 - s.axis)
    return torch.zeros(num_units, device=weight.device).index_add(0, s.unit.to(weight.device), per_index)
