"""DReSS end to end on a tiny model trained for a few seconds on a low-entropy synthetic language.

A random model has nothing to lose, so the model first learns a Markov chain (each token has 4 successors:
loss floor ln 4 = 1.386). Then: the selected slices' norms fall under the schedule; the cut after
regularisation costs far less than the same cut of the unregularised model; the export loads in stock
transformers with the target shape and computes the same logits.
"""
import copy
import json

import pytest
import torch

from experiments.dress_loop import mean_loss, train_steps
from megadrp.config.schema import TargetShape
from megadrp.dress.cut import export_pruned, pruned_copy
from megadrp.dress.regularizer import DressRegularizer
from megadrp.dress.scoring import score_units
from megadrp.dress.select import check_selection, select_units
from megadrp.model import MaskedCausalLM, get_family

FAM = get_family("llama")
SHAPE = FAM.debug_shape  # d 64, 4 query / 2 KV heads, m 128, 4 layers, vocab 512
TARGET = TargetShape(hidden_size=48, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                     num_hidden_layers=3)
SUCC = torch.randint(0, SHAPE.vocab_size, (SHAPE.vocab_size, 4), generator=torch.Generator().manual_seed(0))


def markov_batch(gen, batch=8, length=48):
    x = torch.empty(batch, length + 1, dtype=torch.long)
    x[:, 0] = torch.randint(0, SHAPE.vocab_size, (batch,), generator=gen)
    for t in range(length):
        x[:, t + 1] = SUCC[x[:, t], torch.randint(0, 4, (batch,), generator=gen)]
    return x


def stream(seed):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield markov_batch(gen)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = MaskedCausalLM(SHAPE, FAM).init_weights(generator=torch.Generator().manual_seed(0))
    train_steps(model, stream(1), 200, 3e-3)
    val = [markov_batch(torch.Generator().manual_seed(99 + i)) for i in range(3)]
    assert mean_loss(model, val) < 2.0  # it learned the chain (uniform would be ln 512 = 6.2)
    calib = [markov_batch(torch.Generator().manual_seed(7 + i)) for i in range(2)]
    masks = select_units(score_units(model, calib, "activation"), SHAPE, TARGET)
    return model, masks, val


@pytest.fixture(scope="module")
def regularised(trained):
    model, masks, _ = trained
    reg_model = copy.deepcopy(model)
    reg = DressRegularizer(reg_model, masks, "l2", 1e-3, 1.0, 80).attach()
    history = train_steps(reg_model, stream(2), 80, 3e-3, reg, log_interval=10)
    reg.detach()
    return reg_model, history


def test_selected_norms_fall_under_the_schedule(regularised):
    _, history = regularised
    norms = [r["dress_norm_all"] for r in history]
    coefs = [r["dress_coef"] for r in history]
    assert coefs == sorted(coefs) and coefs[0] == pytest.approx(1e-3) and coefs[-1] == pytest.approx(1.0)
    assert norms[-1] < 0.4 * norms[0], norms
    assert all(b < a * 1.05 for a, b in zip(norms, norms[1:])), norms  # falls all along, never regrows
    for family in ("head", "intermediate", "hidden", "layer"):
        assert history[-1][f"dress_norm_{family}"] < history[0][f"dress_norm_{family}"]
    assert all(r["lm_loss"] < 3.0 for r in history)  # the LM loss stays in the trained regime


def test_cut_after_regularisation_costs_far_less(trained, regularised):
    model, masks, val = trained
    reg_model, _ = regularised
    direct_cost = mean_loss(pruned_copy(model, masks), val) - mean_loss(model, val)
    reg_cost = mean_loss(pruned_copy(reg_model, masks), val) - mean_loss(reg_model, val)
    assert direct_cost > 0.05  # the cut does hurt the unregularised model
    assert reg_cost / direct_cost < 0.3, (reg_cost, direct_cost)


def test_penalty_from_hooks_matches_the_state_dict(trained):
    """The hooked (ZeRO-3-style) penalty equals the one computed from whole weights, once per forward even
    with activation checkpointing (whose recomputation reruns the hooks)."""
    model, masks, val = trained
    m = copy.deepcopy(model)
    m.activation_checkpointing = True
    reg = DressRegularizer(m, masks, "l2").attach()
    m(val[0][:, :-1]).float().sum().backward()
    hf = FAM.internal_to_hf(m.state_dict(), tie_word_embeddings=False)
    expected = reg.penalty.norms_of(hf)
    assert reg.penalty.norms()["all"] == pytest.approx(expected["all"], rel=1e-5)
    assert float(reg.penalty.total().detach()) == pytest.approx(expected["all"] ** 2, rel=1e-5)
    reg.detach()


def test_export_loads_in_transformers_with_the_target_shape(trained, regularised, tmp_path):
    from transformers import AutoModelForCausalLM

    _, masks, val = trained
    reg_model, _ = regularised
    assert check_selection(masks, SHAPE, TARGET) is None
    out = export_pruned(reg_model.state_dict(), SHAPE, FAM, masks, tmp_path / "dress_export")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    cfg = hf.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size,
            cfg.num_hidden_layers) == (48, 2, 1, 64, 3)
    assert json.loads((out / "megadrp_export.json").read_text())["achieved_shape"]["hidden_size"] == 48
    ids = val[0][:2, :-1]
    with torch.no_grad():
        ours = pruned_copy(reg_model, masks)(ids)
        theirs = hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_scores_find_dead_units(trained):
    """A KV group and an FFN channel whose writes are zero contribute nothing: both criteria score them 0
    and they are selected first; a layer made an identity scores 0 on 1 - cos and is dropped."""
    model, _, val = trained
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.layers[1].self_attn.o_weight[:, :32] = 0  # KV group 0 of layer 1 (2 query heads x 16)
        m.layers[2].mlp.down_weight[:, 5] = 0
        m.layers[3].self_attn.o_weight.zero_()
        m.layers[3].mlp.down_weight.zero_()
    for criterion in ("activation", "taylor"):
        scores = score_units(m, val[:1], criterion)
        assert scores["head"][1, 0] == 0 and scores["intermediate"][2, 5] == 0
        assert scores["head"][1, 1] > 0 and scores["intermediate"][2].sum() > 0
        assert scores["layer"][3] == pytest.approx(0.0, abs=1e-6) and scores["layer"][:3].min() > 1e-3
        masks = select_units(scores, SHAPE, TARGET)
        assert masks["head"][1, 0] == 0 and masks["intermediate"][2, 5] == 0 and masks["layer"][3] == 0
