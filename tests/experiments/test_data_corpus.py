"""Corpus builder: declarative sources, formats, fixed held-out split, cache; the real corpus (slow)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.corpus_build import build_corpus, split_domain
from experiments.corpus_formats import fmt_fortune, html_to_text
from experiments.corpus_sources import load_sources
from experiments.roff import render_roff
from tests.helpers.text_data import real_texts

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ["code", "legal", "manuals", "literature", "math", "multilingual"]


def test_roff_fallback_renders_plain_text():
    page = ('.\\" comment\n.TH LS 1 2024 "GNU" "User Commands"\n.SH NAME\nls \\- list directory contents\n'
            '.SH SYNOPSIS\n.B ls\n[\\fIOPTION\\fR]... [\\fIFILE\\fR]...\n.PP\n\\fB\\-a\\fR, '
            '\\fB\\-\\-all\\fR\ndo not ignore entries starting with \\(aq.\\(aq\n')
    text = render_roff(page)
    assert text.splitlines()[0] == "LS(1)"
    assert "NAME\nls - list directory contents" in text
    assert "[OPTION]... [FILE]..." in text and "-a, --all" in text and "starting with '.'" in text
    assert "\\f" not in text and "comment" not in text


def test_html_and_fortune_formats(tmp_path):
    html = "<html><head><title>T</title><style>p{}</style></head><body><h1>Titel</h1><p>Ein &amp; zwei</p>" \
           "<script>x()</script><p>Drei</p></body></html>"
    assert html_to_text(html) == "Titel\n\nEin & zwei\n\nDrei\n"
    (tmp_path / "f").write_text("Erster Spruch.\n%\n\x1b[31mZweiter\x1b[0m\nSpruch.\n%\n")
    assert fmt_fortune([tmp_path / "f"], tmp_path) == ["Erster Spruch.\n", "Zweiter\nSpruch.\n"]


def test_split_is_fixed_by_hash_and_respects_sizes():
    docs = real_texts(40)
    train, heldout, available = split_domain(docs + docs[:5], heldout_bytes=3000, max_bytes=20000,
                                             max_document_bytes=2000)
    assert not set(train) & set(heldout)  # duplicates removed, no leak between splits
    assert 3000 <= sum(len(d.encode()) for d in heldout) < 3000 + 2100
    assert sum(len(d.encode()) for d in train) <= 20000
    assert all(len(d.encode()) <= 2100 for d in train + heldout)
    again = split_domain(list(reversed(docs)), heldout_bytes=3000, max_bytes=20000, max_document_bytes=2000)
    assert again[1] == heldout and again[0] == train  # input order does not matter


def test_build_from_local_sources_and_cache(tmp_path):
    src = tmp_path / "src"
    (src / "py").mkdir(parents=True)
    (src / "txt").mkdir()
    for i, t in enumerate(real_texts(30)):
        (src / ("py" if i % 2 else "txt") / f"f{i}.{'py' if i % 2 else 'txt'}").write_text(t)
    (src / "txt" / "x.LICENSE").write_text("---\nkey: mit\n---\nPermission is hereby granted.\n")
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        f"domains:\n"
        f"  code:\n    - path: {src / 'py'}\n      include: ['*.py']\n      format: text\n"
        f"  prose:\n    - path: {src / 'txt'}\n      include: ['*.txt']\n      format: text\n"
        f"    - path: {src / 'txt'}\n      include: ['*.LICENSE']\n      format: license\n")
    out = tmp_path / "corpus"
    m = build_corpus(out, sources, tmp_path / "cache", max_bytes=10000, heldout_bytes=2000, max_document_bytes=4000)
    assert set(m["domains"]) == {"code", "prose"}
    for d in ("code", "prose"):
        for split in ("train", "heldout"):
            lines = (out / split / f"{d}.jsonl").read_text().splitlines()
            assert len(lines) == m["domains"][d][split]["documents"] > 0
            assert all(json.loads(line)["text"] for line in lines)
    prose = [json.loads(line)["text"] for s in ("train", "heldout") for line in (out / s / "prose.jsonl").open()]
    assert "Permission is hereby granted.\n" in prose and not any("key: mit" in t for t in prose)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert build_corpus(out, sources, tmp_path / "cache", 10000, 2000, 4000) == m
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # up to date: nothing rewritten


def test_bad_source_list_is_named(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("domains:\n  code:\n    - pypi: licensedcode-data\n      format: text\n")
    with pytest.raises(ValueError, match=r"s\.yaml: domain 'code', source 1: pin the PyPI version"):
        load_sources(bad)
    bad.write_text("domains:\n  code:\n    - path: x\n      format: pdf\n")
    with pytest.raises(ValueError, match=r"format 'pdf' is not one of text, license"):
        load_sources(bad)


def test_shipped_source_list_names_the_six_domains():
    sources = load_sources(ROOT / "configs" / "corpus_sources.yaml")
    assert list(sources) == DOMAINS


@pytest.mark.slow
def test_real_corpus_builds_and_preprocesses(tmp_path):
    """Builds (or reuses) .cache/corpus from the real packages, then tokenises its held-out split with SmolLM2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    corpus = ROOT / ".cache" / "corpus"
    run = subprocess.run([sys.executable, "-m", "experiments.corpus_build", "--output", str(corpus)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert list(manifest["domains"]) == DOMAINS
    for d, entry in manifest["domains"].items():
        assert entry["train"]["bytes"] > 1_000_000 and entry["heldout"]["bytes"] >= 250_000, d
    model = ROOT / ".cache" / "models" / "smollm2-135m"
    if not (model / "tokenizer.json").exists():
        pytest.skip("SmolLM2 folder not built (make model)")
    from megadrp.data import DomainMixtureSampler, load_domain_datasets
    from megadrp.data.preprocess import preprocess

    preprocess([str(corpus / "heldout")], str(tmp_path / "heldout"), str(model), workers=2, append_eod=True,
               per_domain=True, progress=False)
    datasets = load_domain_datasets(tmp_path / "heldout", DOMAINS, tokenizer=str(model))
    sampler = DomainMixtureSampler(datasets, seq_length=256, micro_batch_size=6, seed=0, weights=[1 / 6] * 6)
    batch = sampler.next_batch()
    assert batch["tokens"].shape == (6, 257) and int(batch["tokens"].max()) < 49152
