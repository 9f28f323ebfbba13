"""Preprocessing: real text -> binaries -> tokens, every input kind, worker-count invariance, tokenizer checks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megadrp.data import IndexedDataset, IndexedDatasetError, check_tokenizer_matches, load_domain_datasets
from megadrp.data import preprocess as pre
from megadrp.data.readers import InputError
from megadrp.data.tokenizer import load_tokenizer
from tests.helpers.text_data import build_tiny_tokenizer, real_texts, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(str(tok_dir))


def decode(tok_dir, ids):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir)).decode(ids.tolist())


def test_round_trip_text_files(tmp_path, tok_dir, tok):
    texts = real_texts(12)
    for i, t in enumerate(texts):
        (tmp_path / "in" / "sub").mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / ("sub" if i % 2 else "") / f"doc{i:02d}.txt").write_text(t, encoding="utf-8")
    assert pre.main(["--input", str(tmp_path / "in"), "--output-prefix", str(tmp_path / "out" / "x"),
                     "--tokenizer", str(tok_dir), "--append-eod", "--no-progress"]) == 0
    ds = IndexedDataset(tmp_path / "out" / "x")
    assert len(ds) == 12 and ds.dtype == np.uint16
    # Sorted walk: doc00, doc02, ... at the top, then sub/doc01, sub/doc03, ...
    order = [i for i in range(12) if i % 2 == 0] + [i for i in range(12) if i % 2]
    for j, i in enumerate(order):
        assert ds[j][-1] == tok.eod_id
        assert decode(tok_dir, ds[j][:-1]) == texts[i]
    check_tokenizer_matches(ds, str(tok_dir))


def test_workers_give_identical_bytes(tmp_path, tok_dir, monkeypatch):
    monkeypatch.setattr(pre, "BATCH_BYTES", 3000)  # many small tasks, so that workers interleave
    write_jsonl(tmp_path / "a.jsonl", real_texts(60))
    outs = []
    for workers in (1, 2):
        prefix = tmp_path / f"w{workers}"
        pre.preprocess([str(tmp_path / "a.jsonl")], str(prefix), str(tok_dir), workers=workers, append_eod=True,
                       progress=False)
        outs.append([Path(f"{prefix}.{e}").read_bytes() for e in ("bin", "idx")])
    assert outs[0] == outs[1] and len(outs[0][0]) > 10000


def test_jsonl_parquet_and_hf_dataset_agree(tmp_path, tok_dir):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = real_texts(20)
    write_jsonl(tmp_path / "j.jsonl", texts, key="content")
    pq.write_table(pa.table({"content": texts, "n": list(range(20))}), tmp_path / "p.parquet")
    datasets.Dataset.from_dict({"content": texts}).save_to_disk(str(tmp_path / "hf"))
    bins = []
    for name in ("j.jsonl", "p.parquet", "hf"):
        pre.preprocess([str(tmp_path / name)], str(tmp_path / f"o_{name}"), str(tok_dir), json_keys=["content"],
                       progress=False)
        bins.append(Path(f"{tmp_path / f'o_{name}'}.bin").read_bytes())
        assert len(IndexedDataset(tmp_path / f"o_{name}")) == 20
    assert bins[0] == bins[1] == bins[2]


def test_per_domain_and_multiple_keys(tmp_path, tok_dir):
    texts = real_texts(30)
    write_jsonl(tmp_path / "corpus" / "code.jsonl", texts[:10])
    write_jsonl(tmp_path / "corpus" / "legal.jsonl", texts[10:30])
    pre.preprocess([str(tmp_path / "corpus")], str(tmp_path / "bin" / "train"), str(tok_dir), append_eod=True,
                   per_domain=True, progress=False)
    ds = load_domain_datasets(tmp_path / "bin" / "train", ["code", "legal"], tokenizer=str(tok_dir))
    assert [len(d) for d in ds.values()] == [10, 20]
    with open(tmp_path / "two.jsonl", "w") as f:
        for t in texts[:5]:
            f.write(json.dumps({"title": t[:20], "body": t}) + "\n")
    out = pre.preprocess([str(tmp_path / "two.jsonl")], str(tmp_path / "k"), str(tok_dir),
                         json_keys=["title", "body"], progress=False)
    assert sorted(out) == [f"{tmp_path / 'k'}_body", f"{tmp_path / 'k'}_title"]
    assert IndexedDataset(f"{tmp_path / 'k'}_title").num_tokens < IndexedDataset(f"{tmp_path / 'k'}_body").num_tokens


def test_missing_domain_files_are_listed(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing 4 data file\(s\).*train_math\.bin.*train_math\.idx.*"
                                                r"train_code\.idx.*megadrp preprocess"):
        load_domain_datasets(tmp_path / "train", ["math", "code"])


def test_sentencepiece_model_file(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(line for t in real_texts(60) for line in t.splitlines() if line.strip()))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=300,
                                   model_type="bpe", minloglevel=2)
    (tmp_path / "in.txt").write_text("def main(argv):\n    return 0\n")
    pre.preprocess([str(tmp_path / "in.txt")], str(tmp_path / "o"), str(tmp_path / "sp.model"), append_eod=True,
                   progress=False)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    ds = IndexedDataset(tmp_path / "o")
    assert ds[0].tolist() == sp.encode("def main(argv):\n    return 0\n") + [sp.eos_id()]


def test_tokenizer_mismatch_is_named(tmp_path, tok_dir):
    write_jsonl(tmp_path / "a.jsonl", real_texts(5))
    pre.preprocess([str(tmp_path / "a.jsonl")], str(tmp_path / "o"), str(tok_dir), progress=False)
    other = build_tiny_tokenizer(tmp_path / "other", vocab_size=300)
    ds = IndexedDataset(tmp_path / "o")
    with pytest.raises(IndexedDatasetError, match=r"o\.bin: tokenised with 'tiny' \(vocabulary 400\), but the "
                                                  r"model's tokenizer is 'other' \(vocabulary 300\).*--tokenizer"):
        check_tokenizer_matches(ds, str(other))
    # Without the sidecar (binaries from another tool), the id range still catches it.
    Path(f"{tmp_path / 'o'}.json").unlink()
    with pytest.raises(IndexedDatasetError, match=r"token id \d+ does not exist in tokenizer 'other'"):
        check_tokenizer_matches(IndexedDataset(tmp_path / "o"), str(other))


def test_bad_inputs_name_file_and_fix(tmp_path, tok_dir):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: no field 'text' \(fields: \['txt'\]\); pass --json-keys"):
        pre.preprocess([str(tmp_path / "bad.jsonl")], str(tmp_path / "o"), str(tok_dir), progress=False)
    assert not Path(f"{tmp_path / 'o'}.bin").exists()
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"\n')
    with pytest.raises(InputError, match=r"broken\.jsonl:1: invalid JSON"):
        pre.preprocess([str(tmp_path / "broken.jsonl")], str(tmp_path / "o"), str(tok_dir), progress=False)
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt: not UTF-8 text"):
        pre.preprocess([str(tmp_path / "latin1.txt")], str(tmp_path / "o"), str(tok_dir), progress=False)
    with pytest.raises(InputError, match=r"nope: no such file or folder"):
        pre.preprocess([str(tmp_path / "nope")], str(tmp_path / "o"), str(tok_dir), progress=False)


def test_cli_entry_point(tmp_path, tok_dir):
    write_jsonl(tmp_path / "a.jsonl", real_texts(4))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "megadrp", "preprocess", "--input", str(tmp_path / "a.jsonl"), "--output-prefix",
           str(tmp_path / "o"), "--tokenizer", str(tok_dir), "--append-eod", "--workers", "2"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "4 documents" in run.stdout and len(IndexedDataset(tmp_path / "o")) == 4
    before = Path(f"{tmp_path / 'o'}.bin").read_bytes()
    plain = [a for a in cmd if a != "--append-eod"]  # other bytes at the same prefix
    again = subprocess.run(plain, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "o.bin" in again.stderr and "already exist: pass --overwrite" in again.stderr
    assert Path(f"{tmp_path / 'o'}.bin").read_bytes() == before  # refused before anything was written
    again = subprocess.run(plain + ["--overwrite"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert Path(f"{tmp_path / 'o'}.bin").read_bytes() != before and len(IndexedDataset(tmp_path / "o")) == 4
    bad = subprocess.run(cmd[:-2] + ["--workers", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--workers must be >= 1" in bad.stderr
