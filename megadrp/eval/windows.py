"""Held-out text and its evaluation windows, with the exact UTF-8 bytes each token covers (docs/EVALUATION.md).

The held-out split is ``CORPUS/heldout/DOMAIN.jsonl``, one document per line, field ``text``
(``load_heldout``). The documents are joined with EOS between them and cut into non-overlapping windows of
``seq_length`` tokens. Token ``i`` of a document covers the characters from its own start offset to the next
token's start (the first token from 0, the last to the document's end), so the tokens of a document tile it:
summing their bytes over any run of tokens gives the bytes of exactly that span of text. EOS covers no
text (0 bytes). ``ids_bytes`` gives the same counts from token ids alone (the trainer's periodic eval).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megadrp.data.corpus_manifest import manifest_domains


def available_domains(corpus_dir) -> list[str]:
    """Domain names that have a held-out file, sorted."""
    heldout = Path(corpus_dir) / "heldout"
    return sorted(p.stem for p in heldout.glob("*.jsonl"))


def _truncate_utf8(text: str, max_bytes: int) -> str:
    # Cut at a character boundary so the kept text is valid UTF-8 and its byte count is <= max_bytes.
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def read_documents(path, max_bytes: int | None = None) -> list[str]:
    """The non-empty ``text`` fields of a JSONL file, stopping once ``max_bytes`` UTF-8 bytes are read."""
    try:
        return _read_documents(path, max_bytes)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start} of a line); convert it to "
                         f"UTF-8") from None


def _read_documents(path, max_bytes: int | None) -> list[str]:
    docs, used = [], 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with a 'text' field ({err})") from None
            if not text:
                continue
            if max_bytes is not None:
                room = max_bytes - used
                if room <= 0:
                    break
                text = _truncate_utf8(text, room)
                if not text:
                    break
            docs.append(text)
            used += len(text.encode("utf-8"))
    return docs


def load_heldout(corpus_dir, domains=None, max_bytes: int | None = None) -> dict[str, list[str]]:
    """Held-out documents per domain, in the order asked (default: every domain of ``corpus_dir/heldout``).

    ``max_bytes`` caps the UTF-8 bytes read per domain (documents in file order, the last one cut).
    A domain asked for but absent raises ``FileNotFoundError`` naming the domains that exist; a domain
    whose file holds no text maps to ``[]`` (``evaluate_domains`` reports it as skipped).
    """
    heldout = Path(corpus_dir) / "heldout"
    if not heldout.is_dir():
        raise FileNotFoundError(f"no held-out split: {heldout} does not exist (expected CORPUS/heldout/DOMAIN.jsonl, "
                                "as written by experiments/corpus_build.py)")
    present = available_domains(corpus_dir)
    if domains is None:
        listed = manifest_domains(corpus_dir)
        lost = [d for d in listed if d not in present]
        if lost:  # an average over the rest would read as the corpus's
            raise FileNotFoundError(f"{Path(corpus_dir) / 'manifest.json'} lists domain(s) {lost}, but {heldout} "
                                    f"has no {', '.join(d + '.jsonl' for d in lost)}; restore it "
                                    f"(experiments/corpus_build.py) or name the domains to score with --domains")
        domains = present
    missing = [d for d in domains if d not in present]
    if missing:
        raise FileNotFoundError(f"held-out domain(s) {missing} not found in {heldout}; available: {present}")
    if not domains:
        raise FileNotFoundError(f"{heldout} holds no DOMAIN.jsonl file")
    return {d: read_documents(heldout / f"{d}.jsonl", max_bytes) for d in domains}


@dataclass
class Window:
    """One evaluation window: ``ids`` [n] (n <= seq_length); tokens 1..n-1 are predicted and cover ``num_bytes``."""

    ids: torch.Tensor
    num_bytes: int

    @property
    def num_predicted(self) -> int:
        return int(self.ids.numel()) - 1


def _char_byte_prefix(text: str) -> np.ndarray:
    """prefix[k] = UTF-8 bytes of text[:k] (length len(text) + 1), without a Python loop over characters."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
    return np.concatenate([[0], np.cumsum(widths)])


def _token_bytes(text: str, offsets) -> np.ndarray:
    """UTF-8 bytes covered by each token of ``text`` given its (start, end) character offsets."""
    n = len(offsets)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.array([s for s, _ in offsets], dtype=np.int64)
    # Tokenizers keep offsets monotonic; the running max guards against one that does not.
    starts = np.maximum.accumulate(starts)
    starts[0] = 0
    bounds = np.concatenate([starts, [len(text)]])
    prefix = _char_byte_prefix(text)
    return prefix[bounds[1:]] - prefix[bounds[:-1]]


