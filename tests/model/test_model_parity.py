"""MaskedCausalLM against Hugging Face transformers on tiny random checkpoints (fp32, max abs diff <= 1e-5)."""
import json

import pytest
import torch

from megadrp.model import MaskedCausalLM, ModelShape, get_family, load_pretrained, read_hf_state_dict
from tests.helpers.tiny_models import load_hf, make_tiny_hf_model

CASES = [  # family, heads, kv heads, tied
    ("llama", 4, 4, False),
    ("llama", 4, 2, True),
    ("mistral", 4, 2, False),
    ("qwen2", 4, 2, False),
    ("qwen2", 4, 4, True),
]


def _ones(m: MaskedCausalLM):
    s = m.shape
    return {"layer": torch.ones(s.num_hidden_layers), "head": torch.ones(s.num_hidden_layers, s.num_key_value_heads),
            "intermediate": torch.ones(s.num_hidden_layers, s.intermediate_size), "hidden": torch.ones(s.hidden_size)}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.mark.parametrize("family,heads,kv,tied", CASES)
def test_logits_match_hf(tiny_dir, family, heads, kv, tied):
    path = make_tiny_hf_model(tiny_dir, family, heads, kv, tie_word_embeddings=tied, seed=3, with_tokenizer=False)
    ref, model = load_hf(path), load_pretrained(path).eval()
    assert model.family.name == family and model.shape.tie_word_embeddings == tied
    assert model.shape.num_params() == sum(p.numel() for p in ref.parameters())
    ids = torch.randint(0, 512, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(ids).logits
        assert expected.abs().max() > 0.1  # a real signal, not all zeros
        for backend in ("sdpa", "eager"):
            model.attn_backend = backend
            assert (model(ids) - expected).abs().max() <= 1e-5
            assert (model(ids, _ones(model)) - expected).abs().max() <= 1e-5


def test_state_dict_round_trip_and_tied_head(tiny_dir):
    fam = get_family("llama")
    path = make_tiny_hf_model(tiny_dir, "llama", 4, 2, tie_word_embeddings=True, seed=1, with_tokenizer=False)
    hf_sd = read_hf_state_dict(path)
    assert "lm_head.weight" not in hf_sd
    model = load_pretrained(path)
    assert model.lm_head.weight is model.embed_tokens.weight
    back = fam.internal_to_hf(model.state_dict())
    assert set(back) == set(hf_sd)
    assert all(torch.equal(back[k], hf_sd[k]) for k in hf_sd)
    with pytest.raises(KeyError, match="missing"):
        fam.hf_to_internal({k: v for k, v in hf_sd.items() if "mlp.up_proj" not in k})
    with pytest.raises(KeyError, match="unexpected"):
        fam.hf_to_internal({**hf_sd, "model.layers.0.self_attn.o_proj.bias": torch.zeros(64)})


def test_sharded_safetensors_and_bin(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    path = make_tiny_hf_model(tiny_dir, "qwen2", 4, 2, seed=2, with_tokenizer=False)
    ref = load_hf(path)
    ids = torch.randint(0, 512, (1, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids).logits
    sharded = tmp_path / "sharded"
    ref.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").exists()
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((path / "config.json").read_text())
    torch.save(read_hf_state_dict(path), binary / "pytorch_model.bin")
    for folder in (sharded, binary):
        with torch.no_grad():
            assert (load_pretrained(folder)(ids) - expected).abs().max() <= 1e-5
    assert AutoModelForCausalLM  # transformers itself wrote the sharded folder


def test_bad_family_and_shapes(tiny_dir, tmp_path):
    path = make_tiny_hf_model(tiny_dir, "llama", 4, 2, seed=0, with_tokenizer=False)
    cfg = json.loads((path / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="supported families: llama, mistral, qwen2"):
        load_pretrained(bad)
    with pytest.raises(ValueError, match="model_type 'llama'"):
        load_pretrained(path, family="qwen2")
    with pytest.raises(ValueError, match="rope_type 'yarn' is not supported"):
        ModelShape.from_hf_config({**cfg, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}})


def test_llama3_rope_scaling_matches_hf(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    path = make_tiny_hf_model(tmp_path, "llama", 4, 2, seed=4, with_tokenizer=False, rope_parameters=rope)
    model = load_pretrained(path)
    assert model.shape.rope_scaling["rope_type"] == "llama3"
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids) - load_hf(path)(ids).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_config_round_trip_through_transformers(family):
    import transformers

    fam = get_family(family)
    shape = fam.debug_shape.replace(hidden_size=48)  # head_dim stays 16 though 48 / 4 heads = 12
    cfg = getattr(transformers, fam.config_class)(**fam.hf_config_dict(shape))
    assert cfg.model_type == fam.model_type and cfg.head_dim == 16
    again = ModelShape.from_hf_config(cfg)
    assert again.replace(extra={}) == shape.replace(extra={})
    hf = getattr(transformers, fam.architecture)(cfg)
    assert sum(p.numel() for p in hf.parameters()) == shape.num_params()


def test_activation_checkpointing_same_grads():
    shape = get_family("llama").debug_shape
    torch.manual_seed(0)
    a = MaskedCausalLM(shape, "llama").init_weights(0.05, torch.Generator().manual_seed(0))
    b = MaskedCausalLM(shape, "llama", activation_checkpointing=True)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 512, (2, 9))
    masks = {"hidden": torch.rand(64, requires_grad=True)}
    grads = []
    for m in (a, b):
        loss = m(ids, masks).logsumexp(-1).mean()
        grads.append(torch.autograd.grad(loss, [masks["hidden"], m.layers[1].mlp.up_weight]))
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-6)
