"""Read the held-out split of a corpus: ``CORPUS/heldout/DOMAIN.jsonl``, one document per line, field ``text``."""
from __future__ import annotations

import json
from pathlib import Path


def available_domains(corpus_dir) -> list[str]:
    """Domain names that have a held-out file, sorted."""
    heldout = Path(corpus_dir) / "heldout"
    return sorted(p.stem for p in heldout.glob("*.jsonl"))


def _manifest_domains(corpus_dir) -> list[str]:
    """The domains CORPUS/manifest.json lists (tools/build_corpus.py writes it), or [] without one."""
    path = Path(corpus_dir) / "manifest.json"
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text(encoding="utf-8")).get("domains") or [])
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{path} is not a valid corpus manifest ({err})") from None


def _truncate_utf8(text: str, max_bytes: int) -> str:
    # Cut at a character boundary so the kept text is valid UTF-8 and its byte count is <= max_bytes.
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def read_documents(path, max_bytes: int | None = None) -> list[str]:
    """The non-empty ``text`` fields of a JSONL file, stopping once ``max_bytes`` UTF-8 bytes are read."""
    try:
        return _read_documents(path, max_bytes)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start} of a line); convert it to "
                         f"UTF-8") from None


def _read_documents(path, max_bytes: int | None) -> list[str]:
    docs, used = [], 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with a 'text' field ({err})") from None
            if not text:
                continue
            if max_bytes is not None:
                room = max_bytes - used
                if room <= 0:
                    break
                text = _truncate_utf8(text, room)
                if not text:
                    break
            docs.append(text)
            used += len(text.encode("utf-8"))
    return docs


def load_heldout(corpus_dir, domains=None, max_bytes: int | None = None) -> dict[str, list[str]]:
    """Held-out documents per domain, in the order asked (default: every domain of ``corpus_dir/heldout``).

    ``max_bytes`` caps the UTF-8 bytes read per domain (documents in file order, the last one cut).
    A domain asked for but absent raises ``FileNotFoundError`` naming the domains that exist; a domain
    whose file holds no text maps to ``[]`` (``evaluate_domains`` reports it as skipped).
    """
    heldout = Path(corpus_dir) / "heldout"
    if not heldout.is_dir():
        raise FileNotFoundError(f"no held-out split: {heldout} does not exist (expected CORPUS/heldout/DOMAIN.jsonl, "
                                "as written by tools/build_corpus.py)")
    present = available_domains(corpus_dir)
    if domains is None:
        listed = _manifest_domains(corpus_dir)
        lost = [d for d in listed if d not in present]
        if lost:  # an average over the rest would read as the corpus's
            raise FileNotFoundError(f"{Path(corpus_dir) / 'manifest.json'} lists domain(s) {lost}, but {heldout} "
                                    f"has no {', '.join(d + '.jsonl' for d in lost)}; restore it "
                                    f"(tools/build_corpus.py) or name the domains to score with --domains")
        domains = present
    missing = [d for d in domains if d not in present]
    if missing:
        raise FileNotFoundError(f"held-out domain(s) {missing} not found in {heldout}; available: {present}")
    if not domains:
        raise FileNotFoundError(f"{heldout} holds no DOMAIN.jsonl file")
    return {d: read_documents(heldout / f"{d}.jsonl", max_bytes) for d in domains}
