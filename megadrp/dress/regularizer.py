"""DReSS's regularisation term as one object the trainers call: coefficient schedule + slice penalty + logging.

    reg = DressRegularizer(model, masks, cfg.dress).attach()   # before deepspeed.initialize under ZeRO-3
    loss = lm_loss + reg.loss_term(step)                      # right after the forward pass
    reg.after_step(step)                                      # after the optimizer step (proximal mode)
    reg.metrics(step)                                         # selected-slice norms, coefficient, penalty

Both the DeepSpeed trainer's dress mode (megadrp.methods.dress) and the plain-torch loop
(experiments.dress_loop, tests and CPU experiments) go through this class, so they regularise identically.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from megadrp.dress.penalty import SlicePenalty
from megadrp.dress.units import coupled_slices


def penalty_coefficient(step: int, total_steps: int, init: float, final: float) -> float:
    """Coefficient at 0-based ``step`` of ``total_steps``: init at step 0, final at the last step and after.

    Geometric growth, because the LM loss must first move the selected units' information elsewhere (small
    coefficient, the penalty barely bends the loss surface) and only at the end be overruled (large
    coefficient, the slices are pinned near zero); a linear ramp spends most steps near the final value.
    """
    if init <= 0 or final <= 0:
        raise ValueError(f"penalty coefficients must be > 0 (init={init}, final={final})")
    if total_steps <= 1 or step >= total_steps - 1:
        return float(final)
    frac = max(step, 0) / (total_steps - 1)
    return float(init * (final / init) ** frac)


def hf_to_model_names(model) -> dict[str, str]:
    """HF parameter name -> the MaskedCausalLM's own name (the family's explicit key map, inverted)."""
    shape, fam = model.shape, model.family
    return {hf: internal for internal, hf in fam.key_map(shape.num_hidden_layers, shape.tie_word_embeddings).items()}


APPLY = ("loss", "proximal")


def _scale_slice(w: torch.Tensor, s, factor: float) -> None:
    axis = 0 if w.dim() == 1 else s.axis
    idx = s.index.to(w.device)
    w.index_copy_(axis, idx, w.index_select(axis, idx) * factor)


class DressRegularizer:
    """Penalty on the coupled slices of the units that ``masks`` (0/1 keep masks) remove."""

    def __init__(self, model, masks: Mapping[str, torch.Tensor], penalty: str = "l2", penalty_init: float = 1e-3,
                 penalty_final: float = 1.0, regularize_steps: int = 100, shape=None, names: Optional[dict] = None,
                 apply: str = "loss"):
        if apply not in APPLY:
            raise ValueError(f"dress.apply = {apply!r}; choose one of {APPLY}")
        self.apply = apply
        shape = shape or model.shape
        names = names or hf_to_model_names(model)
        self.slices = coupled_slices(masks, shape, names.keys())
        self.penalty = SlicePenalty(model, self.slices, penalty, to_model_name=names.__getitem__)
        params = dict(model.named_parameters())
        self._targets = [(params[names[s.param]], s) for s in self.slices]
        self.init, self.final, self.steps = penalty_init, penalty_final, regularize_steps
        self._last: dict = {}

    @classmethod
    def from_config(cls, model, masks, dress_cfg, **kw) -> "DressRegularizer":
        return cls(model, masks, dress_cfg.penalty, dress_cfg.penalty_init, dress_cfg.penalty_final,
                   dress_cfg.regularize_steps, apply=dress_cfg.apply, **kw)

    def attach(self) -> "DressRegularizer":
        self.penalty.attach()
        return self

    def detach(self):
        self.penalty.detach()

    def coefficient(self, step: int) -> float:
        return penalty_coefficient(step, self.steps, self.init, self.final)

    def loss_term(self, step: int) -> torch.Tensor:
        """coefficient(step) * penalty of the forward pass just run (differentiable scalar); 0 when proximal."""
        value = self.penalty.total()
        coef = self.coefficient(step)
        self._last = {"dress_coef": coef, "dress_penalty": float(value.detach())}
        return coef * value if self.apply == "loss" else torch.zeros((), device=value.device)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Proximal mode: after the optimizer step, w_S <- (1 - min(coef, 1)) * w_S on every selected slice.

        The proximal map of a squared-L2 penalty is a multiplicative shrink; doing it outside the optimizer keeps
        Adam from normalising the pull away (through Adam a slice only moves ~lr per step whatever the
        coefficient). A final coefficient of 1 leaves the slices exactly zero. Under ZeRO (any stage) the edit goes
        to the fp32 master copy (deepspeed.utils.safe_set_full_fp32_param), or the next step would overwrite it.
        """
        if self.apply != "proximal":
            return
        keep = 1.0 - min(self.coefficient(step), 1.0)
        for p, s in self._targets:
            # ZeRO-3 partitions (ds_id); ZeRO-1/2 link a master fragment (_hp_mapping, on every rank: a collective)
            if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
                from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

                full = safe_get_full_fp32_param(p)
                _scale_slice(full, s, keep)
                safe_set_full_fp32_param(p, full)
            else:
                _scale_slice(p.data, s, keep)

    def metrics(self) -> dict:
        """Coefficient, penalty and the L2 norm of the selected slices (per family and all) of the last step."""
        out = dict(self._last)
        out.update({f"dress_norm_{k}": v for k, v in self.penalty.norms().items()})
        return out
