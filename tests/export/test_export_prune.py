"""Export parity: the exported folder, loaded by stock transformers, computes the masked model's logits.

Random learned masks (random log_alpha through the real deterministic rule, so kept units carry soft
values that export must fold exactly once), all four mask families active, for llama MHA/GQA (tied and
untied), mistral and qwen2 (q/k/v biases).
"""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from megadrp.config.schema import TargetShape
from megadrp.export import ExportError, export_from_model, prune_state_dict
from megadrp.masks.hard_concrete import deterministic
from megadrp.masks.target import resolve_target
from megadrp.model import load_pretrained
from tests.helpers.tiny_models import make_tiny_hf_model

TARGET = {"hidden_size": 48, "num_key_value_heads": None, "num_attention_heads": None, "intermediate_size": 80,
          "num_hidden_layers": 3}


def random_masks(shape, seed: int, target) -> dict:
    """Deterministic masks of random log_alphas pruned down to ``target`` (soft values on kept units)."""
    g = torch.Generator().manual_seed(seed)
    la = lambda *s: torch.randn(*s, generator=g) * 2.0  # noqa: E731
    return {"layer": deterministic(la(shape.num_hidden_layers), shape.num_hidden_layers - target.num_hidden_layers),
            "head": deterministic(la(shape.num_hidden_layers, shape.num_key_value_heads),
                                  shape.num_key_value_heads - target.num_key_value_heads),
            "intermediate": deterministic(la(shape.num_hidden_layers, shape.intermediate_size),
                                          shape.intermediate_size - target.intermediate_size),
            "hidden": deterministic(la(shape.hidden_size), shape.hidden_size - target.hidden_size)}


CASES = [("llama", 4, 4, False), ("llama", 4, 2, True), ("mistral", 4, 2, False), ("qwen2", 6, 3, False)]


@pytest.mark.parametrize("family,heads,kv_heads,tied", CASES, ids=[f"{c[0]}-{c[1]}h{c[2]}kv{'-tied' * c[3]}"
                                                                   for c in CASES])
def test_exported_logits_equal_masked_logits(tmp_path, family, heads, kv_heads, tied):
    src = make_tiny_hf_model(tmp_path, family, num_attention_heads=heads, num_key_value_heads=kv_heads,
                             hidden_size=heads * 16, intermediate_size=128, tie_word_embeddings=tied, seed=3)
    model = load_pretrained(src).eval()
    shape = model.shape
    target = dict(TARGET, hidden_size=shape.hidden_size - 16, num_key_value_heads=kv_heads - 1)
    resolved = resolve_target(shape, TargetShape(**target))
    masks = random_masks(shape, seed=7, target=resolved)
    assert all((m > 0).any() and (m == 0).any() for m in masks.values())  # every family really prunes
    assert all(((m > 0) & (m < 1)).any() for m in masks.values())  # and kept units carry soft values

    out = export_from_model(model.state_dict(), masks, shape, family, tmp_path / "out", tokenizer_src=src,
                            dtype="float32", target=target, source_model_dir=str(src), progress=False)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                                 "qwen2": "Qwen2ForCausalLM"}[family]
    ids = torch.randint(0, shape.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids, masks)
        got = hf(ids).logits
    assert (got - want).abs().max().item() <= (1e-6 if tied else 1e-4)
    assert want.abs().max().item() > 1e-2  # a real signal, not two zero tensors

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["head_dim"] == 16 and cfg["hidden_size"] == resolved.hidden_size
    assert cfg["num_key_value_heads"] == resolved.num_key_value_heads
    assert cfg["num_attention_heads"] == resolved.num_attention_heads
    # A tied source exports tied: the final norm's z_hidden is folded into the shared embedding.
    assert cfg["tie_word_embeddings"] is tied
    assert ("lm_head.weight" in dict(hf.named_parameters())) is not tied
    expected = resolved.replace(tie_word_embeddings=tied).num_params()
    assert sum(p.numel() for p in hf.parameters()) == expected
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    card = (out / "README.md").read_text()
    assert f"base_model: {src.name}" in card and str(tmp_path) not in card  # a folder name, never a local path
    assert f"{expected:,}" in card


