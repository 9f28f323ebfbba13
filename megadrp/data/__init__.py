"""Data: Megatron ``.bin/.idx`` reader and writer, preprocessing, packing and the domain-mixture sampler.

Names are imported lazily, so that tools that need only part of the package (the corpus builder,
preprocessing workers) do not pay for importing torch.
"""
import importlib

_EXPORTS = {
    "IndexedDataset": "indexed", "IndexedDatasetWriter": "indexed", "IndexedDatasetError": "indexed",
    "best_token_dtype": "indexed",
    "DomainMixtureSampler": "sampler", "calibration_batches": "sampler",
    "PackedDomain": "packing", "sequential_windows": "packing",
    "load_domain_datasets": "domains", "domain_token_counts": "domains", "domain_prefix": "domains",
    "natural_weights": "domains",
    "check_tokenizer_matches": "meta", "read_meta": "meta", "write_meta": "meta",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"megadrp.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'megadrp.data' has no attribute {name!r}")
