"""The methods, registered in one place: each is a file here that declares a :class:`MethodSpec` as ``SPEC``.

- ``prune`` (prune.py): learned hard-concrete masks + Lagrangian (DRPruning, Sheared-LLaMA).
- ``cpt`` (cpt.py): dense continued pretraining.
- ``dress`` (dress.py): DReSS selection (in calibration), regularisation and the cut at the end.
- ``oneshot`` (oneshot.py): a Minitron-style one-shot cut, no training (its own command, no Mode).

Distillation (megadrp.distill) and domain reweighting (megadrp.dro) are components every training method
composes: the trainer runs them under any mode. ``cfg.mode`` names a spec here, the subcommands `megadrp NAME`
come from here, and so do the method-specific rules of pre-flight, the memory plan and the model card. A new
method is one file with a Mode subclass and its SPEC, added to :data:`METHODS` below (or registered with
:func:`register` by code outside the package); nothing else names it (docs/ARCHITECTURE.md, "Add a method").
"""
from __future__ import annotations

from megadrp.config import ConfigError
from megadrp.methods import cpt, dress, oneshot, prune
from megadrp.methods.base import Mode
from megadrp.methods.spec import MethodSpec

METHODS: dict[str, MethodSpec] = {s.name: s for s in (prune.SPEC, cpt.SPEC, dress.SPEC, oneshot.SPEC)}


def register(spec: MethodSpec) -> None:
    """Add a method from outside the package (its name becomes a valid ``mode`` and a subcommand)."""
    METHODS[spec.name] = spec


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; a ConfigError on ``mode`` naming the registered ones otherwise."""
    if name not in METHODS:
        raise ConfigError("mode", name, f"must be one of {', '.join(METHODS)} (the registered methods, "
                          "megadrp.methods; a new one is registered with megadrp.methods.register)")
    return METHODS[name]


def method_for(cfg) -> MethodSpec:
    """The method a loaded RunConfig runs, after the method's own cross-section checks of ``cfg``."""
    spec = get_method(cfg.mode)
    if spec.check is not None:
        spec.check(cfg)
    return spec


__all__ = ["METHODS", "MethodSpec", "Mode", "get_method", "method_for", "register"]
