"""``prune``: learned hard-concrete masks pulled to the target shape by a Lagrangian (DRPruning / Sheared-LLaMA).

Masks are sampled per micro-step (identical on every rank); the masks and multipliers are small fp32 modules
outside the engine, optimised by the SideOptimizer, and checkpointed in the mode's state.
"""
from __future__ import annotations

from typing import Dict

import torch

from megadrp.methods.base import Mode
from megadrp.trainer.lr_schedule import lr_at
from megadrp.trainer.optim import SideOptimizer


class PruneMode(Mode):
    """Masks sampled per micro-step (identical on every rank), Lagrangian pulling sparsity to the target."""

    name = "prune"

    def setup(self, trainer) -> None:
        from megadrp.masks import Lagrangian, MaskSet
        from megadrp.masks.controller import make_controller

        super().setup(trainer)
        cfg = trainer.cfg
        # Masks and multipliers are plain fp32 modules on the local device, outside the engine: ZeRO-3
        # would partition them (docs/ARCHITECTURE.md, Masks).
        self.masks = MaskSet(trainer.shape, cfg.pruning.target, init_mean=cfg.pruning.log_alpha_init,
                             temperature=cfg.pruning.temperature, seed=cfg.optim.seed, device=trainer.device)
        self.lagrangian = Lagrangian(self.masks.families).to(trainer.device)
        self.side = SideOptimizer(self.masks.parameters(), self.lagrangian.parameters(),
                                  cfg.pruning.lr_log_alpha, cfg.pruning.lr_lambda, group=trainer.group)
        self.controller = make_controller(cfg.pruning.controller, self.masks, self.lagrangian)
        self.source_params = float(trainer.shape.num_params())
        self.seed, self.max_steps = cfg.optim.seed, cfg.optim.max_steps
        self.warmup_fraction = cfg.pruning.warmup_fraction
        self._last_terms: Dict[str, float] = {}

    @torch.no_grad()
    def calibrate(self, trainer):
        """Protect massive-activation hidden dims (megadrp/masks/outliers.py) found on one training batch."""
        ratio = trainer.cfg.pruning.protect_massive_dims
        if "hidden" not in self.masks.families or ratio <= 0:
            return None
        from megadrp.data import DomainMixtureSampler
        from megadrp.masks.outliers import massive_dims, residual_rms

        cfg, group = trainer.cfg, trainer.group
        probe = DomainMixtureSampler(trainer.plan.datasets, cfg.data.seq_length, cfg.optim.micro_batch_size,
                                     seed=cfg.optim.seed + 1, rank=group.rank, world_size=group.size,
                                     weights=trainer.reweighter.weights)
        tokens = probe.next_batch()["tokens"][:, :-1].to(trainer.device)
        model = getattr(trainer.engine, "module", trainer.engine)
        rms = residual_rms(model, lambda: trainer.engine(tokens, None), group.all_reduce_sum)
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
        o = self.trainer.cfg.optim
        if self.trainer.cfg.pruning.side_lr_schedule == "weights":  # the reference's scheduler spans every group
            self.side.set_lr_scale(lr_at(step - 1, o.max_steps, 1.0, o.warmup_steps, o.min_lr_ratio))
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

    def state_dict(self):
        return {"masks": self.masks.state_dict(), "lagrangian": self.lagrangian.state_dict(),
                "side_optimizer": self.side.state_dict(), "controller": self.controller.state_dict()}

    def load_state_dict(self, state):
        self.masks.load_state_dict(state["masks"])
        self.lagrangian.load_state_dict(state["lagrangian"])
        self.side.load_state_dict(state.get("side_optimizer") or {})
        self.controller.load_state_dict(state.get("controller") or {})
