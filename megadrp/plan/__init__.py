"""Memory and time planning of a run before any work: ``megadrp plan`` and the trainer's start-up check."""
from megadrp.plan.estimate import Estimate, RunShape, ZeroSetup, estimate
from megadrp.plan.resolve import KNOWN_SHAPES, run_shape, shape_of

__all__ = ["KNOWN_SHAPES", "Estimate", "RunShape", "ZeroSetup", "estimate", "run_shape", "shape_of"]
