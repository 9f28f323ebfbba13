"""The unit table: the four prunable unit families, in one place.

A *unit* is what one mask entry gates. Every part that handles masks (the masked decoder's ``masks`` dict,
megadrp.masks' MaskSet, the export surgery, DReSS's selection and penalty) reads the families, the
ModelShape field that counts them, the mask shape and whether they are chosen per layer from here.

=============  =====================  ==========  ==========================================================
family         counted by             mask        HF parameters one unit owns (the coupled slices)
=============  =====================  ==========  ==========================================================
layer          num_hidden_layers      [L]         every weight of ``model.layers.{i}``
head           num_key_value_heads    [L, G]      one KV group: its rows of q/k/v_proj (and biases), its
                                                  columns of o_proj; the group's H/G query heads go with it
intermediate   intermediate_size      [L, m]      one FFN channel: a row of gate/up_proj, a column of down
hidden         hidden_size            [d]         one residual dim: a column of embed_tokens, lm_head and
                                                  every input projection, a row of o/down_proj, every norm
=============  =====================  ==========  ==========================================================

``head`` and ``intermediate`` are *per layer*: the same number is kept in every layer, because a dense HF
decoder has one width for all layers. ``layer`` and ``hidden`` are chosen globally. Heads are pruned in whole
KV groups, so under GQA the target keeps the source's H/G (megadrp.masks.target.resolve_target enforces it);
under MHA (G = H) a group is one head. head_dim never changes.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnitKind:
    name: str        # the key in a masks dict
    field: str       # the ModelShape field that counts the units
    per_layer: bool  # mask [L, n] kept uniformly per layer, else [n] chosen globally


UNITS = (UnitKind("layer", "num_hidden_layers", False), UnitKind("head", "num_key_value_heads", True),
         UnitKind("intermediate", "intermediate_size", True), UnitKind("hidden", "hidden_size", False))
BY_NAME = {u.name: u for u in UNITS}
#: The mask families in their fixed order (the order masks are sampled, saved and logged in).
FAMILIES = tuple(u.name for u in UNITS)
#: The ModelShape fields a pruning target sets: the unit counts, and num_attention_heads (whole KV groups).
TARGET_FIELDS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                 "num_hidden_layers")


def unit_counts(shape) -> dict[str, int]:
    """Units of each family in ``shape`` (per layer for head and intermediate)."""
    return {u.name: int(getattr(shape, u.field)) for u in UNITS}


def mask_shape(shape, family: str) -> tuple:
    """The shape of ``family``'s mask over ``shape``: (L, n) per layer, (n,) global."""
    unit = BY_NAME[family]
    n = int(getattr(shape, unit.field))
    return (int(shape.num_hidden_layers), n) if unit.per_layer else (n,)


def mask_shapes(shape) -> dict[str, tuple]:
    return {f: mask_shape(shape, f) for f in FAMILIES}


def active_families(source, target) -> tuple:
    """Families whose count differs between the source and a (resolved) target shape, in FAMILIES order."""
    src, tgt = unit_counts(source), unit_counts(target)
    return tuple(f for f in FAMILIES if tgt[f] != src[f])
