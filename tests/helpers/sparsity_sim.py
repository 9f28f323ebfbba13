"""A model-free simulation of pruning's mask dynamics: MaskSet + Lagrangian + SideOptimizer + controller, with a
stand-in for the LM loss's gradient on the masks.

The stand-in loss is sum_u (importance_u + noise_u) * (1 - z_u) over every unit's hard-concrete training sample
z_u: dropping a unit costs its importance, and the gradient reaches log_alpha through the sample exactly as the
real LM loss's does (zero while a gate is saturated at 1: the dead zone). Importances are log-normal per unit
with a per-family scale (a layer costs more than an FFN channel); the noise, fresh every step, has the same
scale, so a unit's gradient is about as noisy as a micro-batch's. ``lm_scale`` multiplies both, to check that a
controller does not depend on how strongly the LM loss pulls.

    hist = simulate(smollm2_shape(), demo_target(), steps=40, warmup_fraction=0.25, controller="tracking")
"""
from __future__ import annotations

import math

import torch

from megadrp.masks import Lagrangian, MaskSet
from megadrp.masks.controller import make_controller
from megadrp.model.shape import ModelShape
from megadrp.trainer.lr_schedule import lr_at
from megadrp.trainer.optim import SideOptimizer

# Loss cost of dropping one unit, order of magnitude, per family.
FAMILY_SCALE = {"layer": 3e-2, "head": 1e-2, "intermediate": 3e-5, "hidden": 1e-3}


def smollm2_shape() -> ModelShape:
    return ModelShape(vocab_size=49152, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                      head_dim=64, intermediate_size=1536, num_hidden_layers=30, tie_word_embeddings=True)


def demo_target() -> ModelShape:
    """configs/demo_smollm2.yaml's target."""
    return smollm2_shape().replace(hidden_size=384, num_attention_heads=6, num_key_value_heads=2,
                                   intermediate_size=1024, num_hidden_layers=24)


def simulate(source: ModelShape, target: ModelShape, steps: int, warmup_fraction: float = 0.2,
             controller: str = "tracking", lm_scale: float = 1.0, side_lr_schedule: str = "weights",
             warmup_steps: int = 0, seed: int = 0) -> dict:
    """Run ``steps`` side-optimizer steps; returns per-step expected/target sparsity, importances, masks."""
    torch.manual_seed(seed)
    masks = MaskSet(source, target, seed=seed)
    lagrangian = Lagrangian(masks.families)
    ctrl = make_controller(controller, masks, lagrangian)
    side = SideOptimizer(masks.parameters(), lagrangian.parameters(), lr_log_alpha=1.0, lr_lambda=1.0)
    gen = torch.Generator().manual_seed(seed + 1)
    importance = {f: FAMILY_SCALE[f] * lm_scale * torch.exp(torch.randn(la.shape, generator=gen))
                  for f, la in masks.log_alpha.items()}
    expected, targets = [], []
    for step in range(1, steps + 1):
        if side_lr_schedule == "weights":
            side.set_lr_scale(lr_at(step - 1, steps, 1.0, warmup_steps, 0.1))
        side.zero_grad()
        target = masks.target_sparsity(step - 1, steps, warmup_fraction)
        z = masks.sample(seed, step)
        lm = sum(((importance[f] * (1 + torch.randn(z[f].shape, generator=gen))) * (1 - z[f])).sum() for f in z)
        loss = lm + lagrangian(masks.expected_sparsity(), target)
        loss.backward()
        ctrl.before_step()
        side.step()
        ctrl.after_step(target)
        with torch.no_grad():
            expected.append({f: float(v.mean()) for f, v in masks.expected_sparsity().items()})
        targets.append(target)
    return {"expected": expected, "target": targets, "final": masks.final_sparsity, "masks": masks,
            "importance": importance}


def worst(hist: dict) -> dict:
    """Per family: |end - final target| and the largest excess over the step's target during the run."""
    out = {}
    for f, final in hist["final"].items():
        if f not in hist["expected"][-1]:
            continue
        end_err = abs(hist["expected"][-1][f] - final)
        over = max(e[f] - t[f] for e, t in zip(hist["expected"], hist["target"]))
        out[f] = {"end_error": end_err, "max_over": over, "peak": max(e[f] for e in hist["expected"])}
    return out


def kept_importance_share(hist: dict, family: str = "intermediate") -> float:
    """Share of the importance mass the deterministic mask keeps, relative to keeping the best units (1.0)."""
    imp = hist["importance"][family]
    keep = hist["masks"].deterministic()[family] != 0
    n_keep = int(keep.sum(-1)[0]) if keep.dim() == 2 else int(keep.sum())
    best = imp.topk(n_keep, dim=-1).values.sum()
    return float((imp * keep).sum() / best) if math.isfinite(float(best)) else float("nan")


def main(argv=None) -> None:
    """Print the end error, worst excess and kept-importance share on the demo's shape (docs/ARCHITECTURE.md)."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="40,400,3200")
    ap.add_argument("--controllers", default="reference,tracking")
    ap.add_argument("--schedules", default="weights,constant")
    args = ap.parse_args(argv)
    for controller in args.controllers.split(","):
        for steps in map(int, args.steps.split(",")):
            for schedule in args.schedules.split(","):
                hist = simulate(smollm2_shape(), demo_target(), steps, warmup_fraction=0.25 if steps == 40 else 0.2,
                                controller=controller, side_lr_schedule=schedule)
                cells = " ".join(f"{f} end {w['end_error']:.3f} over {w['max_over']:.3f} peak {w['peak']:.3f}"
                                 for f, w in worst(hist).items())
                print(f"{controller:9s} {steps:5d} {schedule:8s} | {cells} | kept importance ffn "
                      f"{kept_importance_share(hist):.3f} head {kept_importance_share(hist, 'head'):.3f}", flush=True)


if __name__ == "__main__":
    main()
