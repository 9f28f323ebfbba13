"""Optimizers: the weights' AdamW (handed to DeepSpeed as a client optimizer) and the side optimizer of the
small fp32 state that stays outside the engine (mask log_alphas, Lagrange multipliers).

A torch AdamW as client optimizer avoids JIT-compiling DeepSpeed's fused Adam (about 80 s on CPU) and is on
ZeRO's list of supported optimizers. The multipliers are *maximised*: torch's AdamW honours a per-group
``maximize=True`` (DeepSpeed's own Adam silently ignores it, which is one more reason to keep them here).
"""
from __future__ import annotations

from typing import Iterable, List, Optional

import torch

from megadrp.trainer import dist


def _ndim(p: torch.nn.Parameter) -> int:
    # Under ZeRO-3 a partitioned parameter's .shape is its (empty) local shard; ds_shape is the real one.
    return len(getattr(p, "ds_shape", p.shape))


def weight_param_groups(model: torch.nn.Module, weight_decay: float) -> List[dict]:
    """Matrices and embeddings decay; norms and biases do not (the usual LLaMA recipe)."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied embeddings appear twice
            continue
        seen.add(id(p))
        (decay if _ndim(p) >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "weights"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "norms_biases"})
    return groups


def _offloads_optimizer(ds_config: Optional[dict]) -> bool:
    zero = (ds_config or {}).get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)


def make_weight_optimizer(model: torch.nn.Module, optim_cfg, ds_config: Optional[dict] = None):
    if _offloads_optimizer(ds_config):
        # With the optimizer offloaded, DeepSpeed refuses a torch optimizer (slow on CPU) and wants its own
        # SIMD CPU Adam; it is JIT-compiled once (about 45 s, cached in TORCH_EXTENSIONS_DIR).
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(weight_param_groups(model, optim_cfg.weight_decay), lr=optim_cfg.lr,
                                betas=(optim_cfg.beta1, optim_cfg.beta2), eps=1e-8, adamw_mode=True)
    # ZeRO hands the optimizer flat fp32 partitions, one tensor per group: nothing for foreach to batch; on
    # CUDA the fused kernel does the whole update in one launch.
    return torch.optim.AdamW(weight_param_groups(model, optim_cfg.weight_decay), lr=optim_cfg.lr,
                             betas=(optim_cfg.beta1, optim_cfg.beta2), eps=1e-8, foreach=False,
                             fused=torch.cuda.is_available())


class SideOptimizer:
    """AdamW over the masks (descend) and the Lagrange multipliers (ascend), gradients averaged over ``group``.

    betas (0.9, 0.95) and weight decay 0 as in the reference method. ``set_lr_scale(f)`` sets every group's
    LR to f x its base LR: the trainer passes the weights' warm-up + cosine factor (lr_at / peak), as the
    reference's scheduler spans every group, or 1.0 with ``pruning.side_lr_schedule: constant``.
    """

    def __init__(self, log_alphas: Iterable[torch.nn.Parameter], multipliers: Iterable[torch.nn.Parameter],
                 lr_log_alpha: float, lr_lambda: float, group: Optional[dist.DataParallelGroup] = None):
        self.log_alphas, self.multipliers = list(log_alphas), list(multipliers)
        self.group = group or dist.DataParallelGroup()
        groups = []
        if self.log_alphas:
            groups.append({"params": self.log_alphas, "lr": lr_log_alpha, "maximize": False, "name": "log_alpha"})
        if self.multipliers:
            groups.append({"params": self.multipliers, "lr": lr_lambda, "maximize": True, "name": "lambda"})
        self.optimizer: Optional[torch.optim.AdamW] = (
            # foreach=None: torch's multi-tensor kernels when every parameter is on a GPU (a handful of launches
            # for all the masks and multipliers instead of ~15 per tensor), the single-tensor loop on CPU (the
            # same arithmetic as before there)
            torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.0, foreach=None) if groups else None)
        self._base_lrs = [g["lr"] for g in groups]  # kept here: a loaded state_dict overwrites the groups' lr

    def set_lr_scale(self, factor: float) -> None:
        if self.optimizer is None:
            return
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            group["lr"] = base * factor

    @property
    def params(self) -> list:
        return self.log_alphas + self.multipliers

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        if self.optimizer is None:
            return
        self.group.all_reduce_grads_mean(self.params)
        self.optimizer.step()
        self.zero_grad()

    def state_dict(self) -> dict:
        return {} if self.optimizer is None else self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.optimizer is not None and state:
            self.optimizer.load_state_dict(state)
