"""Sparsity controllers: how each mask family's expected sparsity is made to follow its target ramp.

``reference``: Sheared-LLaMA's dynamics, kept for fidelity runs. The Lagrangian's multipliers go up the gradient
under AdamW (lr 1.0) and the masks follow the Lagrangian's gradient plus the LM loss's. Adam's step does not
shrink with the error, so while the masks sit in the hard-concrete dead zone (log_alpha at its ln 100 clamp,
score gradient ~0.002) lambda1 winds up by about 1 per step; once the masks move, the wound-up multiplier and
both optimizers' momentum carry the sparsity far past the target and back (a limit cycle). Long runs damp it
before the end; a 40-step run with a 10-step ramp ends far off target (docs/ARCHITECTURE.md, "Sparsity
controller", has the measurement).

``tracking`` (the default) separates *how many* units go from *which*:
- how many: after every side-optimizer step each family's log_alpha is shifted by one common offset per row
  (per layer for head and intermediate, the whole family for layer and hidden) so that its expected sparsity
  equals the step's target exactly: a projection onto the level set {expected sparsity = target}, taken
  along the row's all-ones direction (not the Euclidean one) because that direction keeps the units' order.
  Nothing can wind up or overshoot, whatever the run's length.
- which: the Lagrangian's lambda1 stays the *price* of a kept unit, as in the reference: under AdamW a unit
  rises when its LM-loss gradient beats the price's push and sinks otherwise, and that competition is what
  ranks the units (a projection alone, with no price, kept a random subset: AdamW moves every unit by about
  its learning rate whatever its gradient's size). But lambda1 ascends on the *drift*, the distance from the
  target the masks' own step took them before the projection (fed as its gradient at the next step), not on
  the post-projection error, which is ~0 after the ramp and one ramp increment during it. At a steady price
  the drift is zero: the price settles where the LM pull and the push balance. lambda2 (a proportional term
  on an error the projection removes) is held at 0.
A target the clamp range cannot reach (above ~0.95 per row) is approached as closely as the clamp allows.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from megadrp.masks import hard_concrete as hc

CONTROLLERS = ("reference", "tracking")
_MAX_ITERATIONS = 60  # Newton usually needs 3-5; bisection alone would reach 1e-7 in ~28


def _row_scores(log_alpha: torch.Tensor, shift: torch.Tensor, beta: float, protected: Optional[torch.Tensor]):
    """Mean score of each row after shifting row r by shift[r] and clamping, and its derivative in the shift."""
    la = log_alpha + shift
    free = (la > hc.LOG_ALPHA_MIN) & (la < hc.LOG_ALPHA_MAX)
    drop = torch.sigmoid(beta * math.log(-hc.GAMMA / hc.ZETA) - la.clamp(hc.LOG_ALPHA_MIN, hc.LOG_ALPHA_MAX))
    score, slope = 1.0 - drop, torch.where(free, drop * (1.0 - drop), torch.zeros_like(drop))
    if protected is not None:
        score = torch.where(protected, torch.ones_like(score), score)
        slope = torch.where(protected, torch.zeros_like(slope), slope)
    return score.mean(-1, keepdim=True), slope.mean(-1, keepdim=True)


def _clamp_score(log_alpha: float, beta: float) -> float:
    return float(hc.score(torch.tensor(log_alpha, dtype=torch.float64), beta))


@torch.no_grad()
def shift_to_sparsity(log_alpha: torch.Tensor, target: float, beta: float = hc.BETA,
                      protected: Optional[torch.Tensor] = None, tol: float = 1e-7) -> torch.Tensor:
    """The per-row offsets (shape [..., 1]) that bring each row's expected sparsity to ``target``.

    The mean score rises monotonically with the offset, so a safeguarded Newton iteration finds it: Newton's
    step where it stays inside the bracket that holds the root, else bisection. Rows are solved together;
    a row already on target needs one evaluation. Unreachable targets end at the bracket's edge.
    """
    la = log_alpha.detach().double()
    want = 1.0 - float(target)
    width = hc.LOG_ALPHA_MAX - hc.LOG_ALPHA_MIN
    lo = la.new_full(la.shape[:-1] + (1,), -(width + 1.0))
    hi, x = -lo, torch.zeros_like(lo)
    # Rows whose target lies beyond what the clamp range can give stay at that edge. At either end of the
    # bracket every unit sits at the same clamp value, so those two mean scores need no pass over the row.
    kept = torch.zeros_like(lo) if protected is None else protected.to(la.dtype).mean(-1, keepdim=True)
    above = kept + (1.0 - kept) * _clamp_score(hc.LOG_ALPHA_MAX, beta) <= want
    below = kept + (1.0 - kept) * _clamp_score(hc.LOG_ALPHA_MIN, beta) >= want
    edge = torch.where(above, hi, lo)
    for _ in range(_MAX_ITERATIONS):
        mean, slope = _row_scores(la, x, beta, protected)
        err = torch.where(above | below, torch.zeros_like(mean), mean - want)
        if float(err.abs().max()) < tol:
            break
        lo, hi = torch.where(err < 0, x, lo), torch.where(err < 0, hi, x)
        newton = x - err / slope.clamp(min=1e-12)
        inside = (newton > lo) & (newton < hi) & (slope > 1e-9)
        x = torch.where(inside, newton, 0.5 * (lo + hi))
    return torch.where(above | below, edge, x)


class TrackingController:
    """Projects the masks onto their target after each step; lambda1 ascends on the drift (module docstring)."""

    name = "tracking"

    def __init__(self, masks, lagrangian):
        self.masks, self.lagrangian = masks, lagrangian
        self.drift = {f: 0.0 for f in masks.families}  # pre-projection s - t of the last step

    def before_step(self) -> None:
        """Replace the multipliers' gradients (the post-projection error) with the last step's drift."""
        for f in self.lagrangian.families:
            lam = self.lagrangian.lambda1[f]
            self.lagrangian.lambda1[f].grad = torch.as_tensor(self.drift[f], dtype=lam.dtype,
                                                              device=lam.device).expand_as(lam).clone()
            self.lagrangian.lambda2[f].grad = torch.zeros_like(self.lagrangian.lambda2[f])

    @torch.no_grad()
    def after_step(self, targets: Dict[str, float]) -> None:
        self.masks.clamp_()
        for f, s in self.masks.expected_sparsity().items():
            self.drift[f] = (s - targets[f]).mean()  # stays on the device: read only into a checkpoint
        # The Newton solve reads its error every iteration: on a GPU each read would wait for the device, a few
        # per family and step. So every family's log_alpha (and the protected dims) come to the host in ONE
        # copy, the solve runs there in float64 (the arithmetic it always ran in), and the shifts go back
        # without waiting (pinned memory): one synchronisation per step instead of ~5 per family.
        las = dict(self.masks.log_alpha.items())
        protected = {f: self.masks._protected(f) for f in las}
        parts = [la.detach().reshape(-1).double() for la in las.values()]
        parts += [p.reshape(-1).double() for p in protected.values() if p is not None]
        host = torch.cat(parts).cpu().split([t.numel() for t in parts])
        host_la, host_protected = host[:len(las)], iter(host[len(las):])
        for (f, la), flat in zip(las.items(), host_la):
            rows = la if la.dim() == 2 else la.view(1, -1)
            prot = None if protected[f] is None else next(host_protected).view(1, -1).bool()
            shift = shift_to_sparsity(flat.view(rows.shape), float(targets[f]), self.masks.temperature, prot)
            shift = shift.to(rows.dtype)
            if rows.is_cuda:
                shift = shift.pin_memory().to(rows.device, non_blocking=True)
            rows.add_(shift)  # rows is a view of la: the parameter itself moves
        self.masks.clamp_()
        for f in self.lagrangian.families:
            self.lagrangian.lambda2[f].zero_()

    def state_dict(self) -> dict:
        return {"drift": {f: float(v) for f, v in self.drift.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.drift.update(state.get("drift", {}))


class ReferenceController:
    """The reference's dynamics: nothing beyond the Lagrangian, the side optimizer and the clamp."""

    name = "reference"

    def __init__(self, masks, lagrangian):
        self.masks, self.lagrangian = masks, lagrangian

    def before_step(self) -> None:
        pass

    def after_step(self, targets: Dict[str, float]) -> None:
        self.masks.clamp_()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_controller(name: str, masks, lagrangian):
    """The controller named by ``pruning.controller`` over a MaskSet and its Lagrangian."""
    if name == "tracking":
        return TrackingController(masks, lagrangian)
    if name == "reference":
        return ReferenceController(masks, lagrangian)
    raise ValueError(f"pruning.controller = {name!r}: expected one of {CONTROLLERS}")
