"""Target-shape validation against the source: each bad target is a ConfigError naming the field and the fix."""
import pytest

from megadrp.config import ConfigError, TargetShape
from megadrp.masks import active_families, resolve_target
from megadrp.model import ModelShape

GQA = ModelShape(vocab_size=512, hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                 intermediate_size=1536, num_hidden_layers=30)  # SmolLM2-135M's shape
MHA = GQA.replace(num_attention_heads=8, num_key_value_heads=8)


def test_gqa_targets_resolve_whole_groups():
    t = resolve_target(GQA, TargetShape(num_attention_heads=6))
    assert (t.num_attention_heads, t.num_key_value_heads, t.head_dim) == (6, 2, 64)
    t = resolve_target(GQA, TargetShape(num_key_value_heads=1, hidden_size=320, num_hidden_layers=20))
    assert (t.num_attention_heads, t.num_key_value_heads, t.hidden_size, t.num_hidden_layers) == (3, 1, 320, 20)
    assert active_families(GQA, t) == ("layer", "head", "hidden")
    assert resolve_target(GQA, TargetShape()) == GQA


def test_mha_targets_stay_mha():
    t = resolve_target(MHA, TargetShape(num_attention_heads=5))
    assert (t.num_attention_heads, t.num_key_value_heads) == (5, 5)
    t = resolve_target(MHA, TargetShape(num_key_value_heads=4))
    assert (t.num_attention_heads, t.num_key_value_heads) == (4, 4)


@pytest.mark.parametrize("source,target,field,message", [
    (GQA, TargetShape(hidden_size=1024), "hidden_size", "must not exceed the source's hidden_size \\(576\\)"),
    (GQA, TargetShape(intermediate_size=2048), "intermediate_size", "pruning only shrinks"),
    (GQA, TargetShape(num_hidden_layers=31), "num_hidden_layers", "must not exceed"),
    (GQA, TargetShape(num_hidden_layers=0), "num_hidden_layers", "at least 1"),
    (GQA, TargetShape(num_key_value_heads=4), "num_key_value_heads", "must not exceed"),
    (GQA, TargetShape(num_attention_heads=7), "num_attention_heads", "multiple of 3.*whole groups"),
    (GQA, TargetShape(num_attention_heads=6, num_key_value_heads=1), "num_attention_heads",
     "num_key_value_heads x 3 = 3"),
    (MHA, TargetShape(num_attention_heads=6, num_key_value_heads=2), "num_key_value_heads",
     "must equal num_attention_heads \\(6\\).*multi-head"),
    (GQA, TargetShape(hidden_size=2.5), "hidden_size", "must be an integer"),
])
def test_bad_targets_name_the_field(source, target, field, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve_target(source, target)
    assert err.value.field_path == f"pruning.target.{field}"
