"""Export: fold learned masks into the weights, slice pruned units, and write a dense Hugging Face folder.

Public API:
- ``prune_state_dict`` / ``prune_hf_state_dict``: the pure mask -> dense surgery over state dicts.
- ``load_checkpoint_for_export``: consolidate a ZeRO-3 checkpoint on CPU and read ``megadrp_state.pt``.
- ``export_checkpoint`` / ``export_from_model``: write the folder (and optionally push it to the Hub).
The heavier entry points are imported on first use so that ``import megadrp.export`` stays cheap.
"""
from megadrp.export.surgery import (
    ExportError,
    achieved_shape,
    kept_counts,
    normalize_masks,
    prune_hf_state_dict,
    prune_state_dict,
)

_LAZY = {"export_checkpoint": "megadrp.export.api", "export_from_model": "megadrp.export.api",
         "load_checkpoint_for_export": "megadrp.export.consolidate", "push_folder": "megadrp.export.hub"}

__all__ = ["ExportError", "achieved_shape", "kept_counts", "normalize_masks", "prune_hf_state_dict",
           "prune_state_dict", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'megadrp.export' has no attribute {name!r}")
