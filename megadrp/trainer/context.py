"""What the trainer hands the parts it runs: one frozen :class:`RunContext`, built once the engine exists.

Methods (megadrp.methods' Mode.setup), the distiller and the reference measurer (megadrp.distill) read the run
from here, and only from here: the config, the pre-flight's RunInputs, the device, the data-parallel group, the
engine and the weights' learning-rate schedule. None of them sees the Trainer or its mutable state (the step,
the sampler, the reweighter): what a part must know of that state arrives as an argument of the hook that needs
it, so a part can be built and tested from a context alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megadrp.trainer.build import RunInputs
from megadrp.trainer.dist import DataParallelGroup
from megadrp.trainer.lr_schedule import lr_at


@dataclass(frozen=True)
class RunContext:
    cfg: Any                  # the run's RunConfig
    inputs: RunInputs         # what pre-flight resolved: shapes, datasets, tokenizer, teacher, reference, ...
    device: torch.device
    group: DataParallelGroup  # every collective of a part runs over it
    engine: Any               # the DeepSpeed engine; ``engine.module`` is the MaskedCausalLM

    @property
    def shape(self):
        return self.inputs.shape

    @property
    def family(self):
        return self.inputs.family

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def module(self):
        """The model itself (the engine's module; the engine when it is a plain module)."""
        return getattr(self.engine, "module", self.engine)

    def lr_scale(self, step: int) -> float:
        """The weights' schedule at ``step`` (1-based) as a fraction of optim.lr (warm-up, cosine, floor)."""
        o = self.cfg.optim
        return lr_at(step - 1, o.max_steps, 1.0, o.warmup_steps, o.min_lr_ratio)
