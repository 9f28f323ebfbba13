"""Data: Megatron ``.bin/.idx`` reader and writer, preprocessing, packing and the domain-mixture sampler."""
from megadrp.data.domains import domain_prefix, domain_token_counts, load_domain_datasets, natural_weights
from megadrp.data.indexed import IndexedDataset, IndexedDatasetError, IndexedDatasetWriter, best_token_dtype
from megadrp.data.meta import check_tokenizer_matches, read_meta, write_meta
from megadrp.data.packing import PackedDomain, sequential_windows
from megadrp.data.sampler import DomainMixtureSampler

__all__ = [
    "IndexedDataset", "IndexedDatasetWriter", "IndexedDatasetError", "best_token_dtype",
    "DomainMixtureSampler", "PackedDomain", "sequential_windows",
    "load_domain_datasets", "domain_token_counts", "domain_prefix", "natural_weights",
    "check_tokenizer_matches", "read_meta", "write_meta",
]
