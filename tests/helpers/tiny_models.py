"""Tiny random Hugging Face checkpoints for tests: written by transformers itself with save_pretrained.

    path = make_tiny_hf_model(tmp_path, "llama", num_key_value_heads=2, seed=0)

Families: llama (MHA when num_key_value_heads == num_attention_heads, else GQA), mistral, qwen2 (q/k/v
biases). Norm weights and biases are perturbed away from HF's 1/0 init (perturb=True) so parity tests notice
a mis-mapped norm or bias. A small byte-level BPE tokenizer of vocab_size tokens is saved alongside
(trained in ~0.1 s on a fixed text), so trainer/export/eval tests get a complete HF folder.
"""
from __future__ import annotations

from pathlib import Path

import torch

_TEXT = """The quick brown fox jumps over the lazy dog. It is a truth universally acknowledged, that a single
man in possession of a good fortune, must be in want of a wife. In the beginning God created the heaven and
the earth. def main(argv=None):\n    return sum(x * x for x in range(10))\nPermission is hereby granted, free
of charge, to any person obtaining a copy of this software. Beautiful is better than ugly. Explicit is better
than implicit. Simple is better than complex. 0 1 2 3 4 5 6 7 8 9 10 100 1000 = + - * / ( ) [ ] { } < > .
Der schnelle braune Fuchs springt über den faulen Hund. Le renard brun saute par-dessus le chien paresseux.
"""

_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}


def tiny_config(family: str = "llama", num_attention_heads: int = 4, num_key_value_heads: int = 2,
                hidden_size: int = 64, intermediate_size: int = 128, num_hidden_layers: int = 4,
                vocab_size: int = 512, tie_word_embeddings: bool = False, **extra):
    """The transformers config object of a tiny model (head_dim = hidden_size // heads unless given)."""
    import transformers

    cfg_cls = getattr(transformers, _CLASSES[family][0])
    kw = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
              num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
              num_key_value_heads=num_key_value_heads, max_position_embeddings=512, rms_norm_eps=1e-6,
              tie_word_embeddings=tie_word_embeddings, bos_token_id=1, eos_token_id=0, pad_token_id=0)
    if family == "mistral":
        kw["sliding_window"] = None
    kw.update(extra)
    return cfg_cls(**kw)


def make_tiny_tokenizer(out_dir, vocab_size: int = 512):
    """A byte-level BPE tokenizer (PreTrainedTokenizerFast) with <|endoftext|> = id 0 and <s> = id 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<s>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.save_pretrained(out_dir)
    return fast


def make_tiny_hf_model(tmp_dir, family: str = "llama", num_attention_heads: int = 4, num_key_value_heads: int = 2,
                       hidden_size: int = 64, intermediate_size: int = 128, num_hidden_layers: int = 4,
                       vocab_size: int = 512, tie_word_embeddings: bool = False, seed: int = 0,
                       with_tokenizer: bool = True, perturb: bool = True, name: str | None = None,
                       **extra) -> Path:
    """Write a tiny random HF model (fp32 safetensors) into tmp_dir/NAME and return that folder."""
    import transformers

    cfg = tiny_config(family, num_attention_heads, num_key_value_heads, hidden_size, intermediate_size,
                      num_hidden_layers, vocab_size, tie_word_embeddings, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, _CLASSES[family][1])(cfg).float().eval()
    if perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                elif n.endswith(".bias"):
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
    kind = "gqa" if num_key_value_heads < num_attention_heads else "mha"
    out = Path(tmp_dir) / (name or f"tiny-{family}-{kind}{'-tied' if tie_word_embeddings else ''}-s{seed}")
    model.save_pretrained(out, safe_serialization=True)
    if with_tokenizer:
        make_tiny_tokenizer(out, vocab_size)
    return out


def load_hf(path, dtype=torch.float32):
    """The reference transformers model of a folder, eval mode, eager-free default attention."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
