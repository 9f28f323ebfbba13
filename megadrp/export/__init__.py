"""Export: fold learned masks into the weights, slice pruned units, and write a dense Hugging Face folder.

Public API (imported lazily so that ``import megadrp.export`` stays cheap):
- ``prune_state_dict`` / ``prune_hf_state_dict``: the pure mask -> dense surgery over state dicts.
- ``load_checkpoint_for_export``: consolidate a ZeRO-3 checkpoint on CPU and read ``megadrp_state.pt``.
- ``export_checkpoint`` / ``export_from_model``: write the folder (and optionally push it to the Hub).
"""
from megadrp.export.prune import ExportError, achieved_shape, kept_counts, normalize_masks, prune_hf_state_dict

__all__ = ["ExportError", "achieved_shape", "kept_counts", "normalize_masks", "prune_hf_state_dict"]
