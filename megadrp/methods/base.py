"""The protocol every training method implements, so the step loop never branches on the method.

A mode supplies the masks of a forward pass, extra loss terms (added to the mean token CE of the same
forward), a post-step hook, its metrics and its checkpoint state (saved under ``"mode_state"``, see
megadrp.run_format). The trainer (megadrp.trainer.Trainer) is handed one instance; megadrp.methods'
registry picks it by the config's ``mode``.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch


class Mode:
    """Dense training with no extras: the base every mode refines."""

    name = "base"

    def setup(self, trainer) -> None:
        """Called once the engine exists (trainer.cfg, .shape, .family, .plan, .device, .engine and .group,
        the DataParallelGroup, are set)."""
        self.trainer = trainer

    def calibrate(self, trainer) -> Optional[dict]:
        """Once, before step 1 of a fresh run (a resumed run restores the result); returns a metrics record."""
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
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
