"""Documents from the inputs preprocessing accepts: text files, JSONL (plain or .gz), parquet, saved HF datasets.

A *source* is one file or one saved dataset; it yields documents as tuples of texts, one per ``--json-keys``
key (a plain text file is one document). Folders are walked in sorted order so that the output does not
depend on the file system.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


class InputError(ValueError):
    """An input that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # "text" | "jsonl" | "parquet" | "hf"

    @property
    def stem(self) -> str:
        """Domain name of the source in --per-domain mode: the file name up to its first dot."""
        return self.path.name.split(".")[0]


def is_saved_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or
                              ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()))


def _kind_of_file(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "text"


def expand_inputs(inputs: Sequence[str]) -> list[Source]:
    """Files and saved datasets named by ``inputs`` (folders walked recursively, sorted, hidden files skipped)."""
    sources: list[Source] = []
    for item in inputs:
        path = Path(item)
        if is_saved_hf_dataset(path):
            sources.append(Source(path, "hf"))
        elif path.is_dir():
            found = [p for p in sorted(path.rglob("*"))
                     if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)]
            if not found:
                raise InputError(f"{path}: folder holds no files to preprocess")
            sources.extend(Source(p, _kind_of_file(p)) for p in found)
        elif path.is_file():
            sources.append(Source(path, _kind_of_file(path)))
        else:
            raise InputError(f"{path}: no such file or folder; check --input")
    return sources


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); convert it to UTF-8 or "
                         f"leave it out of --input") from err


def _field(record, key: str, where: str) -> str:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
    if key not in record:
        raise InputError(f"{where}: no field {key!r} (fields: {sorted(record)}); pass --json-keys with the "
                         f"field that holds the text")
    value = record[key]
    if not isinstance(value, str):
        raise InputError(f"{where}: field {key!r} is {type(value).__name__}, not a string")
    return value


def _jsonl_documents(path: Path, keys: Sequence[str]) -> Iterator[tuple[str, ...]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}:{lineno}: invalid JSON ({err.msg}); each line must be one JSON object")
                yield tuple(_field(record, k, f"{path}:{lineno}") for k in keys)
    except UnicodeDecodeError as err:
        # (the text layer decodes ahead in blocks, so no line number would be right)
        raise InputError(f"{path}: not UTF-8 text ({err.reason}); convert it to UTF-8, e.g. with "
                         f"iconv -f latin1 -t utf-8") from None


def _check_columns(where: Path, available: Sequence[str], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in available]
    if missing:
        raise InputError(f"{where}: no column {missing[0]!r} (columns: {list(available)}); pass --json-keys with "
                         f"the column that holds the text")


def _parquet_documents(path: Path, keys: Sequence[str]) -> Iterator[tuple[str, ...]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    _check_columns(path, pf.schema_arrow.names, keys)
    for batch in pf.iter_batches(columns=list(keys), batch_size=1024):
        columns = [batch.column(k).to_pylist() for k in keys]
        yield from zip(*columns)


def _hf_documents(path: Path, keys: Sequence[str]) -> Iterator[tuple[str, ...]]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        raise InputError(f"{path}: a saved DatasetDict with splits {list(ds)}; pass one split's folder, e.g. "
                         f"--input {path / list(ds)[0]}")
    _check_columns(path, ds.column_names, keys)
    for batch in ds.select_columns(list(keys)).iter(batch_size=1024):
        yield from zip(*(batch[k] for k in keys))


def iter_documents(source: Source, keys: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """Documents of one source as tuples of texts in the order of ``keys``."""
    if source.kind == "text":
        if len(keys) > 1:
            raise InputError(f"{source.path}: a plain text file has no fields, but --json-keys names {len(keys)}; "
                             f"use one key, or JSONL/parquet input")
        yield (_read_text(source.path),)
    elif source.kind == "jsonl":
        yield from _jsonl_documents(source.path, keys)
    elif source.kind == "parquet":
        yield from _parquet_documents(source.path, keys)
    elif source.kind == "hf":
        yield from _hf_documents(source.path, keys)
    else:
        raise InputError(f"{source.path}: unknown input kind {source.kind!r}")
