"""Megatron-LM's MMapIndexedDataset layout (``PREFIX.bin`` + ``PREFIX.idx``), read and written byte-compatibly.

``.idx`` (little-endian): ``MMIDIDX\\x00\\x00``, u64 version = 1, u8 dtype code, u64 sequence count N,
u64 document-index length D (documents + 1), int32 sequence sizes [N], int64 byte pointers into ``.bin`` [N],
int64 document index [D] (sequence boundaries of each document, 0 .. N). ``.bin`` is the raw tokens.

The reader memory-maps both files and validates every structural fact before handing out a token, so that
a truncated copy or a file from another tool fails at open with an error naming the file and the fix, not
as garbage tokens deep inside a training run.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = len(MAGIC) + 8 + 1 + 8 + 8  # = 34

# Megatron's dtype codes (megatron/core/datasets/indexed_dataset.py: DType).
DTYPE_CODES = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}

_REBUILD = "re-create it with `megadrp preprocess`"


class IndexedDatasetError(ValueError):
    """A ``.bin``/``.idx`` pair that cannot be read as Megatron's layout; the message names the file."""


def best_token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits with room to spare (Megatron's rule: vocab < 65,500), else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def bin_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


def idx_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


class IndexedDataset:
    """Documents of a Megatron ``.bin``/``.idx`` pair: ``len(ds)`` documents, ``ds[i]`` the tokens of document i.

    Both files are memory-mapped; ``ds[i]`` is a read-only numpy view (no copy). A document made of several
    sequences (Megatron's sentence-split output) is returned as their concatenation, which is contiguous in
    ``.bin``.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self.idx_file, self.bin_file = idx_path(prefix), bin_path(prefix)
        for path in (self.idx_file, self.bin_file):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file; {_REBUILD} with --output-prefix {self.prefix}")
        self._read_index()
        self._validate_bin()

    # -- opening -------------------------------------------------------------------------------------------
    def _fail(self, path: Path, problem: str, fix: str = _REBUILD) -> IndexedDatasetError:
        return IndexedDatasetError(f"{path}: {problem}; {fix}")

    def _read_index(self) -> None:
        path = self.idx_file
        size = path.stat().st_size
        if size < HEADER_BYTES:
            raise self._fail(path, f"truncated index ({size} bytes, the header alone is {HEADER_BYTES})")
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
        if header[:9] != MAGIC:
            raise self._fail(path, f"not a Megatron MMapIndexedDataset index (magic {header[:9]!r}, "
                                   f"expected {MAGIC!r})")
        version, code, n_seq, n_doc = struct.unpack("<QBQQ", header[9:])
        if version != VERSION:
            raise self._fail(path, f"unsupported index version {version} (only version {VERSION} exists)")
        if code not in DTYPE_CODES:
            raise self._fail(path, f"unknown dtype code {code} (valid: {sorted(DTYPE_CODES)})")
        self.dtype = np.dtype(DTYPE_CODES[code])
        if self.dtype.kind == "f":  # Megatron has float codes for other payloads; token ids are integers
            raise self._fail(path, f"dtype code {code} is {self.dtype}, not an integer token type: this is not a "
                                   f"token dataset (or its header is damaged)")
        expected = HEADER_BYTES + 12 * n_seq + 8 * n_doc
        if size != expected:
            what = "truncated" if size < expected else "has trailing bytes"
            raise self._fail(path, f"index {what}: {size} bytes, but its header ({n_seq} sequences, "
                                   f"{n_doc} document-index entries) needs {expected}")
        if n_doc < 1:
            raise self._fail(path, "document index is empty (it must hold at least the leading 0)")
        mm = np.memmap(path, mode="r", dtype=np.uint8)
        self._idx_mmap = mm
        off = HEADER_BYTES
        self.sizes = np.frombuffer(mm, dtype=np.int32, count=n_seq, offset=off)
        off += 4 * n_seq
        self.pointers = np.frombuffer(mm, dtype=np.int64, count=n_seq, offset=off)
        off += 8 * n_seq
        self.document_indices = np.frombuffer(mm, dtype=np.int64, count=n_doc, offset=off)
        docs = self.document_indices
        if docs[0] != 0 or docs[-1] != n_seq or (n_doc > 1 and np.any(np.diff(docs) < 0)):
            raise self._fail(path, f"document index must rise from 0 to the sequence count {n_seq} "
                                   f"(found {docs[0]} .. {docs[-1]})")
        if n_seq and self.sizes.min() < 0:
            raise self._fail(path, "negative sequence size")

    def _validate_bin(self) -> None:
        item = self.dtype.itemsize
        bin_bytes = self.bin_file.stat().st_size
        if bin_bytes % item:
            raise self._fail(self.bin_file, f"size {bin_bytes} bytes is not a multiple of the {self.dtype} "
                                            f"token size ({item}) named in {self.idx_file.name}")
        # Pointers must be the running byte offsets of the sizes: then every document lies inside .bin.
        expected = np.zeros(len(self.sizes), dtype=np.int64)
        if len(self.sizes) > 1:
            np.cumsum(self.sizes[:-1].astype(np.int64) * item, out=expected[1:])
        if not np.array_equal(expected, self.pointers):
            bad = int(np.argmax(expected != self.pointers))
            raise self._fail(self.idx_file, f"pointer of sequence {bad} is {int(self.pointers[bad])}, "
                                            f"expected {int(expected[bad])} from the sequence sizes")
        needed = int(self.sizes.astype(np.int64).sum()) * item
        if needed != bin_bytes:
            raise self._fail(self.bin_file, f"holds {bin_bytes} bytes but {self.idx_file.name} describes "
                                            f"{needed} ({'truncated' if bin_bytes < needed else 'trailing data'}); "
                                            f"the pair does not belong together or a copy was cut short")
        self._bin = np.memmap(self.bin_file, mode="r", dtype=self.dtype) if bin_bytes else \
            np.zeros(0, dtype=self.dtype)
        self._doc_is_seq = len(self.document_indices) == len(self.sizes) + 1 and \
            np.array_equal(self.document_indices, np.arange(len(self.sizes) + 1))
        self._max_token = None

    # -- access --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.document_indices) - 1

    def document_span(self, i: int) -> tuple[int, int]:
        """(first token, end token) of document i as positions in the flat token array."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range for {self.prefix} ({n} documents)")
        i %= n
        first, last = int(self.document_indices[i]), int(self.document_indices[i + 1])
        if first == last:
            start = int(self.pointers[first]) // self.dtype.itemsize if first < len(self.pointers) else \
                self.num_tokens
            return start, start
        start = int(self.pointers[first]) // self.dtype.itemsize
        end = int(self.pointers[last - 1]) // self.dtype.itemsize + int(self.sizes[last - 1])
        return start, end

    def __getitem__(self, i: int) -> np.ndarray:
        start, end = self.document_span(int(i))
        return self._bin[start:end]

    @property
    def tokens(self) -> np.ndarray:
        """All tokens, concatenated in document order (a read-only memory map)."""
        return self._bin

    @property
    def num_tokens(self) -> int:
        return int(self._bin.shape[0])

    @property
    def document_lengths(self) -> np.ndarray:
        """Tokens per document, int64 [len(self)]."""
        if self._doc_is_seq:
            return self.sizes.astype(np.int64)
        cum = np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)])
        return cum[self.document_indices[1:]] - cum[self.document_indices[:-1]]

    def max_token_id(self) -> int:
        """Largest token id in ``.bin`` (one pass over the file, cached); -1 when empty."""
        if self._max_token is None:
            self._max_token = int(self._bin.max()) if self.num_tokens else -1
            if self.num_tokens and self.dtype.kind == "i" and int(self._bin.min()) < 0:
                raise self._fail(self.bin_file, "holds negative token ids")
        return self._max_token

    def check_vocab(self, vocab_size: int, tokenizer_name: str = "the tokenizer") -> None:
        """Raise if a token id is outside ``[0, vocab_size)``: the data were tokenised with another vocabulary."""
        top = self.max_token_id()
        if top >= vocab_size:
            raise IndexedDatasetError(
                f"{self.bin_file}: token id {top} does not exist in {tokenizer_name} (vocabulary {vocab_size}); "
                f"the data were tokenised with a different tokenizer: re-run `megadrp preprocess` with "
                f"--tokenizer set to the model's tokenizer")

    def __repr__(self) -> str:
        return f"IndexedDataset({self.prefix!r}, documents={len(self)}, tokens={self.num_tokens}, dtype={self.dtype})"