@pytest.mark.parametrize("tied", [False, True])
def test_z_hidden_enters_the_logits_once(tmp_path, tied):
    """The reference code folded z_hidden into the LM head a second time. Untied: the head is only sliced and
    the final norm carries z_hidden; tied: the shared embedding carries it and the final norm is only sliced."""
    src = make_tiny_hf_model(tmp_path, "llama", tie_word_embeddings=tied, seed=1)
    model = load_pretrained(src)
    target = resolve_target(model.shape, TargetShape(hidden_size=40))
    masks = {"hidden": deterministic(torch.randn(64, generator=torch.Generator().manual_seed(2)), 24)}
    sd, achieved = prune_state_dict(model.state_dict(), model.shape, "llama", masks)
    kept = torch.nonzero(masks["hidden"]).flatten()
    z, msd = masks["hidden"][kept], model.state_dict()
    emb, norm = msd["embed_tokens.weight"], msd["norm.weight"]
    torch.testing.assert_close(sd["model.embed_tokens.weight"], emb[:, kept] * z)
    torch.testing.assert_close(sd["model.norm.weight"], norm[kept] * (1.0 if tied else z))
    assert ("lm_head.weight" in sd) is not tied
    if not tied:
        assert torch.equal(sd["lm_head.weight"], msd["lm_head.weight"][:, kept])
    assert achieved.hidden_size == target.hidden_size and achieved.tie_word_embeddings is tied


def test_keep_indices_keep_tied_embeddings(tmp_path):
    """DReSS passes keep-indices (0/1 masks): folded values equal the sliced head, so the export stays tied."""
    src = make_tiny_hf_model(tmp_path, "qwen2", tie_word_embeddings=True, seed=4)
    model = load_pretrained(src).eval()
    keep = {"hidden": torch.arange(0, 64, 2), "layer": torch.tensor([0, 2, 3]),
            "head": torch.tensor([[1], [0], [1], [1]]), "intermediate": torch.arange(100).repeat(4, 1)}
    out = export_from_model(model.state_dict(), keep, model.shape, "qwen2", tmp_path / "dress", dtype="float32",
                            tokenizer_src=src, progress=False)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.tie_word_embeddings is True
    masks = {k: torch.zeros(s).scatter_(len(s) - 1, v.reshape(s[0], -1) if len(s) == 2 else v, 1.0)
             for (k, v), s in zip(keep.items(), [(64,), (4,), (4, 2), (4, 128)])}
    ids = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids, masks)).abs().max().item() <= 1e-4
    achieved = model.shape.replace(hidden_size=32, num_hidden_layers=3, num_key_value_heads=1,
                                   num_attention_heads=2, intermediate_size=100)
    assert sum(p.numel() for p in hf.parameters()) == achieved.num_params()


def test_dense_export_is_the_same_model_and_sharded(tmp_path):
    src = make_tiny_hf_model(tmp_path, "mistral", seed=5)
    model = load_pretrained(src).eval()
    out = export_from_model(model.state_dict(), None, model.shape, "mistral", tmp_path / "dense", dtype="float32",
                            max_shard_size="100KB", tokenizer_src=src, progress=False)
    assert len(list(out.glob("model-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() <= 1e-5


def test_bfloat16_export_and_bad_masks(tmp_path):
    src = make_tiny_hf_model(tmp_path, "llama", seed=6)
    model = load_pretrained(src)
    out = export_from_model(model.state_dict(), None, model.shape, "llama", tmp_path / "bf16", progress=False)
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert hf.dtype == torch.bfloat16 and json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    uneven = torch.ones(4, 128)
    uneven[0, :5] = 0  # layer 0 narrower than the others: no dense HF model has that shape
    with pytest.raises(ExportError, match="same non-zero width"):
        prune_state_dict(model.state_dict(), model.shape, "llama", {"intermediate": uneven})
    with pytest.raises(ExportError, match="shape"):
        prune_state_dict(model.state_dict(), model.shape, "llama", {"hidden": torch.ones(63)})
    # An export that fails leaves no folder behind and an unrelated folder is never overwritten.
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("x")
    with pytest.raises(ExportError, match="not written by megadrp export"):
        export_from_model(model.state_dict(), None, model.shape, "llama", tmp_path / "precious", progress=False)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "x"
    assert not list(tmp_path.glob(".*tmp-*"))
