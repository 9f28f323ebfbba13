"""A corpus folder's manifest (``CORPUS/manifest.json``, written by experiments/corpus_build.py) and its identity.

Evaluation results stamp the identity of the corpus they were measured on (``corpus_identity``), so numbers
from two corpora are never compared silently: ``content_sha256`` is a hash of every domain's train and
held-out text (the manifest's per-file sha256), the same for any two builds that produced the same text.
A corpus without a manifest (a user's own held-out folder) is identified by the hash of its held-out files.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def read_json_object(path: Path, what: str, fix: str) -> dict | None:
    """The JSON object in ``path``, None when there is no such file; a damaged one names ``what`` it is and ``fix``."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a valid {what} ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a valid {what} (expected a JSON object); {fix}")
    return data


def read_manifest(corpus_dir) -> dict | None:
    """The manifest of ``corpus_dir``, or None when it has none."""
    return read_json_object(Path(corpus_dir) / "manifest.json", "corpus manifest",
                            "rebuild it with `python -m experiments.corpus_build --force`")


def manifest_domains(corpus_dir) -> list[str]:
    """The domains the manifest lists, in its order, or [] without a manifest."""
    manifest = read_manifest(corpus_dir)
    return list((manifest or {}).get("domains") or [])


def content_sha256(domains: dict) -> str:
    """Hash of a manifest's ``domains`` entry: every domain's train and held-out file sha256, in sorted order."""
    blob = json.dumps({d: {s: e[s]["sha256"] for s in ("train", "heldout") if s in e} for d, e in domains.items()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def corpus_identity(corpus_dir) -> dict:
    """``{"content_sha256", "packages"?}`` of a built corpus, or ``{"heldout_sha256"}`` of a folder without one."""
    manifest = read_manifest(corpus_dir)
    if manifest is not None and manifest.get("domains"):
        out = {"content_sha256": manifest.get("content_sha256") or content_sha256(manifest["domains"])}
        if manifest.get("version_deviations"):
            out["version_deviations"] = manifest["version_deviations"]
        return out
    digest = hashlib.sha256()
    for path in sorted((Path(corpus_dir) / "heldout").glob("*.jsonl")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return {"heldout_sha256": digest.hexdigest()}


def identity_line(identity: dict | None) -> str:
    """One markdown line naming the corpus a table was measured on."""
    if not identity:
        return ""
    if "content_sha256" in identity:
        return f"Corpus: content sha256 `{identity['content_sha256'][:16]}` (compare only results with the same hash)."
    return f"Held-out files: sha256 `{identity['heldout_sha256'][:16]}` (compare only results with the same hash)."
