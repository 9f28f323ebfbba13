"""DReSS: select units up front, regularise them towards zero, prune through export, finetune (docs/DRESS.md).

- ``scoring.score_units``: importance on calibration batches (activation, taylor, magnitude; layers by 1 - cos).
- ``select.select_units``: exact 0/1 keep masks for a target shape (per-layer heads/channels, global dims/layers).
- ``units.coupled_slices`` / ``penalty.SlicePenalty``: the selected units' parameter slices and their ZeRO-3-safe
  penalty (forward hooks); ``regularizer.DressRegularizer`` adds the geometric coefficient schedule.
- ``prune.prune_dense_state_dict``: the cut, through megadrp.export, with the RMSNorm correction for hidden dims.
"""
from megadrp.dress.cut import prune_dense_state_dict, prune_model, pruned_copy
from megadrp.dress.regularizer import DressRegularizer
from megadrp.dress.scoring import CRITERIA, score_units
from megadrp.dress.select import check_selection, keep_indices, select_units, target_counts

__all__ = ["CRITERIA", "DressRegularizer", "check_selection", "keep_indices", "prune_dense_state_dict",
           "prune_model", "pruned_copy", "score_units", "select_units", "target_counts"]
