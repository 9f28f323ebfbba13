"""The recorded corpus (SOURCES.lock.json): pins, the comparability warning, and the corpus hash on every result."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from experiments.corpus_build import build_corpus
from experiments.corpus_fetch import fetch_debian
from experiments.corpus_lock import lock_path, read_lock
from megadrp.data.corpus_manifest import corpus_identity
from megadrp.eval_results import markdown_report, protocol_line
from tests.helpers.text_data import real_texts

SIZES = dict(max_bytes=10000, heldout_bytes=2000, max_document_bytes=4000)


def _sources(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for i, t in enumerate(real_texts(30)):
        folder = src / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.txt").write_text(t)
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"domains:\n  alpha:\n    - path: {src / 'a'}\n      format: text\n"
                       f"  beta:\n    - path: {src / 'b'}\n      format: text\n")
    return sources


def test_lock_records_a_build_and_a_changed_corpus_is_named(tmp_path, caplog):
    sources = _sources(tmp_path)
    first = build_corpus(tmp_path / "c1", sources, tmp_path / "cache", **SIZES, update_lock=True)
    lock = read_lock(sources)
    assert lock_path(sources) == tmp_path / "sources.lock.json"
    assert lock["content_sha256"] == first["content_sha256"]
    assert lock["domains"]["alpha"]["heldout"] == first["domains"]["alpha"]["heldout"]["sha256"]

    with caplog.at_level(logging.INFO, logger="megadrp.corpus"):  # same sources: the recorded corpus, said so
        again = build_corpus(tmp_path / "c2", sources, tmp_path / "cache", **SIZES)
    assert again["content_sha256"] == first["content_sha256"]
    assert "is the recorded one" in caplog.text and "WARNING" not in caplog.text

    # A source changes (as Debian's libpython3.11 did between deb12u8 and deb12u9): one domain's text differs.
    for changed in (tmp_path / "src" / "b").glob("*.txt"):
        changed.write_text(changed.read_text() + "\nA paragraph the recorded build never saw.\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="megadrp.corpus"):
        third = build_corpus(tmp_path / "c3", sources, tmp_path / "cache", **SIZES)
    assert third["content_sha256"] != first["content_sha256"]
    warning = caplog.text
    assert "differs from the one recorded" in warning and "beta/" in warning and "alpha/" not in warning
    assert "NOT comparable" in warning and third["content_sha256"][:16] in warning


def test_every_result_names_its_corpus_and_mixed_corpora_are_flagged(tmp_path):
    sources = _sources(tmp_path)
    manifest = build_corpus(tmp_path / "c", sources, tmp_path / "cache", **SIZES)
    identity = corpus_identity(tmp_path / "c")
    assert identity == {"content_sha256": manifest["content_sha256"]}
    # A folder without a manifest (a user's own held-out files) is identified by those files.
    shutil.copytree(tmp_path / "c" / "heldout", tmp_path / "user" / "heldout")
    user = corpus_identity(tmp_path / "user")
    assert set(user) == {"heldout_sha256"} and len(user["heldout_sha256"]) == 64

    result = {"domains": {"alpha": {"bits_per_byte": 1.0, "loss": 2.0, "perplexity": 7.4}},
              "average": {"bits_per_byte": 1.0, "loss": 2.0, "perplexity": 7.4},
              "worst": {"domain": "alpha", "bits_per_byte": 1.0, "loss": 2.0, "perplexity": 7.4},
              "protocol": {"seq_length": 8}}
    same = {"a": {**result, "corpus": identity}, "b": {**result, "corpus": identity}}
    assert manifest["content_sha256"][:16] in protocol_line(same)
    assert "WARNING" not in markdown_report(same)
    mixed = {"a": {**result, "corpus": identity}, "b": {**result, "corpus": user}}
    assert "different corpora" in protocol_line(mixed) and "not comparable" in markdown_report(mixed)


@pytest.mark.slow
def test_debian_pin_that_the_archive_no_longer_serves_falls_back_loudly(tmp_path, caplog):
    """Real apt-get: a recorded version the archive does not have gives the current one, with a warning."""
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get")
    with caplog.at_level(logging.WARNING):
        got = fetch_debian(["base-files"], tmp_path, pins={"base-files": "0.0-never-released"})
    root, version = got["base-files"]
    assert version != "0.0-never-released" and (root / "usr" / "share" / "common-licenses").is_dir()
    assert "no longer served" in caplog.text
    # Asking for the version just fetched is served from the cache without a download.
    again = fetch_debian(["base-files"], tmp_path, pins={"base-files": version})
    assert again["base-files"][1] == version
    listed = subprocess.run(["dpkg-deb", "-f", str(next((tmp_path / "debs").glob("*.deb"))), "Version"],
                            capture_output=True, text=True).stdout.strip()
    assert listed == version
    assert json.dumps(version)
