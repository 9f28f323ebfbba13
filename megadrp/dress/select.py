"""Up-front selection of the units DReSS removes: importance scores -> exact 0/1 keep masks.

Counts follow the target shape exactly: the same number of KV groups and FFN channels is removed in every
layer (a dense HF model needs uniform widths), hidden dims and layers are chosen globally. Under GQA a
head unit is a whole KV group (its K/V heads and its query heads), so the query-head count shrinks by the
same factor and H'/G' stays H/G. The masks use megadrp.masks' dict format (``layer`` [L], ``head`` [L, G],
``intermediate`` [L, m], ``hidden`` [d]); only families the target shrinks are present.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from megadrp.masks.target import resolve_target
from megadrp.model.units import unit_counts


def target_counts(source, target) -> dict[str, int]:
    """Units kept per family (per layer for head/intermediate) for a target shape; only shrinking families.

    ``source`` is a ModelShape, ``target`` a TargetShape (None = keep the source's). The target is resolved
    by megadrp.masks' rules (whole KV groups, the source's query heads per group, sizes within the source),
    so DReSS and the learned masks accept exactly the same targets; a bad one raises ConfigError (a ValueError).
    """
    have, keep = unit_counts(source), unit_counts(resolve_target(source, target))
    return {name: n for name, n in keep.items() if n < have[name]}


def _keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """0/1 mask over the last dim keeping the ``keep`` highest scores (ties broken by lower index)."""
    scores = scores.double()
    # stable: argsort descending with index tie-break so the selection is deterministic across ranks
    order = torch.sort(-scores, dim=-1, stable=True).indices[..., :keep]
    return torch.zeros_like(scores, dtype=torch.float32).scatter_(-1, order, 1.0)


def select_units(scores: Mapping[str, torch.Tensor], source, target) -> dict[str, torch.Tensor]:
    """0/1 keep masks (fp32) for the shrinking families; higher score = more important = kept.

    ``scores``: ``layer`` [L], ``head`` [L, G], ``intermediate`` [L, m], ``hidden`` [d] (the families the target
    shrinks must be present). Per-layer families keep the top-k of each layer, global ones the top-k overall.
    """
    counts = target_counts(source, target)
    masks = {}
    for name, keep in counts.items():
        if name not in scores:
            raise ValueError(f"target shrinks '{name}' but no '{name}' scores were computed")
        s = torch.as_tensor(scores[name]).detach().cpu()
        if not torch.isfinite(s).all():
            raise ValueError(f"'{name}' scores hold NaN/inf; check the calibration batches")
        masks[name] = _keep_top(s, keep)
    return masks


def removed_indices(masks: Mapping[str, torch.Tensor]) -> dict[str, list]:
    """Removed units per family: a list for layer/hidden, a list of lists (per layer) for head/intermediate."""
    out = {}
    for name, z in masks.items():
        z = torch.as_tensor(z)
        if z.dim() == 1:
            out[name] = torch.nonzero(z == 0).flatten().tolist()
        else:
            out[name] = [torch.nonzero(row == 0).flatten().tolist() for row in z]
    return out


def keep_indices(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Kept units as int64 index tensors ([k] or [L, k]), the form megadrp.export takes for DReSS."""
    out = {}
    for name, z in masks.items():
        z = torch.as_tensor(z)
        if z.dim() == 1:
            out[name] = torch.nonzero(z != 0).flatten()
        else:
            out[name] = torch.stack([torch.nonzero(row != 0).flatten() for row in z])
    return out


def check_selection(masks: Mapping[str, torch.Tensor], source, target) -> Optional[str]:
    """None if the masks match the target counts exactly, else a message naming the mismatch."""
    counts = target_counts(source, target)
    sizes = unit_counts(source)
    if set(masks) != set(counts):
        return f"masks cover {sorted(masks)}, the target shrinks {sorted(counts)}"
    for name, keep in counts.items():
        z = torch.as_tensor(masks[name])
        if not ((z == 0) | (z == 1)).all():
            return f"'{name}' is not a 0/1 mask"
        if z.shape[-1] != sizes[name]:
            return f"'{name}' has {z.shape[-1]} units, the source {sizes[name]}"
        kept = z.sum(-1)
        if not torch.all(kept == keep):
            return f"'{name}' keeps {kept.tolist()}, the target {keep}"
    return None
