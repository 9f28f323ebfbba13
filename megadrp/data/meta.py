"""The sidecar ``PREFIX.json`` written next to ``PREFIX.bin/.idx``: which tokenizer produced the ids.

Megatron's binaries do not record their tokenizer; a model trained on ids of another vocabulary trains on
noise without any error. The sidecar lets :func:`check_tokenizer_matches` name both tokenizers and the fix.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from megadrp.data.indexed import IndexedDataset, IndexedDatasetError
from megadrp.data.tokenizer import load_tokenizer

META_VERSION = 1


def meta_path(prefix) -> Path:
    return Path(f"{os.fspath(prefix)}.json")


def write_meta(prefix, tokenizer_info: dict, **extra) -> Path:
    path = meta_path(prefix)
    record = {"format": "megadrp-indexed-meta", "version": META_VERSION, "tokenizer": tokenizer_info, **extra}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_meta(prefix) -> dict | None:
    """The sidecar of ``prefix``, or None when there is none (binaries from another tool)."""
    path = meta_path(prefix)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise IndexedDatasetError(f"{path}: not valid JSON ({err}); delete it or re-run `megadrp preprocess`") from err
    if not isinstance(record, dict) or "tokenizer" not in record:
        raise IndexedDatasetError(f"{path}: not a megadrp sidecar (no 'tokenizer' entry); delete it or re-run "
                                  f"`megadrp preprocess`")
    return record


def check_tokenizer_matches(dataset: IndexedDataset, tokenizer) -> None:
    """Raise unless ``dataset`` was tokenised with ``tokenizer`` (a TextTokenizer, folder, name or .model file).

    Checks the sidecar (vocabulary size and token table) when present, and always that every id is below the
    tokenizer's vocabulary size.
    """
    tok = load_tokenizer(tokenizer)
    meta = read_meta(dataset.prefix)
    fix = (f"re-run `megadrp preprocess --tokenizer {tok.spec} --output-prefix {dataset.prefix} ...` "
           f"(or train with the tokenizer the data were made with)")
    if meta is not None:
        used = meta["tokenizer"]
        same_size = used.get("vocab_size") == tok.vocab_size
        same_table = used.get("fingerprint") in (None, tok.fingerprint)
        if not (same_size and same_table):
            raise IndexedDatasetError(
                f"{dataset.bin_file}: tokenised with {used.get('name')!r} (vocabulary {used.get('vocab_size')}), "
                f"but the model's tokenizer is {tok.name!r} (vocabulary {tok.vocab_size}"
                f"{', same size but different tokens' if same_size else ''}); {fix}")
    dataset.check_vocab(tok.vocab_size, f"tokenizer {tok.name!r}")
