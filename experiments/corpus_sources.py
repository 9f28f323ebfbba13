"""The declarative source list of the corpus builder (``configs/corpus_sources.yaml``): parsed and checked.

A source names where its files come from (Debian packages, a PyPI distribution or a local folder), which
files (include/exclude globs), and the format that turns a file into documents. Users add domains or sources
by editing the YAML; :func:`load_sources` rejects a malformed entry with the file, the entry and the fix.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

FORMATS = ("text", "license", "man", "html", "fortune", "bible", "rdata_austen")


@dataclass(frozen=True)
class SourceSpec:
    domain: str
    format: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    debian: tuple[str, ...] = ()
    pypi: str = ""
    path: str = ""

    @property
    def origin(self) -> str:
        if self.debian:
            return "debian:" + ",".join(self.debian)
        return f"pypi:{self.pypi}" if self.pypi else f"path:{self.path}"

    def key(self) -> str:
        """Stable id of this source's content recipe (names its cache file)."""
        blob = json.dumps(asdict(self), sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_sources(path: str | Path) -> dict[str, list[SourceSpec]]:
    """``{domain: [SourceSpec, ...]}`` from a YAML file, in file order."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: source list not found; pass --sources configs/corpus_sources.yaml or "
                                f"your own list") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("domains"), dict) or not raw["domains"]:
        raise ValueError(f"{path}: expected a top-level 'domains:' mapping of domain name -> list of sources")
    out: dict[str, list[SourceSpec]] = {}
    for domain, entries in raw["domains"].items():
        where = f"{path}: domain {domain!r}"
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{where}: expected a non-empty list of sources")
        out[str(domain)] = []
        for i, e in enumerate(entries):
            w = f"{where}, source {i + 1}"
            if not isinstance(e, dict):
                raise ValueError(f"{w}: expected a mapping with debian/pypi/path, include and format")
            origins = [k for k in ("debian", "pypi", "path") if e.get(k)]
            if len(origins) != 1:
                raise ValueError(f"{w}: name exactly one of debian, pypi, path (found {origins or 'none'})")
            if e.get("format") not in FORMATS:
                raise ValueError(f"{w}: format {e.get('format')!r} is not one of {', '.join(FORMATS)}")
            if e.get("pypi") and "==" not in e["pypi"]:
                raise ValueError(f"{w}: pin the PyPI version, e.g. {e['pypi']}==X.Y.Z")
            unknown = set(e) - {"debian", "pypi", "path", "include", "exclude", "format"}
            if unknown:
                raise ValueError(f"{w}: unknown keys {sorted(unknown)}")
            include = e.get("include") or ["*"]
            debian = e.get("debian") or ()
            out[str(domain)].append(SourceSpec(
                domain=str(domain), format=e["format"], include=tuple(include), exclude=tuple(e.get("exclude") or ()),
                debian=tuple([debian] if isinstance(debian, str) else debian), pypi=e.get("pypi") or "",
                path=e.get("path") or ""))
    return out
