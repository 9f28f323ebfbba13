"""Initial reference losses from the source's model family: each domain's held-out loss fitted over the
family's sizes, L(N) = A N^-alpha + E, and predicted at the size the run ends at.

Sheared-LLaMA estimated its reference losses this way (LLaMA-2 7B, 13B and 70B, then the prediction for the
1.3B / 2.7B targets), and DRPruning starts from such references when the family is known; without them the
trainer measures the starting model's own held-out loss (docs/DRO.md). Config: ``dro.family_params`` (the
family's parameter counts) and ``dro.family_losses`` (per model, one held-out loss per domain, same data and
tokenizer as the run). Three sizes determine the three parameters exactly; more are fitted (Huber on log
residuals, ``fit_scaling_law``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .scaling_fit import fit_scaling_law


def family_reference_losses(params: Sequence[float], losses: Sequence[Sequence[float]], end_params: float,
                            domains: Sequence[str]) -> np.ndarray:
    """Per-domain loss predicted at ``end_params`` from the family's (params, per-domain losses)."""
    n = np.asarray(params, dtype=np.float64)
    table = np.asarray(losses, dtype=np.float64)
    if n.ndim != 1 or n.size < 3 or table.shape != (n.size, len(domains)):
        raise ValueError(f"dro.family_losses must hold one row of {len(domains)} losses (domains {list(domains)}) "
                         f"for each of the >= 3 models in dro.family_params ({n.tolist()}); got shape "
                         f"{table.shape}")
    if not (np.all(n > 0) and np.all(np.isfinite(table)) and np.all(table > 0)):
        raise ValueError("dro.family_params must be positive and dro.family_losses finite and positive")
    out = []
    for i, domain in enumerate(domains):
        law = fit_scaling_law(n, table[:, i], min_points=3)
        if law is None:
            raise ValueError(f"could not fit the family's losses for domain {domain!r}: {table[:, i].tolist()}")
        out.append(float(law.predict(end_params)))
    return np.asarray(out)
