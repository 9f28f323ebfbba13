"""One small interface over the tokenizers preprocessing accepts: a HF folder or Hub name, or a sentencepiece file.

``load_tokenizer(spec)`` returns a :class:`TextTokenizer` with ``encode_batch``, ``vocab_size``, ``eod_id``,
``name`` and a ``fingerprint`` (sha256 of the id -> token table) that the data sidecar stores, so that a model
is never trained on ids from another vocabulary of the same size.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


class TokenizerError(ValueError):
    """The tokenizer cannot be loaded or used for preprocessing."""


def _fingerprint(pieces) -> str:
    h = hashlib.sha256()
    for piece in pieces:
        h.update(piece.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


class TextTokenizer:
    """Encodes batches of texts to lists of ids without special tokens (EOD is appended by the caller)."""

    def __init__(self, spec: str):
        self.spec = os.fspath(spec)
        path = Path(self.spec)
        if path.is_file() and path.suffix == ".model":
            self._load_sentencepiece(path)
        else:
            self._load_hf(self.spec)

    def _load_sentencepiece(self, path: Path) -> None:
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self._fast = None
        self._hf = None
        self.name = path.name if path.parent.name == "" else f"{path.parent.name}/{path.name}"
        self.vocab_size = int(self._sp.get_piece_size())
        eos = int(self._sp.eos_id())
        self.eod_id = eos if eos >= 0 else None
        self.fingerprint = _fingerprint(self._sp.id_to_piece(i) for i in range(self.vocab_size))

    def _load_hf(self, spec: str) -> None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(spec)
        except (OSError, ValueError) as err:
            raise TokenizerError(f"cannot load tokenizer {spec!r}: {err}. Pass --tokenizer a Hugging Face tokenizer "
                                 f"folder (tokenizer.json or tokenizer.model inside), a Hub name available "
                                 f"offline, or a sentencepiece .model file") from err
        self._sp = None
        self._hf = tok
        # The Rust backend encodes a batch without Python per-token work and without the model-max-length
        # warning; slow (Python) tokenizers fall back to __call__.
        self._fast = tok.backend_tokenizer if getattr(tok, "is_fast", False) else None
        self.name = Path(spec).name if Path(spec).exists() else spec
        self.vocab_size = int(len(tok))
        self.eod_id = tok.eos_token_id
        vocab = tok.get_vocab()
        table = [""] * self.vocab_size
        for piece, i in vocab.items():
            if 0 <= i < self.vocab_size:
                table[i] = piece
        self.fingerprint = _fingerprint(table)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._sp is not None:
            return self._sp.encode(texts)
        if self._fast is not None:
            return [e.ids for e in self._fast.encode_batch_fast(texts, add_special_tokens=False)]
        return self._hf(texts, add_special_tokens=False)["input_ids"]

    def info(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "eod_id": self.eod_id,
                "fingerprint": self.fingerprint}


def load_tokenizer(spec) -> TextTokenizer:
    """A :class:`TextTokenizer` from a folder, Hub name, ``.model`` file, or an existing TextTokenizer."""
    return spec if isinstance(spec, TextTokenizer) else TextTokenizer(spec)
