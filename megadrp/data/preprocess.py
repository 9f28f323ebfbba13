"""``megadrp preprocess``: text, JSONL, parquet, HF datasets -> Megatron binaries.

    megadrp preprocess --input FILE_OR_DIR... --output-prefix PREFIX --tokenizer DIR --append-eod --workers 2

writes ``PREFIX.bin``/``PREFIX.idx`` (one document per text file, JSONL line, parquet or dataset row) and the
sidecar ``PREFIX.json`` naming the tokenizer. ``--per-domain`` makes every input file its own domain
(``PREFIX_<file stem>``), e.g. ``--input CORPUS/train --per-domain`` gives one pair per corpus domain. With several
``--json-keys`` each key gets its own output ``PREFIX_<key>`` (Megatron does the same).

Workers encode batches of documents; the main process writes the results in input order, so the bytes do
not depend on ``--workers``.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from megadrp.data.indexed import IndexedDatasetWriter, best_token_dtype
from megadrp.data.meta import write_meta
from megadrp.data.readers import InputError, Source, expand_inputs, iter_documents
from megadrp.data.tokenizer import TextTokenizer, load_tokenizer

BATCH_BYTES = 1 << 20  # documents per task: about 1 MB of text amortises the inter-process hop

_worker: dict = {}


def _init_worker(tokenizer_spec: str, eod_id, append_eod: bool) -> None:
    # One worker = one core: the Rust tokenizer's own thread pool would fight the other workers.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker["tok"] = load_tokenizer(tokenizer_spec)
    _worker["eod"] = eod_id if append_eod else None


def _encode(batch: list[tuple[str, ...]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per key: (document lengths int64, concatenated ids int64) of the batch, EOD appended to non-empty docs."""
    tok, eod = _worker["tok"], _worker["eod"]
    out = []
    for k in range(len(batch[0])):
        ids = tok.encode_batch([doc[k] for doc in batch])
        if eod is not None:
            for seq in ids:
                if seq:
                    seq.append(eod)
        lengths = np.fromiter((len(s) for s in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        out.append((lengths, flat))
    return out


def _batches(sources: Sequence[Source], keys: Sequence[str]) -> Iterable[list[tuple[str, ...]]]:
    batch, size = [], 0
    for source in sources:
        for doc in iter_documents(source, keys):
            for k, text in zip(keys, doc):
                if not isinstance(text, str):
                    raise InputError(f"{source.path}: a document's {k!r} is {type(text).__name__}, not text")
            batch.append(doc)
            size += sum(len(t) for t in doc)
            if size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _ordered_results(batches, workers: int, init_args):
    """Encoded batches in input order; at most 2 tasks per worker in flight so memory stays bounded."""
    if workers <= 1:
        _init_worker(*init_args)
        for batch in batches:
            yield _encode(batch)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        pending = collections.deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def preprocess(inputs: Sequence[str], output_prefix: str, tokenizer: str | TextTokenizer, workers: int = 1,
               append_eod: bool = False, json_keys: Sequence[str] = ("text",), per_domain: bool = False,
               progress: bool | None = None, overwrite: bool = False) -> dict:
    """Tokenise ``inputs`` into binaries; returns ``{output prefix: {"documents": n, "tokens": n}}``.

    Binaries that exist already are refused before any work unless ``overwrite`` (a run may be training on
    them: replaced in place, its checkpoint's sampler positions would index other data)."""
    tok = load_tokenizer(tokenizer)
    if append_eod and tok.eod_id is None:
        raise ValueError(f"tokenizer {tok.name!r} has no end-of-document token (eos) for --append-eod")
    sources = expand_inputs(inputs)
    keys = list(json_keys)
    if per_domain:
        groups: dict[str, list[Source]] = {}
        for s in sources:
            if s.stem in groups:
                raise InputError(f"--per-domain: {groups[s.stem][0].path} and {s.path} both name domain "
                                 f"{s.stem!r}; give each domain one file")
            groups[s.stem] = [s]
        plan = [(f"{output_prefix}_{name}", srcs) for name, srcs in groups.items()]
    else:
        plan = [(output_prefix, sources)]
    outputs = [p for prefix, _ in plan for p in ([prefix] if len(keys) == 1 else [f"{prefix}_{k}" for k in keys])]
    existing = [str(f) for p in outputs for f in (Path(f"{p}.bin"), Path(f"{p}.idx"), Path(f"{p}.json")) if f.exists()]
    if existing and not overwrite:
        raise InputError(f"{', '.join(existing[:6])}{' ...' if len(existing) > 6 else ''} already exist: pass "
                         f"--overwrite to replace them (runs resumed on replaced binaries are refused: their "
                         f"checkpoints record what the data was), or choose another --output-prefix")
    dtype = best_token_dtype(tok.vocab_size)
    init_args = (tok.spec, tok.eod_id, append_eod)
    summary = {}
    from tqdm import tqdm

    for prefix, srcs in plan:
        prefixes = [prefix] if len(keys) == 1 else [f"{prefix}_{k}" for k in keys]
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        writers = [IndexedDatasetWriter(p, dtype) for p in prefixes]
        docs = 0
        bar = tqdm(desc=Path(prefix).name, unit="doc", disable=None if progress is None else not progress,
                   file=sys.stderr)
        try:
            for encoded in _ordered_results(_batches(srcs, keys), workers, init_args):
                for writer, (lengths, flat) in zip(writers, encoded):
                    ends = np.cumsum(lengths)
                    for a, b in zip(ends - lengths, ends):
                        writer.add_document(flat[a:b])
                docs += len(encoded[0][0])
                bar.update(len(encoded[0][0]))
        except BaseException:
            for w in writers:
                w.abort()
            raise
        finally:
            bar.close()
        if docs == 0 or not any(w.num_tokens for w in writers):
            for w in writers:
                w.abort()
            raise InputError(f"{', '.join(str(s.path) for s in srcs)}: no documents with text to tokenise "
                             f"({docs} documents, 0 tokens); nothing was written. Check --input and --json-keys")
        for p, w in zip(prefixes, writers):
            w.finalize()
            write_meta(p, tok.info(), documents=docs, tokens=w.num_tokens, dtype=str(dtype), append_eod=append_eod,
                       json_key=keys[prefixes.index(p)], inputs=[str(s.path) for s in srcs])
            summary[p] = {"documents": docs, "tokens": w.num_tokens}
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megadrp preprocess", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True,
                   help="text files, JSONL(.gz), parquet files, saved HF datasets, or folders of them")
    p.add_argument("--output-prefix", required=True, help="write PREFIX.bin / PREFIX.idx / PREFIX.json")
    p.add_argument("--tokenizer", required=True,
                   help="Hugging Face tokenizer folder (tokenizer.json or tokenizer.model), Hub name, or .model file")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="field(s) holding the text (default: text)")
    p.add_argument("--append-eod", action="store_true", help="append the tokenizer's eos id to every document")
    p.add_argument("--workers", type=int, default=1, help="tokenising processes (output is identical for any count)")
    p.add_argument("--per-domain", action="store_true",
                   help="each input file is one domain, written to PREFIX_<file stem>.bin/.idx")
    p.add_argument("--overwrite", action="store_true", help="replace binaries that exist at the output prefix")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print(f"megadrp preprocess: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.workers == 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    t0 = time.perf_counter()
    try:
        summary = preprocess(args.input, args.output_prefix, args.tokenizer, workers=args.workers,
                             append_eod=args.append_eod, json_keys=args.json_keys, per_domain=args.per_domain,
                             progress=False if args.no_progress else None, overwrite=args.overwrite)
    except (InputError, ValueError, FileNotFoundError) as err:
        print(f"megadrp preprocess: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    total = sum(v["tokens"] for v in summary.values())
    for prefix, v in summary.items():
        print(f"{prefix}: {v['documents']} documents, {v['tokens']} tokens")
    print(f"{total} tokens in {seconds:.1f} s ({total / max(seconds, 1e-9):,.0f} tokens/s, {args.workers} worker(s))")
    return 0
