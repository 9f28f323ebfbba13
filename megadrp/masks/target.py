"""Target-shape validation: resolve a config TargetShape against the source ModelShape, or say what to fix.

Rules (each a ConfigError naming the field 'pruning.target.X'):
- every given size is in [1, source size];
- query heads are pruned in whole KV groups: under GQA the target keeps the source's heads-per-group ratio
  (H' = G' * H/G); under MHA (G = H) the target must also be MHA (G' = H'); a missing one of H'/G' follows
  from the other;
- head_dim stays the source's (export writes it explicitly), so hidden_size needs no relation to heads.
"""
from __future__ import annotations

from megadrp.config.schema import ConfigError, TargetShape
from megadrp.model.shape import ModelShape
from megadrp.model.units import (
    TARGET_FIELDS,
    active_families,  # noqa: F401  (re-exported: masks.active_families)
)


def resolve_target(source: ModelShape, target: TargetShape, prefix: str = "pruning.target") -> ModelShape:
    """The full target ModelShape (source with the target's sizes), or ConfigError."""
    for name in TARGET_FIELDS:
        v, s = getattr(target, name), getattr(source, name)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"{prefix}.{name}", v, "must be an integer (or null to keep the source's)")
        if v < 1:
            raise ConfigError(f"{prefix}.{name}", v, f"must be at least 1 (the source has {s}); null keeps {s}")
        if v > s:
            raise ConfigError(f"{prefix}.{name}", v, f"must not exceed the source's {name} ({s}): pruning only shrinks")
    h_src, g_src = source.num_attention_heads, source.num_key_value_heads
    h, g = target.num_attention_heads, target.num_key_value_heads
    if not source.is_gqa:
        if h is not None and g is not None and h != g:
            raise ConfigError(f"{prefix}.num_key_value_heads", g,
                              f"must equal num_attention_heads ({h}): the source is multi-head attention "
                              f"({h_src} heads, {g_src} KV heads) and heads are pruned with their K/V; "
                              "set it to null or to the same value")
        h = h if h is not None else (g if g is not None else h_src)
        g = h
    else:
        r = source.heads_per_group
        if h is not None and h % r != 0:
            raise ConfigError(f"{prefix}.num_attention_heads", h,
                              f"must be a multiple of {r} (a whole number of KV groups): the source has {r} "
                              f"query heads per KV group "
                              f"({h_src}/{g_src}) and whole groups are pruned; e.g. {max(r, h - h % r)}")
        if h is not None and g is not None and h != g * r:
            raise ConfigError(f"{prefix}.num_attention_heads", h,
                              f"must be num_key_value_heads x {r} = {g * r}: pruning keeps the source's "
                              f"{r} query heads per KV group; set one of the two to null to derive it")
        if g is None:
            g = h // r if h is not None else g_src
        h = g * r
    return source.replace(
        hidden_size=target.hidden_size or source.hidden_size, num_attention_heads=h, num_key_value_heads=g,
        intermediate_size=target.intermediate_size or source.intermediate_size,
        num_hidden_layers=target.num_hidden_layers or source.num_hidden_layers,
    )
