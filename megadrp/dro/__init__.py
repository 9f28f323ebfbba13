"""Domain reweighting: per-domain loss tracking and the update rules (constant, sheared, drpruning).

See docs/DRO.md. The trainer builds a :class:`DomainLossTracker` and a rule with :func:`make_reweighter`,
then per step: ``tracker.add(...)`` per micro-batch, ``rule.observe(step, *tracker.reduce(), sparsity=...)``
per optimizer step, and ``rule.maybe_update(step)`` to get new sampler weights.
"""
from .base import ConstantReweighter, DomainReweighter, initial_ratio
from .chi2 import chi2_dro_weights
from .drpruning import DRPruningReweighter, run_reference_fit
from .factory import make_reweighter
from .scaling_fit import ScalingLaw, fit_scaling_law, predict_reference
from .sheared import ShearedReweighter
from .tracker import DomainLossTracker, broadcast_vector, broadcast_weights, mean_losses

__all__ = ["ConstantReweighter", "DRPruningReweighter", "DomainLossTracker", "DomainReweighter", "ScalingLaw",
           "ShearedReweighter", "broadcast_vector", "broadcast_weights", "chi2_dro_weights", "fit_scaling_law",
           "initial_ratio", "make_reweighter", "mean_losses", "predict_reference", "run_reference_fit"]
