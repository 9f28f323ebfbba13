"""Training methods as peers, each a :class:`Mode` of the trainer's one step loop, picked by ``cfg.mode``.

- ``prune`` (methods/prune.py): learned hard-concrete masks + Lagrangian (DRPruning, Sheared-LLaMA).
- ``cpt`` (methods/cpt.py): dense continued pretraining.
- ``dress`` (methods/dress.py): DReSS selection, regularisation and the cut at the end.

Domain reweighting is not a method: the trainer runs it under every mode. A new method is a module here
with a Mode subclass, added to :data:`MODES` (or registered with :func:`register_mode` by code outside the
package); the loop needs no edit.
"""
from __future__ import annotations

from megadrp.methods.base import Mode
from megadrp.methods.cpt import CptMode
from megadrp.methods.dress import DressMode
from megadrp.methods.prune import PruneMode

MODES: dict[str, type[Mode]] = {"prune": PruneMode, "cpt": CptMode, "dress": DressMode}


def register_mode(name: str, cls: type[Mode]) -> None:
    MODES[name] = cls


def get_mode(name: str) -> Mode:
    """A fresh instance of the method ``name``."""
    if name not in MODES:
        raise ValueError(f"mode {name!r} is not a megadrp method; known: {', '.join(sorted(MODES))} "
                         f"(a new one is a Mode subclass registered with megadrp.methods.register_mode)")
    return MODES[name]()


__all__ = ["MODES", "CptMode", "DressMode", "Mode", "PruneMode", "get_mode", "register_mode"]
