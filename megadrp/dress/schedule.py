"""The DReSS penalty coefficient: geometric growth from ``penalty_init`` to ``penalty_final``.

Geometric, because the LM loss must first move the selected units' information elsewhere (small
coefficient, the penalty barely bends the loss surface) and only at the end be overruled (large
coefficient, the slices are pinned near zero); a linear ramp spends most steps near the final value.
"""
from __future__ import annotations


def penalty_coefficient(step: int, total_steps: int, init: float, final: float) -> float:
    """Coefficient at 0-based ``step`` of ``total_steps``: init at step 0, final at the last step and after."""
    if init <= 0 or final <= 0:
        raise ValueError(f"penalty coefficients must be > 0 (init={init}, final={final})")
    if total_steps <= 1 or step >= total_steps - 1:
        return float(final)
    frac = max(step, 0) / (total_steps - 1)
    return float(init * (final / init) ** frac)
