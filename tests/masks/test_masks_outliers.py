"""Massive-activation hidden dims: detection on a model's residual stream, and MaskSet's protection of them."""
from pathlib import Path

import pytest
import torch

from megadrp.config import ConfigError, TargetShape
from megadrp.masks import MaskSet
from megadrp.masks.outliers import massive_dims, residual_rms
from megadrp.model import MaskedCausalLM, get_family

SHAPE = get_family("llama").debug_shape  # d 64, 4 layers
TARGET = TargetShape(hidden_size=48, num_key_value_heads=1, intermediate_size=96, num_hidden_layers=3)
SMOLLM2 = Path(__file__).resolve().parents[2] / ".cache" / "models" / "smollm2-135m"


def test_massive_dims_ratio_and_order():
    rms = torch.tensor([1.0, 50.0, 1.2, 0.9, 300.0, 1.1, 19.0], dtype=torch.float64)  # median 1.1
    assert massive_dims(rms, 20.0) == [4, 1]  # 19.0 < 20 x 1.1; largest first
    assert massive_dims(rms, 10.0) == [4, 1, 6]
    assert massive_dims(rms, 0.0) == []


def test_residual_rms_finds_a_planted_massive_dim():
    torch.manual_seed(0)
    model = MaskedCausalLM(SHAPE, get_family("llama")).float().eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    with torch.no_grad():
        model.embed_tokens.weight[:, 5] += 30.0  # every token writes a huge value into dim 5
    ids = torch.randint(0, SHAPE.vocab_size, (2, 16))
    rms = residual_rms(model, lambda: model(ids))
    assert rms.shape == (SHAPE.hidden_size,) and rms.dtype == torch.float64
    assert rms[5] > 100 * rms.median()
    assert massive_dims(rms, 20.0) == [5]
    # the all-reduce sums squares and token counts: two identical ranks give the same RMS
    both = residual_rms(model, lambda: model(ids), all_reduce=lambda t: t * 2)
    torch.testing.assert_close(both, rms)
    assert not model.layers[0]._forward_hooks  # hooks removed


def test_protected_hidden_dims_are_never_masked():
    ms = MaskSet(SHAPE, TARGET, seed=1)
    with torch.no_grad():
        ms.log_alpha["hidden"].copy_(torch.randn(64, generator=torch.Generator().manual_seed(3)))
        ms.log_alpha["hidden"][[3, 10]] = -4.0  # the two least wanted dims by their log_alpha
    assert ms.deterministic()["hidden"][[3, 10]].eq(0).all()
    ms.protect_hidden([3, 10])
    det = ms.deterministic()["hidden"]
    assert det[3] == 1.0 and det[10] == 1.0
    assert int((det == 0).sum()) == 64 - 48  # still exactly the target width
    for step in range(20):
        z = ms.sample(seed=0, step=step)["hidden"]
        assert z[3] == 1.0 and z[10] == 1.0
    assert ms.expected_scores()["hidden"][[3, 10]].eq(1.0).all()
    # protection travels in the state dict (checkpoints, export)
    other = MaskSet(SHAPE, TARGET, seed=2)
    other.load_state_dict(ms.state_dict())
    assert other.protected_hidden.nonzero().flatten().tolist() == [3, 10]
    torch.testing.assert_close(other.deterministic()["hidden"], det)
    with pytest.raises(ConfigError, match="protected hidden dims"):
        ms.protect_hidden(range(49))
    # a target that keeps the hidden size has no hidden mask and nothing to protect
    MaskSet(SHAPE, TargetShape(intermediate_size=64)).protect_hidden([1])


@pytest.mark.slow
def test_smollm2_massive_dim_is_found():
    if not (SMOLLM2 / "config.json").exists():
        pytest.skip(f"{SMOLLM2} absent: run `make model`")
    from transformers import AutoTokenizer

    from megadrp.model import load_pretrained

    model = load_pretrained(SMOLLM2).eval()
    ids = AutoTokenizer.from_pretrained(SMOLLM2)(["It is a truth universally acknowledged, that a single man in "
                                                   "possession of a good fortune, must be in want of a wife."],
                                                  return_tensors="pt").input_ids
    dims = massive_dims(residual_rms(model, lambda: model(ids)), 20.0)
    assert dims and dims[0] == 507
