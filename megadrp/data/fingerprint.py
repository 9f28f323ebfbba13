"""What a domain's binaries were, cheaply: sizes and a sampled checksum, recorded in every checkpoint.

A resume applies the checkpoint's sampler positions (per-domain cursors) to the binaries it finds. If
PREFIX_DOMAIN.bin/.idx were replaced in place between two runs of a job, those positions index other data and
the exact-resume promise breaks silently (issue 30). So the trainer records, per domain, the byte sizes of both
files and a sha256 over the whole .idx (document boundaries, small: 8 + 4 bytes per document for Megatron's
layout) and over SAMPLES blocks of the .bin spread evenly through it (first and last included); a resume
compares (megadrp.trainer.resume_check). Reading costs SAMPLES x BLOCK bytes of the .bin whatever its size.
A change confined to bytes between the sampled blocks, at unchanged sizes and document lengths, goes unseen:
this is a guard against replaced or regenerated data, not a tamper proof.
"""
from __future__ import annotations

import hashlib
import os

from megadrp.data.indexed import bin_path, idx_path

SAMPLES = 64
BLOCK = 4096


def fingerprint(prefix) -> dict:
    """``{"bin_bytes", "idx_bytes", "sha256"}`` of the binaries of ``prefix``."""
    b, i = bin_path(prefix), idx_path(prefix)
    h = hashlib.sha256()
    with open(i, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    size = os.path.getsize(b)
    with open(b, "rb") as fh:
        last = max(size - BLOCK, 0)
        for k in range(SAMPLES):
            fh.seek(last * k // (SAMPLES - 1))
            h.update(fh.read(BLOCK))
    return {"bin_bytes": size, "idx_bytes": os.path.getsize(i), "sha256": h.hexdigest()}


def describe_change(domain: str, prefix, saved: dict, now: dict) -> str:
    """One line naming how a domain's binaries differ from what a checkpoint recorded ('' when equal)."""
    if saved == now:
        return ""
    sizes = [f"{ext} {saved.get(k)} -> {now.get(k)} bytes" for ext, k in ((".bin", "bin_bytes"), (".idx", "idx_bytes"))
             if saved.get(k) != now.get(k)]
    what = ", ".join(sizes) if sizes else "same sizes, different content"
    return f"training data of domain {domain!r} ({os.fspath(prefix)}.bin/.idx) changed since the checkpoint: {what}"
