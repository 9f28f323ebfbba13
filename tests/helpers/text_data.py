"""Shared by the data, corpus and input-error tests: real text and a tiny real tokenizer."""
from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path


def real_texts(n: int = 40) -> list[str]:
    """Docstrings and sources of stdlib modules: real English and code, available offline everywhere."""
    import argparse
    import collections
    import email.message
    import json as json_mod
    import pathlib
    import textwrap as tw

    texts = []
    for mod in (argparse, collections, email.message, json_mod, pathlib, tw):
        src = inspect.getsource(mod)
        for block in src.split("\n\n\n"):
            if len(block.strip()) > 80:
                texts.append(block.strip())
    return texts[:n]


def build_tiny_tokenizer(folder: Path, vocab_size: int = 400) -> Path:
    """Train a byte-level BPE on real text and save it as a Hugging Face tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(real_texts(200), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


def write_jsonl(path: Path, texts: list[str], key: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({key: t}) + "\n")
    return path


def dedent(s: str) -> str:
    return textwrap.dedent(s).strip() + "\n"
