"""The protocol every training method implements, so the step loop never branches on the method.

A mode supplies the masks of a forward pass, extra loss terms (added to the mean token CE of the same
forward), a post-step hook, its metrics and its checkpoint state (saved under ``"mode_state"``, see
megadrp.run_format). It sees the run through the frozen megadrp.trainer.context.RunContext handed to
:meth:`Mode.setup`, never through the Trainer; what it must know of the loop's state arrives as hook arguments.
The trainer is handed one instance (train.py builds it from the method's spec, megadrp.methods).

Order of the hooks: ``setup(ctx)`` once the engine exists; then either ``load_state_dict`` (a resumed run) or
``calibrate`` (a fresh run, before step 1: whatever a method decides from the model and data before training,
e.g. DReSS's selection, so a resumed run never decides it again); then per step ``zero_grad``, per micro-step
``train_masks`` and ``loss_terms``, after the optimizer step ``after_step``.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from megadrp.trainer.state import StateRegistry


class Mode:
    """Dense training with no extras: the base every mode refines."""

    name = "base"

    def setup(self, ctx) -> None:
        """Called once the engine exists, with the run's RunContext (cfg, inputs, device, group, engine)."""
        self.ctx = ctx
        self.parts = StateRegistry()  # what a subclass registers here is its checkpoint state

    def calibrate(self, domain_weights) -> Optional[dict]:
        """Once, before step 1 of a fresh run (a resumed run restores its result through load_state_dict), with
        the reweighting rule's starting domain weights; returns a metrics record or None."""
        return None

    def train_masks(self, step: int, micro_step: int) -> Optional[Dict[str, torch.Tensor]]:
        return None

    def eval_masks(self) -> Optional[Dict[str, torch.Tensor]]:
        return None

    def loss_terms(self, step: int, micro_step: int) -> Dict[str, torch.Tensor]:
        """Extra scalar losses added to this micro-batch's mean CE (same forward; each logged by name)."""
        return {}

    def zero_grad(self) -> None:
        pass

    def after_step(self, step: int) -> None:
        """After the engine's optimizer step of ``step`` (1-based)."""

    def sparsity(self) -> Optional[float]:
        """Current expected fraction of parameters removed (fed to the reweighting rule), or None; a 0-dim
        tensor is welcome (the trainer reads it back with the step's other numbers, never inside the step)."""
        return None

    def final_sparsity(self) -> Optional[float]:
        return None

    def metrics(self, step: int) -> dict:
        return {}

    def step_line(self, record: dict) -> str:
        return ""

    def state_dict(self) -> dict:
        return self.parts.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.parts.load_state_dict(state)
