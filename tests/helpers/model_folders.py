"""Builders shared by the evaluation tests: a tiny byte-level BPE tokenizer and a tiny random Llama (HF folders)."""
from __future__ import annotations

import json
from pathlib import Path

TEXTS = {
    "prose": ["It is a truth universally acknowledged, that a single man in possession of a good fortune, "
              "must be in want of a wife.", "However little known the feelings or views of such a man may be "
              "on his first entering a neighbourhood, this truth is so well fixed in the minds of the families.",
              "My dear Mr. Bennet, said his lady to him one day, have you heard that Netherfield Park is let at last?"],
    "code": ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i * i)\n",
             "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n"],
}
MULTI = "Größe und Maß: naïve café — 日本語のテキスト, русский текст. 🙂 done."


def build_tokenizer(folder: Path):
    """A fast HF tokenizer (byte-level BPE, ~400 tokens, EOS '</s>') trained on TEXTS, saved into ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([t for docs in TEXTS.values() for t in docs] + [MULTI], trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    folder.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(folder))
    return hf


def build_model_folder(folder: Path, seed: int = 0, num_layers: int = 2):
    """A random LlamaForCausalLM (hidden 32, GQA 4/2 heads) plus the tiny tokenizer, saved as one HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(str(folder))
    return model, tok


def write_corpus(root: Path, texts: dict[str, list[str]]) -> Path:
    """CORPUS/heldout/DOMAIN.jsonl files (the layout of ARCHITECTURE.md)."""
    heldout = root / "heldout"
    heldout.mkdir(parents=True, exist_ok=True)
    for name, docs in texts.items():
        (heldout / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return root
