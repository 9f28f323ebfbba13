"""DReSS selection, schedule and coupled slices on a tiny random model (fast, no training)."""
import math

import pytest
import torch

from megadrp.config.schema import TargetShape
from megadrp.dress.cut import pruned_copy
from megadrp.dress.regularizer import penalty_coefficient
from megadrp.dress.select import check_selection, keep_indices, select_units, target_counts
from megadrp.dress.units import coupled_slices
from megadrp.export import achieved_shape
from megadrp.model import MaskedCausalLM, get_family

FAM = get_family("llama")
SHAPE = FAM.debug_shape.replace(num_attention_heads=6, num_key_value_heads=3, hidden_size=96)  # GQA, 2 q per group
TARGET = TargetShape(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                     num_hidden_layers=3)


def random_scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = SHAPE
    return {"layer": torch.rand(s.num_hidden_layers, generator=g),
            "head": torch.rand(s.num_hidden_layers, s.num_key_value_heads, generator=g),
            "intermediate": torch.rand(s.num_hidden_layers, s.intermediate_size, generator=g),
            "hidden": torch.rand(s.hidden_size, generator=g)}


def test_selection_keeps_exact_counts_and_the_highest_scores():
    scores = random_scores()
    masks = select_units(scores, SHAPE, TARGET)
    assert check_selection(masks, SHAPE, TARGET) is None
    assert masks["head"].sum(1).tolist() == [2.0] * 4 and masks["intermediate"].sum(1).tolist() == [96.0] * 4
    assert masks["hidden"].sum() == 64 and masks["layer"].sum() == 3
    # per layer: every kept channel outscores every removed one; globally for hidden dims
    for i in range(SHAPE.num_hidden_layers):
        s, z = scores["intermediate"][i], masks["intermediate"][i]
        assert s[z == 1].min() > s[z == 0].max()
    assert scores["hidden"][masks["hidden"] == 1].min() > scores["hidden"][masks["hidden"] == 0].max()
    assert int(scores["layer"].argmin()) == int(torch.nonzero(masks["layer"] == 0))


def test_selection_respects_gqa_and_reaches_the_target_shape():
    masks = select_units(random_scores(1), SHAPE, TARGET)
    shape = achieved_shape(keep_indices(masks), SHAPE)
    assert (shape.num_attention_heads, shape.num_key_value_heads) == (4, 2)
    assert (shape.hidden_size, shape.intermediate_size, shape.num_hidden_layers) == (64, 96, 3)
    # query heads given alone: whole groups are removed, so G' follows
    assert target_counts(SHAPE, TargetShape(num_attention_heads=2)) == {"head": 1}
    with pytest.raises(ValueError, match="whole number of KV groups"):
        target_counts(SHAPE, TargetShape(num_attention_heads=3))
    with pytest.raises(ValueError, match="query heads per KV"):
        target_counts(SHAPE, TargetShape(num_attention_heads=4, num_key_value_heads=1))
    # an unchanged family is not selected at all
    assert set(select_units(random_scores(), SHAPE, TargetShape(intermediate_size=64))) == {"intermediate"}


def test_schedule_is_geometric_from_init_to_final():
    values = [penalty_coefficient(s, 11, 1e-3, 1.0) for s in range(13)]
    assert values[0] == pytest.approx(1e-3) and values[10] == pytest.approx(1.0) and values[12] == 1.0
    ratios = [b / a for a, b in zip(values[:10], values[1:11])]
    assert all(r == pytest.approx(10 ** 0.3) for r in ratios)


def test_zeroing_the_coupled_slices_makes_the_cut_exact():
    """The slices are complete: with them all at zero, the pruned (smaller) model equals the dense one, thanks to
    the RMSNorm correction for the removed hidden dims; without the correction it does not."""
    torch.manual_seed(0)
    model = MaskedCausalLM(SHAPE, FAM).init_weights(generator=torch.Generator().manual_seed(0))
    masks = select_units(random_scores(2), SHAPE, TARGET)
    params = dict(model.named_parameters())
    names = {hf: i for i, hf in FAM.key_map(SHAPE.num_hidden_layers, False).items()}
    with torch.no_grad():
        for s in coupled_slices(masks, SHAPE, names):
            p = params[names[s.param]]
            p.index_fill_(0 if p.dim() == 1 else s.axis, s.index, 0.0)
    ids = torch.randint(0, SHAPE.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = model(ids)
        cut = pruned_copy(model, masks)(ids)
        uncorrected = pruned_copy(model, masks, compensate_norms=False)(ids)
    assert torch.allclose(cut, dense, atol=1e-4, rtol=1e-4)
    assert (uncorrected - dense).abs().max() > 1e-2
    assert math.isclose(float(cut.sum()), float(dense.sum()), rel_tol=1e-3, abs_tol=1e-2)
