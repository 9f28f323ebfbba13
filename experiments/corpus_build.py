"""Builds the plain-text multi-domain corpus from a declarative source list (``make corpus`` runs it).

    python -m experiments.corpus_build --output .cache/corpus [--sources configs/corpus_sources.yaml]  # repo root

Output: ``OUT/train/DOMAIN.jsonl`` and ``OUT/heldout/DOMAIN.jsonl`` (one ``{"text": ...}`` per line) and
``OUT/manifest.json`` (bytes, documents, sha256 per domain and split, package versions, the man renderer).

Split: a domain's documents (deduplicated; documents over ``--max-document-bytes`` cut at paragraph breaks)
are ordered by the sha256 of their text; the first ones go to held-out until ``--heldout-bytes``, the next
ones to train until ``--max-bytes``. The split is therefore fixed by the sources and the two sizes, and the
capped train set is a hash-random subset, not the first files of a package.

Caching: unpacked packages and each source's extracted documents live in ``--cache``; a second run with the
same sources and sizes finds the manifest up to date and returns at once.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from experiments.corpus_fetch import fetch_debian, fetch_pypi
from experiments.corpus_formats import FORMAT_FUNCTIONS, man_renderer
from experiments.corpus_lock import (
    comparability_message,
    content_deviations,
    debian_pins,
    lock_path,
    read_lock,
    version_deviations,
    write_lock,
)
from experiments.corpus_sources import SourceSpec, load_sources
from megadrp.data.corpus_manifest import content_sha256

log = logging.getLogger("megadrp.corpus")
BUILDER_VERSION = 1
DEFAULT_SOURCES = Path(__file__).resolve().parents[1] / "configs" / "corpus_sources.yaml"


def _match(rel: str, include, exclude) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in include) and not any(fnmatch.fnmatchcase(rel, p) for p in exclude)


def _files(root: Path, spec: SourceSpec) -> list[Path]:
    found = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if not p.is_symlink() and _match(rel, spec.include, spec.exclude):
                found.append(p)
    return sorted(found)


def _roots(spec: SourceSpec, cache: Path, versions: dict, pins: dict[str, str]) -> list[Path]:
    if spec.debian:
        got = fetch_debian(list(spec.debian), cache, pins)
        versions.update({f"debian:{k}": v for k, (_, v) in got.items()})
        return [root for root, _ in got.values()]
    if spec.pypi:
        root, version = fetch_pypi(spec.pypi, cache)
        versions[f"pypi:{spec.pypi.split('==')[0]}"] = version
        return [root]
    root = Path(spec.path)
    if not root.is_dir():
        raise FileNotFoundError(f"source path {spec.path!r} of domain {spec.domain!r} is not a folder")
    return [root]


def extract_source(spec: SourceSpec, cache: Path, versions: dict, pins: dict[str, str] | None = None) -> list[str]:
    """Documents of one source, from its cache file when present (keyed by the source AND its package versions)."""
    renderer = man_renderer() if spec.format == "man" else ""
    mine: dict[str, str] = {}
    roots = _roots(spec, cache, mine, pins or {})
    versions.update(mine)
    stamp = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:8] if mine else ""
    cached = cache / "documents" / (f"{spec.domain}-{spec.key()}{'-' + renderer if renderer else ''}"
                                    f"{'-' + stamp if stamp else ''}.jsonl")
    if cached.exists() and not spec.path:
        with open(cached, encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f]
    docs, matched = [], 0
    for root in roots:  # a source over several packages: the globs apply to each unpacked package
        files = _files(root, spec)
        matched += len(files)
        if files:
            docs.extend(FORMAT_FUNCTIONS[spec.format](files, root))
    if not matched:
        where = [str(r) for r in roots]
        raise FileNotFoundError(f"domain {spec.domain!r}, source {spec.origin}: no file under {where} "
                                f"matches include {list(spec.include)} (exclude {list(spec.exclude)}); fix the globs")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    os.replace(tmp, cached)
    return docs


def split_long(text: str, max_bytes: int) -> list[str]:
    """Cut a document at paragraph (else line) breaks into pieces of at most about ``max_bytes``."""
    if len(text.encode("utf-8")) <= max_bytes:
        return [text]
    pieces, current, size = [], [], 0
    for para in text.split("\n\n"):
        n = len(para.encode("utf-8")) + 2
        if current and size + n > max_bytes:
            pieces.append("\n\n".join(current))
            current, size = [], 0
        current.append(para)
        size += n
    if current:
        pieces.append("\n\n".join(current))
    return [p.strip("\n") + "\n" for p in pieces if p.strip()]


def split_domain(docs: list[str], heldout_bytes: int, max_bytes: int, max_document_bytes: int):
    """(train, heldout, available bytes): dedup, cut, order by sha256 of the text, fill held-out then train."""
    unique = {}
    for d in docs:
        for piece in split_long(d, max_document_bytes):
            if piece.strip():
                unique.setdefault(hashlib.sha256(piece.encode("utf-8")).hexdigest(), piece)
    ordered = [unique[h] for h in sorted(unique)]
    available = sum(len(d.encode("utf-8")) for d in ordered)
    train, heldout, h_bytes, t_bytes = [], [], 0, 0
    for d in ordered:
        n = len(d.encode("utf-8"))
        if h_bytes < heldout_bytes:
            heldout.append(d)
            h_bytes += n
        elif t_bytes + n <= max_bytes or not train:
            train.append(d)
            t_bytes += n
    return train, heldout, available


def _write_jsonl(path: Path, docs: list[str]) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return {"documents": len(docs), "bytes": sum(len(d.encode("utf-8")) for d in docs),
            "file_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def build_corpus(output: Path, sources_file: Path, cache: Path, max_bytes: int, heldout_bytes: int,
                 max_document_bytes: int, domains: list[str] | None = None, force: bool = False,
                 update_lock: bool = False) -> dict:
    """Build (or find up to date) the corpus in ``output``; see the module docstring and corpus_lock.py."""
    sources = load_sources(sources_file)
    lock = None if update_lock else read_lock(sources_file)
    pins = debian_pins(lock)
    if domains:
        unknown = set(domains) - set(sources)
        if unknown:
            raise ValueError(f"--domains {sorted(unknown)} not in {sources_file} (it has {list(sources)})")
        sources = {d: sources[d] for d in domains}
    recipe = {"builder_version": BUILDER_VERSION, "sources": {d: [s.key() for s in ss] for d, ss in sources.items()},
              "max_bytes_per_domain": max_bytes, "heldout_bytes_per_domain": heldout_bytes,
              "max_document_bytes": max_document_bytes, "man_renderer": man_renderer()}
    recipe_hash = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    manifest_path = output / "manifest.json"
    if manifest_path.exists() and not force:
        old = json.loads(manifest_path.read_text())
        files_ok = all((output / split / f"{d}.jsonl").exists() for d in sources for split in ("train", "heldout"))
        if old.get("recipe_sha256") == recipe_hash and files_ok:
            log.info("corpus in %s is up to date (same sources and sizes)", output)
            _report_against_lock(sources_file, lock, old)
            return old
    versions: dict[str, str] = {}
    manifest = {"format": "megadrp-corpus", "version": 1, "recipe_sha256": recipe_hash, **recipe,
                "sources_file": sources_file.name, "packages": versions, "domains": {}}
    for domain, specs in sources.items():
        t0 = time.perf_counter()
        docs = []
        for spec in specs:
            docs.extend(extract_source(spec, cache, versions, pins))
        train, heldout, available = split_domain(docs, heldout_bytes, max_bytes, max_document_bytes)
        entry = {"sources": [s.origin for s in specs], "available_bytes": available,
                 "train": _write_jsonl(output / "train" / f"{domain}.jsonl", train),
                 "heldout": _write_jsonl(output / "heldout" / f"{domain}.jsonl", heldout)}
        manifest["domains"][domain] = entry
        log.info("%-12s train %5.2f MB (%d docs)  heldout %4.0f KB (%d docs)  of %5.1f MB available  [%.1f s]",
                 domain, entry["train"]["bytes"] / 1e6, entry["train"]["documents"], entry["heldout"]["bytes"] / 1e3,
                 entry["heldout"]["documents"], available / 1e6, time.perf_counter() - t0)
    manifest["packages"] = dict(sorted(versions.items()))
    manifest["content_sha256"] = content_sha256(manifest["domains"])
    manifest["version_deviations"] = version_deviations(lock, manifest["packages"])
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, manifest_path)  # written last: its presence means the corpus is complete
    if update_lock:
        log.info("recorded this corpus (content sha256 %s) in %s", manifest["content_sha256"][:16],
                 write_lock(sources_file, manifest))
    _report_against_lock(sources_file, lock, manifest)
    return manifest


def _report_against_lock(sources_file: Path, lock: dict | None, manifest: dict) -> None:
    """Say loudly when the corpus is not the recorded one, and what that does to comparability."""
    if lock is None:
        return
    deviations = version_deviations(lock, manifest.get("packages", {}))
    differing = content_deviations(lock, manifest)
    if deviations or differing:
        log.warning("WARNING: %s", comparability_message(lock_path(sources_file), deviations, differing,
                                                          manifest["content_sha256"], lock["content_sha256"]))
    else:
        log.info("the corpus is the recorded one (%s): content sha256 %s", lock_path(sources_file).name,
                 manifest["content_sha256"][:16])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.corpus_build", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, type=Path, help="corpus folder (train/, heldout/, manifest.json)")
    p.add_argument("--sources", type=Path, default=DEFAULT_SOURCES, help="declarative source list (YAML)")
    p.add_argument("--cache", type=Path, default=Path(".cache/corpus_src"),
                   help="downloaded packages and extracted documents (default .cache/corpus_src)")
    p.add_argument("--max-bytes", type=int, default=4_000_000, help="cap on each domain's train text (bytes)")
    p.add_argument("--heldout-bytes", type=int, default=300_000, help="held-out text per domain (bytes)")
    p.add_argument("--max-document-bytes", type=int, default=16_000, help="longer documents are cut at paragraphs")
    p.add_argument("--domains", nargs="+", help="build only these domains of the source list")
    p.add_argument("--force", action="store_true", help="rebuild even when the manifest is up to date")
    p.add_argument("--update-lock", action="store_true",
                   help="build from the newest package versions and record them and the result as SOURCES.lock.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[corpus] %(message)s")
    t0 = time.perf_counter()
    try:
        build_corpus(args.output, args.sources, args.cache, args.max_bytes, args.heldout_bytes,
                     args.max_document_bytes, args.domains, args.force, args.update_lock)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"build_corpus: {err}", file=sys.stderr)
        return 2
    log.info("done in %.1f s: %s", time.perf_counter() - t0, args.output / "manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
