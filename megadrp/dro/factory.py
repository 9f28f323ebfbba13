"""Builds the configured reweighting rule from ``DroConfig``: the one constructor the trainer calls."""
from __future__ import annotations

from typing import Optional, Sequence

from ..config.schema import DroConfig
from .base import ConstantReweighter, DomainReweighter, initial_ratio
from .drpruning import DRPruningReweighter
from .family_reference import family_reference_losses
from .sheared import ShearedReweighter


def make_reweighter(cfg: DroConfig, domains: Sequence[str], token_counts: Sequence[float], total_steps: int,
                    reference_losses: Optional[Sequence[float]] = None, target_sparsity: Optional[float] = None,
                    group=None, model_params: Optional[float] = None) -> DomainReweighter:
    """The rule named by ``cfg.method`` over ``domains`` (order of every per-domain vector).

    token_counts: training tokens per domain (for the natural / temperature ratio). reference_losses:
    per-domain references; None falls back to ``cfg.reference_losses``, and an empty list to each domain's
    first observed loss (the source model's own). target_sparsity: final fraction of the model removed, in
    pruning (its kept fraction enters the scaling law); None in continued pretraining (no sparsity term).
    group: the data-parallel group the state is broadcast over (None: default group if initialised).
    model_params: the trained model's parameter count; with ``cfg.family_params`` and no references, the
    references are the family's losses predicted at model_params x (1 - target_sparsity).
    """
    if len(token_counts) != len(domains):
        raise ValueError(f"{len(token_counts)} token counts for {len(domains)} domains")
    refs = reference_losses if reference_losses is not None else (list(cfg.reference_losses) or None)
    if refs is None and cfg.family_params:
        if model_params is None:
            raise ValueError("dro.family_params is set but the model's parameter count was not passed")
        end_params = float(model_params) * (1.0 - (target_sparsity or 0.0))
        refs = list(family_reference_losses(cfg.family_params, cfg.family_losses, end_params, domains))
    if refs is not None and len(refs) != len(domains):
        raise ValueError(f"dro.reference_losses has {len(refs)} values for {len(domains)} domains {list(domains)}")
    ratio = initial_ratio(cfg.initial_ratio, token_counts, cfg.temperature)
    if cfg.method == "constant":
        return ConstantReweighter(domains, ratio, cfg.update_interval, total_steps, group=group)
    if cfg.method == "sheared":
        return ShearedReweighter(domains, ratio, cfg.update_interval, total_steps, refs,
                                 smoothing=cfg.sheared_smoothing, group=group)
    if cfg.method == "drpruning":
        return DRPruningReweighter(domains, ratio, cfg.update_interval, total_steps, refs, rho=cfg.rho,
                                   min_ratio=cfg.min_ratio, ema=cfg.ema,
                                   dynamic_reference_loss=cfg.dynamic_reference_loss,
                                   dynamic_ratio=cfg.dynamic_ratio, target_sparsity=target_sparsity,
                                   fit_in_background=cfg.fit_in_background, group=group,
                                   heldout_signal=cfg.signal == "heldout")
    raise ValueError(f"dro.method = {cfg.method!r}: expected constant, sheared or drpruning")
