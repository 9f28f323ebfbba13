"""The recorded corpus: which package versions a source list was built from, and what the build produced.

``configs/corpus_sources.lock.json`` sits beside its source list (``SOURCES.lock.json`` for ``SOURCES.yaml``) and is
written by ``python -m experiments.corpus_build --update-lock`` from a finished build. A later build asks Debian and
PyPI for exactly the recorded versions (PyPI keeps every release; Debian's archive serves only its current ones, so a
recorded Debian version can disappear after a point release), then compares its per-domain sha256 with the
record and says which domains differ and what that means: held-out numbers measured on one corpus are not
comparable with numbers measured on the other. Every evaluation result carries the corpus's ``content_sha256``
(``megadrp.data.corpus_manifest``), so the two can be told apart afterwards as well.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from megadrp.data.corpus_manifest import read_json_object

LOCK_FORMAT = "megadrp-corpus-lock"


def lock_path(sources_file: Path) -> Path:
    return Path(sources_file).with_suffix(".lock.json")


def read_lock(sources_file: Path) -> dict | None:
    """The lock beside ``sources_file``, or None when the list has none."""
    path = lock_path(sources_file)
    lock = read_json_object(path, "corpus lock", "restore it from git or rewrite it with "
                                                 "python -m experiments.corpus_build --update-lock")
    if lock is None:
        return None
    if lock.get("format") != LOCK_FORMAT:
        raise ValueError(f"{path}: not a corpus lock (format {lock.get('format')!r}, expected {LOCK_FORMAT!r})")
    return lock


def debian_pins(lock: dict | None) -> dict[str, str]:
    """{debian package: recorded version}."""
    if not lock:
        return {}
    return {k.split(":", 1)[1]: v for k, v in lock.get("packages", {}).items() if k.startswith("debian:")}


def write_lock(sources_file: Path, manifest: dict) -> Path:
    """Record a finished build (its manifest) as the lock of ``sources_file``."""
    lock = {"format": LOCK_FORMAT, "version": 1, "sources_file": Path(sources_file).name,
            "packages": manifest["packages"], "content_sha256": manifest["content_sha256"],
            "domains": {d: {split: e[split]["sha256"] for split in ("train", "heldout")}
                        for d, e in manifest["domains"].items()}}
    path = lock_path(sources_file)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(lock, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def version_deviations(lock: dict | None, used: dict[str, str]) -> dict[str, dict[str, str]]:
    """{package: {"recorded", "used"}} for every package whose version differs from the lock's record."""
    recorded = (lock or {}).get("packages", {})
    return {k: {"recorded": recorded[k], "used": v} for k, v in sorted(used.items())
            if k in recorded and recorded[k] != v}


def content_deviations(lock: dict | None, manifest: dict) -> list[str]:
    """The domains (``domain/split``) whose text differs from the lock's record; [] when identical or no lock."""
    if not lock:
        return []
    out = []
    for domain, entry in manifest["domains"].items():
        recorded = lock.get("domains", {}).get(domain)
        if recorded is None:
            continue  # a domain the record does not know: nothing to compare against
        out += [f"{domain}/{split}" for split in ("train", "heldout") if recorded.get(split) != entry[split]["sha256"]]
    return out


def comparability_message(lock_file: Path, deviations: dict, differing: list[str], content_sha256: str,
                          recorded_sha256: str) -> str:
    """What a user must know when the built corpus is not the recorded one."""
    versions = "; ".join(f"{k} {v['used']} (recorded {v['recorded']})" for k, v in deviations.items())
    return (f"this corpus differs from the one recorded in {lock_file} "
            f"({', '.join(differing) if differing else 'same text'}"
            f"{'; package versions: ' + versions if versions else ''}). Its content_sha256 is {content_sha256[:16]}, "
            f"the recorded {recorded_sha256[:16]}: held-out numbers measured on it are NOT comparable with results "
            f"recorded on the other corpus (docs/RESULTS.md, model cards; each result names its corpus's hash). "
            f"Compare only runs evaluated on the same hash, or record this corpus with --update-lock.")
