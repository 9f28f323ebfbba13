"""``prune``: learned hard-concrete masks pulled to the target shape by a Lagrangian (DRPruning / Sheared-LLaMA).

Masks are sampled per micro-step (identical on every rank); the masks and multipliers are small fp32 modules
outside the engine, optimised by the SideOptimizer, and checkpointed in the mode's state. Before step 1 of a
fresh run, calibration protects the massive-activation hidden dims (megadrp/masks/outliers.py).
"""
from __future__ import annotations

from typing import Dict

import torch

from megadrp.data.sampler import calibration_batches
from megadrp.masks import Lagrangian, MaskSet
from megadrp.masks.controller import make_controller
from megadrp.masks.outliers import massive_dims, residual_rms
from megadrp.methods.base import Mode
from megadrp.methods.spec import SELF_TEACHER, MethodSpec
from megadrp.trainer.optim import SideOptimizer


class PruneMode(Mode):
    """Masks sampled per micro-step (identical on every rank), Lagrangian pulling sparsity to the target."""

    name = "prune"

    def setup(self, ctx) -> None:
        super().setup(ctx)
        cfg = ctx.cfg
        # Masks and multipliers are plain fp32 modules on the local device, outside the engine: ZeRO-3
        # would partition them (docs/ARCHITECTURE.md, Masks).
        self.masks = MaskSet(ctx.shape, cfg.pruning.target, init_mean=cfg.pruning.log_alpha_init,
                             temperature=cfg.pruning.temperature, seed=cfg.optim.seed, device=ctx.device)
        self.lagrangian = Lagrangian(self.masks.families).to(ctx.device)
        self.side = SideOptimizer(self.masks.parameters(), self.lagrangian.parameters(),
                                  cfg.pruning.lr_log_alpha, cfg.pruning.lr_lambda, group=ctx.group)
        self.controller = make_controller(cfg.pruning.controller, self.masks, self.lagrangian)
        self.parts.register("masks", self.masks)
        self.parts.register("lagrangian", self.lagrangian)
        self.parts.register("side_optimizer", self.side, optional=True)
        self.parts.register("controller", self.controller, optional=True)
        self.source_params = float(ctx.shape.num_params())
        self.seed, self.max_steps = cfg.optim.seed, cfg.optim.max_steps
        self.warmup_fraction = cfg.pruning.warmup_fraction

    @torch.no_grad()
    def calibrate(self, domain_weights):
        """Protect massive-activation hidden dims (megadrp/masks/outliers.py) found on one training batch."""
        ctx = self.ctx
        ratio = ctx.cfg.pruning.protect_massive_dims
        if "hidden" not in self.masks.families or ratio <= 0:
            return None
        cfg, group = ctx.cfg, ctx.group
        batches, _ = calibration_batches(ctx.inputs.datasets, cfg.data.seq_length, cfg.optim.micro_batch_size, 1,
                                         seed=cfg.optim.seed + 1, weights=domain_weights, rank=group.rank,
                                         world_size=group.size)
        tokens = batches[0][:, :-1].to(ctx.device)
        rms = residual_rms(ctx.module, lambda: ctx.engine(tokens, None), group.all_reduce_sum)
        dims = massive_dims(rms, ratio)
        self.masks.protect_hidden(dims)
        return {"kind": "calibration", "step": 0, "protected_hidden": dims,
                "protected_rms": [round(float(rms[d]), 2) for d in dims], "median_rms": float(rms.median())}

    def train_masks(self, step, micro_step):
        return self.masks.sample(self.seed, step, micro_step)

    @torch.no_grad()
    def eval_masks(self):
        return self.masks.deterministic()

    def _targets(self, step: int) -> Dict[str, float]:
        # step is 1-based; the ramp starts from 0 at the first step.
        return self.masks.target_sparsity(step - 1, self.max_steps, self.warmup_fraction)

    def loss_terms(self, step, micro_step):
        lag = self.lagrangian(self.masks.expected_sparsity(), self._targets(step))
        return {"lagrangian": lag}

    def zero_grad(self):
        self.side.zero_grad()

    def after_step(self, step):
        if self.ctx.cfg.pruning.side_lr_schedule == "weights":  # the reference's scheduler spans every group
            self.side.set_lr_scale(self.ctx.lr_scale(step))
        self.controller.before_step()
        self.side.step()
        self.controller.after_step(self._targets(step))

    @torch.no_grad()
    def sparsity(self):
        # a device tensor: the trainer reads it back with the step's other numbers (no wait in the step)
        return 1.0 - self.masks.expected_num_params() / self.source_params

    def final_sparsity(self):
        return 1.0 - self.masks.target.num_params() / self.source_params

    @torch.no_grad()
    def metrics(self, step):
        return {
            "expected_sparsity": {f: float(v.mean()) for f, v in self.masks.expected_sparsity().items()},
            "target_sparsity": {f: float(v) for f, v in self._targets(step).items()},
            "lambdas": self.lagrangian.values(),
            "expected_params": float(self.masks.expected_num_params()),
        }

    def step_line(self, record):
        sp = " ".join(f"{f}={record['expected_sparsity'][f]:.3f}/{record['target_sparsity'][f]:.3f}"
                      for f in record.get("expected_sparsity", {}))
        params = record.get("expected_params", 0)
        return f"lagr {record.get('lagrangian', 0.0):+.4f} | sparsity {sp} | params {params:.3e}"


SPEC = MethodSpec(
    name="prune", summary="Prune a model with learned masks + domain reweighting (DRPruning).",
    card="targeted structured pruning with learned hard-concrete masks (Sheared-LLaMA), data reweighting: {dro}",
    mode=PruneMode, section="pruning", needs_target=True, masked_forward=True, empty_teacher=SELF_TEACHER)
