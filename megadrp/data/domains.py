"""Opening the per-domain binaries ``PREFIX_DOMAIN.bin/.idx`` together, and their natural mixture."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from megadrp.data.indexed import IndexedDataset, bin_path, idx_path
from megadrp.data.meta import check_tokenizer_matches


def domain_prefix(prefix: str | os.PathLike, domain: str) -> str:
    return f"{os.fspath(prefix)}_{domain}"


def load_domain_datasets(prefix: str | os.PathLike, domains: Sequence[str], tokenizer=None) -> dict:
    """``{domain: IndexedDataset}`` in the order of ``domains``, opened from ``PREFIX_DOMAIN.bin/.idx``.

    All missing files are listed in one error. With ``tokenizer`` (TextTokenizer, folder, name or .model file)
    every domain is checked to have been tokenised with it.
    """
    if not domains:
        raise ValueError("no domains given: set data.domains (e.g. [code, legal, manuals, literature, math, "
                         "multilingual])")
    missing = [str(p) for d in domains for p in (bin_path(domain_prefix(prefix, d)), idx_path(domain_prefix(prefix, d)))
               if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing {len(missing)} data file(s) for prefix {os.fspath(prefix)!r}: {', '.join(missing)}. "
            f"Create them with `megadrp preprocess --input CORPUS/train --per-domain --output-prefix "
            f"{os.fspath(prefix)} --tokenizer MODEL --append-eod` (CORPUS from experiments/corpus_build.py), or fix "
            f"data.prefix / data.domains")
    datasets = {d: IndexedDataset(domain_prefix(prefix, d)) for d in domains}
    if tokenizer is not None:
        from megadrp.data.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer)
        for ds in datasets.values():
            check_tokenizer_matches(ds, tok)
    return datasets


def domain_token_counts(datasets: Mapping[str, IndexedDataset] | str, domains: Sequence[str] | None = None) -> dict:
    """Tokens per domain (read from the indexes only). Pass a dict of datasets, or a prefix and domain names."""
    if isinstance(datasets, (str, os.PathLike)):
        datasets = load_domain_datasets(datasets, domains or [])
    return {name: int(ds.num_tokens) for name, ds in datasets.items()}


def natural_weights(datasets: Mapping[str, IndexedDataset]) -> np.ndarray:
    """The natural mixture: each domain's share of all tokens (float64, sums to 1)."""
    counts = np.array(list(domain_token_counts(datasets).values()), dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError("all domains are empty: nothing to sample from")
    return counts / counts.sum()
