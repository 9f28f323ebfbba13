"""`megadrp eval` writes JSON and markdown for one or several models; lm-eval's absence is a message, not a failure."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megadrp.eval import lm_eval_adapter
from megadrp.eval.cli import main
from tests.helpers.model_folders import TEXTS, build_model_folder, write_corpus


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    build_model_folder(root / "source", seed=0, num_layers=2)
    build_model_folder(root / "pruned", seed=3, num_layers=1)
    write_corpus(root / "corpus", {**TEXTS, "empty": []})
    return root


def test_compare_writes_json_and_markdown(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lm_eval_adapter, "lm_eval_available", lambda: False)
    out, md = tmp_path / "eval.json", tmp_path / "eval.md"
    rc = main(["--model", f"source={setup / 'source'}", "--compare", f"pruned={setup / 'pruned'}",
               "--corpus", str(setup / "corpus"), "--seq-length", "16", "--max-windows", "2", "--batch-size", "2",
               "--device", "cpu", "--output", str(out), "--markdown", str(md), "--tasks", "hellaswag,arc_easy"])
    assert rc == 0
    data = json.loads(out.read_text())["models"]
    assert list(data) == ["source", "pruned"]
    for res in data.values():
        assert set(res["domains"]) == {"prose", "code"} and "empty" in res["skipped"]
        assert all(r["windows"] == 2 and r["tokens"] == 30 for r in res["domains"].values())
        assert "pip install '.[eval]'" in res["tasks"]["error"]
    table = md.read_text()
    assert "| domain (bits/byte) | source | pruned |" in table
    src_bpb = data["source"]["domains"]["code"]["bits_per_byte"]
    assert f"| code | {src_bpb:.4f} |" in table
    assert "domain `empty` skipped" in table and "lm-eval is not installed" in table
    assert "lm-eval is not installed" in capsys.readouterr().err


def test_cli_subprocess_and_bad_input(setup, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "one.json"
    proc = subprocess.run([sys.executable, "-m", "megadrp", "eval", "--model", str(setup / "source"), "--corpus",
                           str(setup / "corpus"), "--domains", "code", "--seq-length", "16", "--max-windows", "1",
                           "--output", str(out)], env=env, cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())["models"]["source"]
    assert list(res["domains"]) == ["code"] and res["worst"]["domain"] == "code"
    assert main(["--model", str(setup / "source"), "--corpus", str(setup / "corpus"), "--domains", "legal"]) == 2
    assert main(["--model", str(tmp_path / "missing"), "--corpus", str(setup / "corpus")]) == 2


def test_text_files_are_scored_as_rows_of_their_own(setup, tmp_path):
    """`--text`: whole files (text no domain was tuned on), the same numbers as a corpus holding them."""
    prose, code = tmp_path / "prose.txt", tmp_path / "snippet.py"
    prose.write_text(" ".join(TEXTS["prose"]))
    code.write_text("\n".join(TEXTS["code"]))
    out = tmp_path / "text.json"
    assert main(["--model", str(setup / "source"), "--text", f"essay={prose}", str(code), "--seq-length", "16",
                 "--max-windows", "0", "--device", "cpu", "--output", str(out)]) == 0
    res = json.loads(out.read_text())["models"]["source"]
    assert set(res["domains"]) == {"essay", "snippet.py"}
    assert res["worst"]["bits_per_byte"] == max(r["bits_per_byte"] for r in res["domains"].values())
    size = len(prose.read_bytes())
    assert 0.8 * size < res["domains"]["essay"]["bytes"] <= size  # the bytes of the predicted tokens
    # the same file as a one-document corpus domain scores the same
    write_corpus(tmp_path / "one", {"essay": [prose.read_text()]})
    ref = tmp_path / "ref.json"
    assert main(["--model", str(setup / "source"), "--corpus", str(tmp_path / "one"), "--seq-length", "16",
                 "--max-windows", "0", "--device", "cpu", "--output", str(ref)]) == 0
    want = json.loads(ref.read_text())["models"]["source"]["domains"]["essay"]
    assert res["domains"]["essay"]["loss"] == pytest.approx(want["loss"], rel=1e-6)
    # a corpus and files together, or a missing file, are refused
    assert main(["--model", str(setup / "source"), "--text", str(prose), "--corpus", str(setup / "corpus")]) == 2
    assert main(["--model", str(setup / "source"), "--text", str(tmp_path / "nope.txt")]) == 2
