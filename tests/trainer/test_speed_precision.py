"""CPU mixed precision (megadrp/trainer/precision.py): what `auto` picks from an injected matmul measurement,
and that bf16 autocast over fp32 weights trains like fp32 (40 steps of a tiny model, the masks on).

The machine's own bf16 speed never decides a test: every choice below is made from an injected ratio.
"""
from __future__ import annotations

import pytest
import torch

from megadrp.trainer.precision import AUTO_MAX_RATIO, resolve


def _never():
    raise AssertionError("the matmul probe must only run for precision 'auto' on CPU")


def test_auto_on_cpu_picks_fp32_when_bf16_measures_slower():
    slow = resolve("auto", "cpu", measure=lambda: 1.7)  # a CPU that emulates bf16
    assert (slow.storage, slow.autocast) == ("fp32", None)
    assert "1.70x" in slow.describe()
    barely = resolve("auto", "cpu", measure=lambda: AUTO_MAX_RATIO + 0.05)  # faster, but not by enough
    assert barely.autocast is None


def test_auto_on_cpu_picks_bf16_autocast_over_fp32_weights_when_faster():
    fast = resolve("auto", "cpu", measure=lambda: 0.24)  # AMX / avx512_bf16
    assert (fast.storage, fast.autocast) == ("fp32", "bf16")
    assert "bf16 autocast over fp32 weights" in fast.describe() and "0.24x" in fast.describe()


def test_explicit_precisions_never_measure():
    assert (resolve("fp32", "cpu", measure=_never).autocast) is None
    assert (resolve("bf16", "cpu", measure=_never).storage, resolve("bf16", "cpu", measure=_never).autocast) == \
        ("fp32", "bf16")
    gpu = resolve("auto", "cuda", measure=_never)
    assert (gpu.storage, gpu.autocast) == ("bf16", None)
    assert resolve("fp16", "cuda", measure=_never).storage == "fp16"


def test_deepspeed_json_is_checked_against_the_stored_dtype():
    from megadrp.config import ConfigError, OptimConfig, check_deepspeed_json, resolve_precision

    assert resolve_precision("bf16", "cpu") == "fp32"  # bf16 on CPU is autocast over fp32 weights
    ds = check_deepspeed_json({"bf16": {"enabled": "auto"}}, OptimConfig(), resolve_precision("auto", "cpu"), 1)
    assert ds["bf16"]["enabled"] is False
    with pytest.raises(ConfigError, match="trains in bf16"):
        check_deepspeed_json({"bf16": {"enabled": True}}, OptimConfig(), resolve_precision("bf16", "cpu"), 1)


def _loss_curve(autocast: bool, seed: int, steps: int = 40) -> list:
    """Per-step LM loss of a tiny masked model trained with AdamW on a fixed stream of batches."""
    from megadrp.config import TargetShape
    from megadrp.masks import MaskSet
    from megadrp.model import MaskedCausalLM, ModelShape

    shape = ModelShape(vocab_size=256, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       intermediate_size=128, num_hidden_layers=2)
    model = MaskedCausalLM(shape).init_weights(generator=torch.Generator().manual_seed(seed))
    masks = MaskSet(shape, TargetShape(intermediate_size=96))
    opt = torch.optim.AdamW(list(model.parameters()) + list(masks.parameters()), lr=3e-3)
    data = torch.Generator().manual_seed(1)
    # A learnable stream: each sequence counts up from a random start (next token = this token + 1).
    starts = torch.randint(0, 256, (steps, 4, 1), generator=data)
    batches = (starts + torch.arange(33)) % 256
    precision = resolve("bf16" if autocast else "fp32", "cpu")
    curve = []
    for step in range(steps):
        tokens = batches[step]
        with precision.context("cpu"):
            loss = model(tokens[:, :-1], masks.sample(0, step + 1), targets=tokens[:, 1:]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        curve.append(float(loss.detach()))
    return curve


def test_bf16_autocast_and_fp32_loss_curves_agree_within_noise():
    torch.manual_seed(0)
    fp32, bf16 = _loss_curve(False, seed=0), _loss_curve(True, seed=0)
    other_init = _loss_curve(False, seed=1)  # the noise scale: the same run from another random init
    assert fp32[-1] < 0.5 * fp32[0] and bf16[-1] < 0.5 * bf16[0]  # both learn the stream
    gap = max(abs(a - b) for a, b in zip(fp32, bf16))
    noise = max(abs(a - b) for a, b in zip(fp32, other_init))
    assert gap < 0.5 * noise, (gap, noise)
    assert abs(fp32[-1] - bf16[-1]) < 0.05 * fp32[-1]
