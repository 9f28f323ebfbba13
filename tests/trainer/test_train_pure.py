"""The trainer's pure functions: the learning-rate schedule and the MFU arithmetic."""
import math

import pytest


def test_schedule_warmup_then_cosine_to_floor():
    from megadrp.trainer.lr_schedule import lr_at

    lrs = [lr_at(s, 100, 1e-3, warmup_steps=10, min_lr_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warm-up
    assert lr_at(100, 100, 1e-3, 10, 0.1) == pytest.approx(1e-4)  # the floor at the end
    assert lrs[55] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_flops_per_token_counts_matrices_and_attention():
    from megadrp.model import ModelShape
    from megadrp.trainer.mfu import flops_per_token, mfu

    s = ModelShape(vocab_size=100, hidden_size=8, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                   intermediate_size=16, num_hidden_layers=3)
    per_layer = 2 * 8 * 4 * (2 + 1) + 3 * 8 * 16  # q,o (H heads) + k,v (G heads) + gate, up, down
    assert flops_per_token(s, 10) == 6 * (3 * per_layer + 8 * 100) + 12 * 3 * 2 * 4 * 10
    assert mfu(1000.0, 1e9, None) is None
    assert mfu(1000.0, 1e9, 1e13, 2) == pytest.approx(0.05)


def test_state_registry_saves_and_restores_every_registered_part():
    from megadrp.trainer.state import StateRegistry

    class Part:
        def __init__(self, v):
            self.v = v

        def state_dict(self):
            return {"v": self.v}

        def load_state_dict(self, state):
            self.v = state["v"]

    reg = StateRegistry()
    a, b = reg.register("a", Part(1)), reg.register("b", Part(2), optional=True)
    assert reg.keys() == ["a", "b"] and reg.state_dict() == {"a": {"v": 1}, "b": {"v": 2}}
    reg.load_state_dict({"a": {"v": 5}, "b": {"v": 6}})
    assert (a.v, b.v) == (5, 6)
    reg.load_state_dict({"a": {"v": 7}})  # an optional part missing from an older checkpoint keeps its state
    assert (a.v, b.v) == (7, 6)
    with pytest.raises(KeyError, match=r"no \['a'\]"):
        reg.load_state_dict({"b": {"v": 0}})
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", Part(0))
