"""Packing a domain's documents into fixed-length training sequences, without materialising them.

A domain's documents, in an order shuffled per epoch, form one token stream; sequence j of an epoch is the
window ``[s*T, s*T + T + 1)`` of that stream, where ``s`` is the j-th entry of a per-epoch shuffle of the window
starts (Megatron's GPT dataset convention: T + 1 tokens, so inputs and shifted labels come from one window,
consecutive windows share one token). Only a counter of sequences consumed is state: sequence ``k`` of the
domain is sequence ``k mod n`` of epoch ``k div n``, and every shuffle is seeded by (seed, domain, epoch).
"""
from __future__ import annotations

import numpy as np

from megadrp.data.indexed import IndexedDataset


class PackedDomain:
    """Sequence ``k`` (a global counter, epochs wrap) of one domain as an int64 array of ``seq_length + 1`` ids."""

    def __init__(self, dataset: IndexedDataset, seq_length: int, seed: int, domain_index: int, name: str = ""):
        self.dataset, self.seq_length, self.seed = dataset, int(seq_length), int(seed)
        self.domain_index, self.name = int(domain_index), name or dataset.prefix
        lengths = dataset.document_lengths
        self._doc_ids = np.nonzero(lengths > 0)[0]  # empty documents add nothing to the stream
        self._doc_lengths = lengths[self._doc_ids]
        flat_starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])[:-1]
        self._doc_flat_starts = flat_starts[self._doc_ids]
        total = int(self._doc_lengths.sum())
        self.sequences_per_epoch = (total - 1) // self.seq_length if total > 0 else 0
        if self.sequences_per_epoch < 1:
            raise ValueError(f"{dataset.bin_file}: domain {self.name!r} has {total} tokens, fewer than one "
                             f"sequence of seq_length + 1 = {self.seq_length + 1}; add data or lower seq_length")
        self._epoch = -1

    def _rng(self, epoch: int, what: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.domain_index, epoch, what])

    def _load_epoch(self, epoch: int) -> None:
        order = self._rng(epoch, 0).permutation(len(self._doc_ids))
        self._starts = self._doc_flat_starts[order]
        self._ends_in_stream = np.cumsum(self._doc_lengths[order], dtype=np.int64)
        n = self.sequences_per_epoch
        self._window_order = self._rng(epoch, 1).permutation(n).astype(np.int32 if n < 2**31 else np.int64)
        self._epoch = epoch

    def epoch_of(self, k: int) -> int:
        return int(k) // self.sequences_per_epoch

    def get(self, k: int) -> np.ndarray:
        epoch, j = divmod(int(k), self.sequences_per_epoch)
        if epoch != self._epoch:
            self._load_epoch(epoch)
        pos = int(self._window_order[j]) * self.seq_length
        return self._read_stream(pos, self.seq_length + 1)

    def _read_stream(self, pos: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        tokens = self.dataset.tokens
        d = int(np.searchsorted(self._ends_in_stream, pos, side="right"))
        filled = 0
        while filled < count:
            doc_begin = int(self._ends_in_stream[d - 1]) if d else 0
            offset = pos + filled - doc_begin
            take = min(count - filled, int(self._ends_in_stream[d]) - doc_begin - offset)
            start = int(self._starts[d]) + offset
            out[filled:filled + take] = tokens[start:start + take]
            filled += take
            d += 1
        return out


def sequential_windows(dataset: IndexedDataset, seq_length: int, max_sequences: int | None = None):
    """Unshuffled windows of ``seq_length + 1`` tokens over the documents in file order (for evaluation).

    Yields int64 arrays; the stride is ``seq_length`` so each token is predicted exactly once.
    """
    tokens = dataset.tokens
    n = (dataset.num_tokens - 1) // seq_length if dataset.num_tokens > 0 else 0
    if max_sequences is not None:
        n = min(n, int(max_sequences))
    for i in range(n):
        yield np.asarray(tokens[i * seq_length: i * seq_length + seq_length + 1], dtype=np.int64)
