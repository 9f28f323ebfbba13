"""Hard-concrete masks, the MaskSet over the active families, the Lagrangian, and target-shape validation."""
from megadrp.masks import hard_concrete
from megadrp.masks.lagrangian import Lagrangian, negate_gradients
from megadrp.masks.maskset import FAMILY_ORDER, MaskSet, step_seed
from megadrp.masks.target import active_families, resolve_target

__all__ = ["FAMILY_ORDER", "Lagrangian", "MaskSet", "active_families", "hard_concrete", "negate_gradients",
           "resolve_target", "step_seed"]
