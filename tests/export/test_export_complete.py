"""What users publish is complete: the export keeps the source's chat template, special tokens map and generation
config (through a checkpoint's tokenizer copy, with the source folder gone), and its card names the base model
and license the source states (from that copy too), the method and target, and warns when the model is far
below its source.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from megadrp.export import export_from_model
from megadrp.export.provenance import base_model_id
from megadrp.model import load_pretrained
from tests.helpers.tiny_models import make_tiny_hf_model

TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}<|endoftext|>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant: {% endif %}")
CHAT = [{"role": "user", "content": "Simple is better than complex?"}]
MIT = "MIT License\n\nCopyright (c) 2024 Someone\n\nPermission is hereby granted, free of charge, to any person"


def instruct_source(tmp_path, name="tiny-instruct", template_in_config=False):
    """A tiny Instruct-style source: chat template, special tokens map, a generation config of its own."""
    src = make_tiny_hf_model(tmp_path, "llama", seed=5, name=name)
    if template_in_config:  # the pre-transformers-5 place of the template
        cfg = json.loads((src / "tokenizer_config.json").read_text())
        (src / "tokenizer_config.json").write_text(json.dumps(dict(cfg, chat_template=TEMPLATE)))
    else:
        (src / "chat_template.jinja").write_text(TEMPLATE)
    (src / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    (src / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 0, "pad_token_id": 0, "min_new_tokens": 4, "max_new_tokens": 4,
         "repetition_penalty": 1.3}))
    return src


def export(src, out, tokenizer_src=None, source_dir="same", **card_info):
    model = load_pretrained(src)
    masks = {"layer": torch.tensor([1.0, 0.0, 0.9, 0.8])}
    return export_from_model(model.state_dict(), masks, model.shape, "llama", out, tokenizer_src=tokenizer_src,
                             dtype="float32", target={"num_hidden_layers": 3}, progress=False,
                             source_model_dir=str(src) if source_dir == "same" else source_dir,
                             card_info={"mode": "prune", "dro_method": "drpruning", **card_info})


def test_checkpoint_copy_carries_chat_template_and_generation_config(tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from megadrp.trainer.checkpoint import _copy_tokenizer

    src = instruct_source(tmp_path)
    (src / "README.md").write_text("---\nlicense: apache-2.0\nmegadrp_source_id: Org/tiny-instruct\n---\n# copy\n")
    (src / "LICENSE").write_text("Apache License\nVersion 2.0, January 2004\n")
    want = AutoTokenizer.from_pretrained(src).apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    _copy_tokenizer(str(src), tmp_path / "step_2" / "tokenizer")  # what the trainer writes into a checkpoint
    moved = tmp_path / "elsewhere"
    weights = shutil.copytree(src, tmp_path / "weights")  # the source folder is gone by export time
    shutil.rmtree(src)
    out = export(weights, tmp_path / "exp", tokenizer_src=str(tmp_path / "step_2" / "tokenizer"),
                 source_dir=str(moved))
    for name in ("chat_template.jinja", "special_tokens_map.json", "generation_config.json", "tokenizer.json",
                 "LICENSE"):
        assert (out / name).read_bytes() == (weights / name).read_bytes(), name
    card = ModelCard.load(out / "README.md")  # from the checkpoint's copy of the source's card
    assert (card.data.base_model, card.data.license) == ("Org/tiny-instruct", "apache-2.0")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == want
    assert want.endswith("<s>assistant: ")
    gen = GenerationConfig.from_pretrained(out)
    assert (gen.repetition_penalty, gen.max_new_tokens, gen.eos_token_id) == (1.3, 4, 0)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        new = hf.generate(ids, do_sample=False)[0, ids.shape[1]:]  # length from the exported generation config
    assert len(new) == 4 and tok.decode(new) != ""


def test_template_from_the_model_folder_when_the_tokenizer_folder_has_none(tmp_path):
    from transformers import AutoTokenizer

    src = instruct_source(tmp_path, template_in_config=True)
    plain_tok = make_tiny_hf_model(tmp_path, "llama", seed=6, name="plain")  # data.tokenizer: no template
    out = export(src, tmp_path / "exp", tokenizer_src=str(plain_tok))
    assert (out / "chat_template.jinja").read_text() == TEMPLATE  # written out of the source's tokenizer_config
    text = AutoTokenizer.from_pretrained(out).apply_chat_template(CHAT, tokenize=False)
    assert text == "<s>user: Simple is better than complex?<|endoftext|>"
    assert (out / "tokenizer.json").read_bytes() == (plain_tok / "tokenizer.json").read_bytes()  # never a mix


def test_card_base_model_license_target_from_the_source(tmp_path):
    from huggingface_hub import ModelCard

    src = instruct_source(tmp_path)
    (src / "README.md").write_text("---\nlicense: apache-2.0\nmegadrp_source_id: HuggingFaceTB/SmolLM2-135M-Instruct"
                                   "\n---\n# a local copy\n")
    card = ModelCard.load(export(src, tmp_path / "exp") / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert "drpruning" in card.text and "- Target shape: num_hidden_layers 3 (source 4)." in card.text
    shape = load_pretrained(src).shape
    n, n_src = shape.replace(num_hidden_layers=3).num_params(False), shape.num_params(False)
    assert f"- Non-embedding parameters: {n:,} of the source's {n_src:,} ({n / n_src:.1%})." in card.text
    assert "not a Hub id" not in card.text


def test_card_without_hub_id_names_the_folder_and_license_file(tmp_path):
    from huggingface_hub import ModelCard

    src = instruct_source(tmp_path, name="my-local-model")
    (src / "LICENSE").write_text(MIT)
    out = export(src, tmp_path / "exp")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "my-local-model" and card.data.license == "mit"
    assert "`base_model: my-local-model` is the source folder's name, not a Hub id" in card.text
    assert (out / "LICENSE").read_text() == MIT
    for f in out.iterdir():  # no local path anywhere in what is published
        if f.suffix in (".md", ".json", ".jinja") or f.name == "LICENSE":
            assert str(tmp_path) not in f.read_text(), f.name
    snapshot = tmp_path / "hub" / "models--Org--tiny-model.v2" / "snapshots" / "0123abc"
    shutil.copytree(src, snapshot)  # a source read from huggingface_hub's cache
    assert base_model_id(str(snapshot)) == "Org/tiny-model.v2"


def _result(shape, bpb):
    return {"shape": {k: shape[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                            "intermediate_size", "num_hidden_layers", "vocab_size")},
            "domains": {"code": {"bits_per_byte": bpb, "loss": bpb * 2, "perplexity": 9.0}},
            "average": {"bits_per_byte": bpb, "loss": bpb * 2, "perplexity": 9.0},
            "worst": {"domain": "code", "bits_per_byte": bpb, "loss": bpb * 2},
            "skipped": {}, "protocol": {"seq_length": 64, "max_windows": 2}}


@pytest.mark.parametrize("pruned_bpb,warned", [(2.2, True), (1.4, False)])
def test_card_warns_when_far_below_the_source(tmp_path, pruned_bpb, warned):
    src = make_tiny_hf_model(tmp_path, "llama", seed=5)
    shape = load_pretrained(src).shape.to_dict()
    results = {"models": {"pruned": _result(dict(shape, num_hidden_layers=3), pruned_bpb),
                          "source": _result(shape, 1.0)}}
    text = (export(src, tmp_path / "exp", eval=results) / "README.md").read_text()
    assert "## Evaluation" in text and f"| code | {pruned_bpb:.4f} | 1.0000 |" in text
    assert ("## Quality warning" in text) == warned
    if warned:
        assert "held-out average is 2.200 bits per byte against the source's 1.000 (2.20x" in text
        assert text.index("## Quality warning") < text.index("## Shape")  # where a reader sees it first