class IndexedDatasetWriter:
    """Streams documents into ``PREFIX.bin`` and writes ``PREFIX.idx`` at :meth:`finalize`.

    Both files are written under temporary names and renamed at the end, so an interrupted run never leaves a
    pair that looks complete. Use as a context manager, or call :meth:`finalize` yourself.
    """

    def __init__(self, prefix: str | os.PathLike, dtype=np.uint16):
        self.prefix = os.fspath(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"dtype {self.dtype} has no Megatron code; use one of "
                             f"{sorted(str(np.dtype(d)) for d in DTYPE_CODES.values())}")
        self._bin_tmp = Path(f"{self.prefix}.bin.tmp")
        self._bin_tmp.parent.mkdir(parents=True, exist_ok=True)
        self._bin = open(self._bin_tmp, "wb")
        self._sizes: list[int] = []
        self._doc_idx: list[int] = [0]
        self._info = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
        self.num_tokens = 0

    def add_item(self, tokens) -> None:
        """Append one sequence (Megatron's ``add_item``); close the document with :meth:`end_document`."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"a sequence must be 1-D, got shape {arr.shape}")
        if self._info is not None and arr.size and (arr.min() < self._info.min or arr.max() > self._info.max):
            raise ValueError(f"token ids {int(arr.min())}..{int(arr.max())} do not fit {self.dtype} "
                             f"(writing {self.prefix}); use int32 for vocabularies of 65,500 or more")
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes(order="C"))
        self._sizes.append(int(arr.size))
        self.num_tokens += int(arr.size)

    def end_document(self) -> None:
        self._doc_idx.append(len(self._sizes))

    def add_document(self, tokens) -> None:
        """Append one document made of one sequence."""
        self.add_item(tokens)
        self.end_document()

    def finalize(self) -> None:
        self._bin.close()
        sizes = np.asarray(self._sizes, dtype=np.int32)
        pointers = np.zeros(len(sizes), dtype=np.int64)
        if len(sizes) > 1:
            np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.asarray(self._doc_idx, dtype=np.int64)
        idx_tmp = Path(f"{self.prefix}.idx.tmp")
        with open(idx_tmp, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<QBQQ", VERSION, CODE_OF_DTYPE[self.dtype], len(sizes), len(doc_idx)))
            f.write(sizes.tobytes())
            f.write(pointers.tobytes())
            f.write(doc_idx.tobytes())
        os.replace(self._bin_tmp, bin_path(self.prefix))
        os.replace(idx_tmp, idx_path(self.prefix))

    def abort(self) -> None:
        """Drop the partial output (called on an exception inside ``with``)."""
        self._bin.close()
        self._bin_tmp.unlink(missing_ok=True)

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
