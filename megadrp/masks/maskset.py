"""MaskSet: the learnable hard-concrete masks of one pruning run (fp32 log_alpha per active family).

Active families are derived from source vs target shape (never configured by hand). Sampling draws u from a
CPU generator seeded by (seed, step, micro_step) and only then moves it to log_alpha's device, so every
data-parallel rank draws bit-identical masks with no communication. The masks live outside the model and
outside DeepSpeed: the trainer optimises log_alpha with its own optimizer and calls clamp_() after each step.
"""
from __future__ import annotations

import hashlib
from typing import Dict, Optional, Union

import torch
import torch.nn as nn

from megadrp.config.schema import ConfigError, TargetShape
from megadrp.masks import hard_concrete as hc
from megadrp.masks.target import resolve_target
from megadrp.model.shape import ModelShape
from megadrp.model.units import FAMILIES as FAMILY_ORDER
from megadrp.model.units import active_families, mask_shapes, unit_counts


def step_seed(seed: int, step: int, micro_step: int) -> int:
    """A 63-bit generator seed from (seed, step, micro_step); neighbouring steps get unrelated streams."""
    digest = hashlib.blake2b(f"megadrp-masks/{seed}/{step}/{micro_step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class MaskSet(nn.Module):
    def __init__(self, source: ModelShape, target: Union[TargetShape, ModelShape], init_mean: float = 5.0,
                 temperature: float = hc.BETA, seed: int = 0, device: Optional[torch.device] = None):
        super().__init__()
        self.source = source
        self.target = target if isinstance(target, ModelShape) else resolve_target(source, target)
        self.temperature = temperature
        self.families = active_families(source, self.target)
        if not self.families:
            raise ConfigError("pruning.target", target, "equals the source shape: nothing to prune; set a smaller "
                              "hidden_size, num_attention_heads/num_key_value_heads, intermediate_size or "
                              "num_hidden_layers")
        s, t = source, self.target
        self.shapes = mask_shapes(s)
        # Units removed by the deterministic mask: per layer (last dim) for head/intermediate, overall otherwise.
        have, keep = unit_counts(s), unit_counts(t)
        self.num_zeros = {f: have[f] - keep[f] for f in FAMILY_ORDER}
        self.final_sparsity = {f: 1 - keep[f] / have[f] for f in FAMILY_ORDER}
        gen = torch.Generator().manual_seed(seed)
        la = {}
        for f in self.families:
            # Reference init: normal(mean, 0.01) then clamped, so all units start (almost surely) kept.
            x = torch.normal(init_mean, 1e-2, self.shapes[f], generator=gen, dtype=torch.float32)
            la[f] = nn.Parameter(x.clamp(hc.LOG_ALPHA_MIN, hc.LOG_ALPHA_MAX).to(device))
        self.log_alpha = nn.ParameterDict(la)
        if "hidden" in self.families:
            # Hidden dims that are never masked (massive activations: see megadrp/masks/outliers.py). A buffer,
            # so it travels with the masks in every checkpoint and reaches export.
            self.register_buffer("protected_hidden", torch.zeros(s.hidden_size, dtype=torch.bool, device=device))

    def protect_hidden(self, dims) -> None:
        """Never mask these hidden dims: every sample and the deterministic mask keep them at exactly 1."""
        if "hidden" not in self.families:
            return
        keep = torch.zeros_like(self.protected_hidden)
        keep[torch.as_tensor(list(dims), dtype=torch.long)] = True
        if int(keep.sum()) > self.target.hidden_size:
            raise ConfigError("pruning.target.hidden_size", self.target.hidden_size,
                              f"is smaller than the {int(keep.sum())} protected hidden dims (massive activations); "
                              "raise it or lower pruning.protect_massive_dims")
        self.protected_hidden.copy_(keep)

    def _protected(self, family: str) -> Optional[torch.Tensor]:
        # The buffer itself, even when all False: testing .any() here would sync the device every micro-step.
        return getattr(self, "protected_hidden", None) if family == "hidden" else None

    def _keep(self, family: str, values: torch.Tensor) -> torch.Tensor:
        p = self._protected(family)
        return values if p is None else torch.where(p, torch.ones_like(values), values)

    def extra_repr(self) -> str:
        return f"families={self.families}, target={self.target}"

    @torch.no_grad()
    def clamp_(self):
        """Keep log_alpha in [ln 0.01, ln 100]; call after every optimizer step."""
        for p in self.log_alpha.values():
            p.clamp_(hc.LOG_ALPHA_MIN, hc.LOG_ALPHA_MAX)

    def sample(self, seed: int, step: int, micro_step: int = 0) -> Dict[str, torch.Tensor]:
        """Training masks for MaskedCausalLM.forward, identical on every rank for the same arguments.

        Every family in one pass: one uniform draw on the host for all of them (the same numbers as one draw
        per family in FAMILY_ORDER), one copy to the device that does not wait for it (pinned memory), and the
        hard-concrete formula once over the concatenated log_alphas, then split: a few kernels per sample
        instead of a few per family, and no host synchronisation (docs/TRAINING.md, "Speed").
        """
        gen = torch.Generator().manual_seed(step_seed(seed, step, micro_step))
        names = [f for f in FAMILY_ORDER if f in self.log_alpha]
        las = [self.log_alpha[f] for f in names]
        sizes = [la.numel() for la in las]
        u = torch.rand(sum(sizes), generator=gen, dtype=torch.float32) * (1 - 2 * hc.EPS) + hc.EPS
        dev = las[0].device
        if dev.type == "cuda":
            u = u.pin_memory().to(dev, non_blocking=True)
        elif u.device != dev:
            u = u.to(dev)
        flat = las[0].reshape(-1) if len(las) == 1 else torch.cat([la.reshape(-1) for la in las])
        z = hc.sample(flat, u, self.temperature).split(sizes)
        return {f: self._keep(f, zf.view(la.shape)) for f, zf, la in zip(names, z, las)}

    def expected_scores(self) -> Dict[str, torch.Tensor]:
        """P(unit kept) per active family, same shapes as log_alpha, differentiable."""
        # one pass over the concatenated log_alphas (element-wise: the same numbers as family by family)
        names = [f for f in FAMILY_ORDER if f in self.log_alpha]
        las = [self.log_alpha[f] for f in names]
        flat = las[0].reshape(-1) if len(las) == 1 else torch.cat([la.reshape(-1) for la in las])
        scores = hc.score(flat, self.temperature).split([la.numel() for la in las])
        return {f: self._keep(f, sc.view(la.shape)) for f, sc, la in zip(names, scores, las)}

    def deterministic(self) -> Dict[str, torch.Tensor]:
        """Eval/export masks: soft values with exactly the pruned units at 0 (per layer for head/intermediate)."""
        return {f: hc.deterministic(self.log_alpha[f], self.num_zeros[f], self.temperature, self._protected(f))
                for f in FAMILY_ORDER if f in self.log_alpha}

    def expected_sparsity(self) -> Dict[str, torch.Tensor]:
        """1 - mean score: [L] per layer for head/intermediate, [1] for layer/hidden. Differentiable."""
        out = {}
        for f, sc in self.expected_scores().items():
            out[f] = 1 - (sc.mean(-1) if sc.dim() == 2 else sc.mean().reshape(1))
        return out

    def target_sparsity(self, step: int, total_steps: int, warmup_fraction: float = 0.2) -> Dict[str, float]:
        """Linear ramp from 0 to the final per-family sparsity over the first warmup_fraction of the steps."""
        ramp_steps = warmup_fraction * total_steps
        frac = 1.0 if ramp_steps <= 0 else min(1.0, max(0.0, step / ramp_steps))
        return {f: frac * self.final_sparsity[f] for f in self.families}

    def expected_num_params(self, keep: Optional[Dict[str, torch.Tensor]] = None,
                            include_embeddings: bool = True) -> torch.Tensor:
        """Expected parameter count (0-dim float64 tensor, differentiable), the ModelShape.num_params definition:

        per layer  z_layer * (d_e * (2*head_dim*(H/G + 1) * g_e + 3 * m_e + 2) + [qkv bias] (H/G + 2)*head_dim*g_e)
        plus d_e (final norm) plus vocab * d_e (x2 if untied) with embeddings; where d_e = sum of hidden keep
        values, g_e / m_e the per-layer sums of head / intermediate keep values. keep defaults to the expected
        scores; pass 0/1 masks (e.g. deterministic() != 0) to count a concrete shape. Inactive families count 1.
        """
        s = self.source
        k = {f: v.double() for f, v in (self.expected_scores() if keep is None else keep).items()}
        dev = next(iter(self.log_alpha.values())).device
        ones = lambda *shape: torch.ones(*shape, dtype=torch.float64, device=dev)  # noqa: E731
        z_layer = k.get("layer", ones(s.num_hidden_layers))
        g_e = k.get("head", ones(s.num_hidden_layers, s.num_key_value_heads)).sum(-1)
        m_e = k.get("intermediate", ones(s.num_hidden_layers, s.intermediate_size)).sum(-1)
        d_e = k.get("hidden", ones(s.hidden_size)).sum()
        r, hd = s.heads_per_group, s.head_dim
        per_layer = d_e * (2 * hd * (r + 1) * g_e + 3 * m_e + 2)
        if s.attention_bias:
            per_layer = per_layer + (r + 2) * hd * g_e
        n = (z_layer * per_layer).sum() + d_e
        if include_embeddings:
            n = n + s.vocab_size * d_e * (1 if s.tie_word_embeddings else 2)
        return n
