"""The sparsity controllers on the model-free simulation (tests/helpers/sparsity_sim.py): MaskSet + Lagrangian + side
optimizer under the weights' schedule, with a stand-in LM-loss gradient. ``tracking`` must end every family
within 0.02 of its target and never exceed the step's target by 0.05, in runs of 40 to 3,200 steps, and still
rank units by importance; ``reference`` (Sheared-LLaMA's dynamics) overshoots on the demo's shape."""
import pytest
import torch

from megadrp.masks import MaskSet
from megadrp.masks.controller import shift_to_sparsity
from megadrp.model.shape import ModelShape
from tests.helpers.sparsity_sim import demo_target, kept_importance_share, simulate, smollm2_shape, worst

SMALL = ModelShape(vocab_size=256, hidden_size=128, num_attention_heads=8, num_key_value_heads=4, head_dim=16,
                   intermediate_size=256, num_hidden_layers=8)
SMALL_TARGET = SMALL.replace(hidden_size=96, num_attention_heads=4, num_key_value_heads=2, intermediate_size=160,
                             num_hidden_layers=6)


def _assert_tracks(hist):
    for family, w in worst(hist).items():
        assert w["end_error"] < 0.02, (family, w)
        assert w["max_over"] < 0.05, (family, w)


# The 3,200-step run prunes two families only (layers and FFN channels), to keep the test short.
@pytest.mark.parametrize("steps,lm_scales,target", [
    (40, (0.1, 10.0), SMALL_TARGET), (400, (0.1, 10.0), SMALL_TARGET),
    (3200, (1.0,), SMALL.replace(intermediate_size=160, num_hidden_layers=6))])
def test_tracking_meets_the_target_in_short_and_long_runs(steps, lm_scales, target):
    for lm_scale in lm_scales:  # how strongly the LM loss pulls must not matter
        _assert_tracks(simulate(SMALL, target, steps, warmup_fraction=0.2, lm_scale=lm_scale))


def test_demo_shape_tracking_on_target_and_reference_overshoots():
    """configs/demo_smollm2.yaml: SmolLM2-135M's shape, 40 steps, 25% ramp."""
    tracking = simulate(smollm2_shape(), demo_target(), 40, warmup_fraction=0.25)
    _assert_tracks(tracking)
    # The price still ranks units: the kept FFN channels hold most of the importance the best choice would.
    assert kept_importance_share(tracking, "intermediate") > 0.9
    reference = simulate(smollm2_shape(), demo_target(), 40, warmup_fraction=0.25, controller="reference")
    assert max(w["max_over"] for w in worst(reference).values()) > 0.1  # the overshoot the tracking removes


def test_shift_to_sparsity_rows_and_protected_units():
    masks = MaskSet(SMALL, SMALL_TARGET, seed=0)
    from megadrp.masks import hard_concrete as hc

    la = (torch.randn(8, 256, generator=torch.Generator().manual_seed(0)) * 2).clamp(hc.LOG_ALPHA_MIN,
                                                                                     hc.LOG_ALPHA_MAX)

    shifted = (la + shift_to_sparsity(la, 0.4)).clamp(hc.LOG_ALPHA_MIN, hc.LOG_ALPHA_MAX)
    sparsity = 1 - hc.score(shifted).mean(-1).float()
    assert torch.allclose(sparsity, torch.full((8,), 0.4), atol=1e-6)
    assert shift_to_sparsity(la, 0.4).shape == (8, 1)  # one offset per row: the units keep their order
    protected = torch.zeros(1, 128, dtype=torch.bool)
    protected[0, :10] = True  # protected units count as kept: the others carry the whole target
    hidden = masks.log_alpha["hidden"].detach().reshape(1, -1)
    out = (hidden + shift_to_sparsity(hidden, 0.25, protected=protected)).clamp(hc.LOG_ALPHA_MIN, hc.LOG_ALPHA_MAX)
    score = torch.where(protected, torch.ones_like(out), hc.score(out))
    assert float(1 - score.mean()) == pytest.approx(0.25, abs=1e-6)
    unreachable = shift_to_sparsity(la, 0.99)  # beyond the clamp range: every unit ends at the lower clamp
    assert torch.all((la + unreachable) <= hc.LOG_ALPHA_MIN)


@pytest.mark.parametrize("schedule", ["weights", "constant"])
def test_prune_mode_side_groups_follow_the_weights_schedule(schedule):
    """The reference's scheduler spans every group: masks and multipliers warm up and decay with the weights."""
    from types import SimpleNamespace

    from megadrp.config.loader import from_dict
    from megadrp.config.schema import RunConfig
    from megadrp.methods.prune import PruneMode
    from megadrp.trainer.context import RunContext
    from megadrp.trainer.dist import DataParallelGroup
    from megadrp.trainer.lr_schedule import lr_at

    cfg = from_dict(RunConfig, {"mode": "prune", "pruning": {
        "target": {"hidden_size": 96, "num_key_value_heads": 2, "num_attention_heads": 4, "intermediate_size": 160,
                   "num_hidden_layers": 6}, "lr_log_alpha": 0.5, "lr_lambda": 2.0, "side_lr_schedule": schedule},
        "optim": {"max_steps": 100, "warmup_steps": 10}})
    mode = PruneMode()
    # the mode reads only the source shape of the pre-flight's inputs; no engine: nothing runs a forward here
    mode.setup(RunContext(cfg=cfg, inputs=SimpleNamespace(shape=SMALL), device=torch.device("cpu"),
                          group=DataParallelGroup(), engine=None))
    for step in (1, 2, 3):
        mode.zero_grad()
        sum(mode.loss_terms(step, 0).values()).backward()
        mode.after_step(step)
        factor = lr_at(step - 1, 100, 1.0, 10, cfg.optim.min_lr_ratio) if schedule == "weights" else 1.0
        assert [g["lr"] for g in mode.side.optimizer.param_groups] == pytest.approx([0.5 * factor, 2.0 * factor])