def build_stream(tokenizer, documents: list[str], max_tokens: int | None = None,
                 chunk_docs: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [N], bytes [N]) of the documents joined by EOS; stops tokenising once ``max_tokens`` are reached."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("evaluation needs a fast (Rust) Hugging Face tokenizer: its character offsets give the "
                        "exact bytes per token; load it with AutoTokenizer.from_pretrained(..., use_fast=True)")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id: documents are joined with EOS; set tokenizer.eos_token")
    ids: list[int] = []
    nbytes: list[np.ndarray] = []
    for start in range(0, len(documents), chunk_docs):
        chunk = documents[start:start + chunk_docs]
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        for text, doc_ids, offsets in zip(chunk, enc["input_ids"], enc["offset_mapping"]):
            if ids:
                ids.append(eos)
                nbytes.append(np.zeros(1, dtype=np.int64))
            ids.extend(doc_ids)
            nbytes.append(_token_bytes(text, offsets))
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    if not ids:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.tensor(ids, dtype=torch.long), torch.from_numpy(np.concatenate(nbytes)).long()


def _byte_level_unicode() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character table (GPT-2's ``bytes_to_unicode``)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_byte_strings(tokenizer) -> list[bytes]:
    """The exact UTF-8 bytes of every vocabulary id of a byte-level BPE tokenizer; special tokens: none."""
    import json

    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        raise ValueError(f"counting the bytes of token ids needs a byte-level BPE tokenizer (decoder "
                         f"{decoder.get('type')!r}); evaluate from text with `megadrp eval` instead")
    inverse, special = _byte_level_unicode(), set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return [b"" if i in special or p is None else bytes(inverse.get(c, 0) for c in p) for i, p in enumerate(pieces)]


def ids_bytes(table: list[bytes], ids, eos: int) -> np.ndarray:
    """Per-token bytes of a token stream given as ids (a ``.bin``), by :func:`build_stream`'s rule.

    A token covers from the character holding its first byte to the character holding the next token's
    first byte (to the document's end for the last one); EOS (and every special token) covers none and
    ends a document. ``table`` is :func:`token_byte_strings` of the tokenizer. Equal to the offset-based
    count of the same tokens' text.
    """
    ids = np.asarray(ids, dtype=np.int64)
    out = np.zeros(len(ids), dtype=np.int64)
    bounds = np.flatnonzero(ids == eos).tolist()
    start = 0
    for end in bounds + [len(ids)]:
        doc = ids[start:end]
        if len(doc):
            pieces = [table[int(t)] for t in doc]
            data = np.frombuffer(b"".join(pieces), dtype=np.uint8)
            first = np.cumsum([0] + [len(p) for p in pieces])  # byte offset of each token's first byte
            # the character start at or before each byte (continuation bytes are 0b10xxxxxx)
            char_start = np.maximum.accumulate(np.where((data & 0xC0) != 0x80, np.arange(len(data)), 0))
            out[start:end] = np.diff(np.append(char_start, len(data))[first])
        start = end + 1
    return out


def stream_windows(ids: torch.Tensor, nbytes: torch.Tensor | None, seq_length: int,
                   max_windows: int = 0) -> list[Window]:
    """Non-overlapping windows of ``seq_length`` tokens over a token stream (the first token of each is
    context only); ``nbytes`` per token, or None to count no bytes. A final short window counts if it
    predicts a token."""
    if seq_length < 2:
        raise ValueError(f"seq_length must be >= 2 (one context token and one predicted), got {seq_length}")
    windows = []
    for start in range(0, ids.numel(), seq_length):
        if max_windows and len(windows) == max_windows:
            break
        w_ids = ids[start:start + seq_length]
        if w_ids.numel() < 2:
            break
        covered = 0 if nbytes is None else int(nbytes[start + 1:start + seq_length].sum())
        windows.append(Window(w_ids, covered))
    return windows


def make_windows(tokenizer, documents: list[str], seq_length: int, max_windows: int = 0) -> list[Window]:
    """The first ``max_windows`` (0: all) non-overlapping windows; a final short one counts if it predicts a token."""
    limit = max_windows * seq_length if max_windows else None
    ids, nbytes = build_stream(tokenizer, documents, max_tokens=limit)
    if limit is not None:
        ids, nbytes = ids[:limit], nbytes[:limit]
    return stream_windows(ids, nbytes, seq_length)
