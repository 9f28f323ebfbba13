"""The teacher of the KD term: how it runs. Which model it is (megadrp.trainer.build.TeacherSpec) is resolved and
checked by pre-flight, before any process group exists, from ``distill.teacher`` and the method's spec.

Two kinds (docs/TRAINING.md, Distillation):

* ``self`` -- prune mode with an empty ``distill.teacher``: the student's own engine run with ``masks=None``
  (every mask at 1) under ``torch.no_grad`` on the same micro-batch. No second copy of the weights and one
  extra forward; the teacher is the *current* unmasked weights, which move with the weight LR (the masks pull
  the masked model towards the unmasked one, the unmasked one is not held at the source).
* ``frozen`` -- an explicit folder, cpt, and dress mode with an empty teacher (DReSS never masks the forward,
  so the student's all-ones pass *is* the student and the KL would be identically 0: dress distils from a
  frozen copy of model.path, the source). Built as the student is built (megadrp/trainer/engine.py):
  constructed under ``zero.Init`` so ZeRO-3 shards it, weights streamed in on rank 0, in the run precision,
  ``requires_grad`` off, then ``deepspeed.initialize`` with no optimizer, which under ZeRO-3 gives a
  parameter-offload engine (partitioned weights gathered layer by layer by its hooks, no optimizer state).
  Under ZeRO 0-2 the weights are replicated anyway: the frozen module is used directly.

The teacher is never checkpointed: its path is in the run config, and a resumed run rebuilds it.
"""
from __future__ import annotations

import torch

from megadrp.trainer import engine as engine_mod


class SelfTeacher:
    """The student's engine with every mask at 1, no gradient."""

    def __init__(self, engine):
        self.engine = engine

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.engine(inputs, None)


class FrozenTeacher:
    """A frozen model sharded like the student (ZeRO-3 parameter offload engine, no optimizer)."""

    def __init__(self, spec, inputs, model_cfg, device):
        """``spec``: the frozen model's TeacherSpec; ``inputs``: the run's RunInputs (DeepSpeed JSON, precision)."""
        model = engine_mod.build_model(spec.shape, spec.family, inputs.ds_config, inputs.precision, model_cfg)
        engine_mod.load_source_weights(model, spec.path, spec.family, inputs.ds_config)
        model.requires_grad_(False)
        if engine_mod.zero_stage(inputs.ds_config) == 3:
            model = engine_mod.initialize_frozen(model, inputs.ds_config)
        else:
            model = model.to(device)
        model.eval()  # DeepSpeedEngine.eval returns None, not the module
        self.model = model
        self.path = spec.path

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs, None)
