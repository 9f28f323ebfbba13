"""`megadrp oneshot`: the Minitron-style one-shot cut on a tiny llama and tiny per-domain binaries.

The written folder must be the source with exactly the lowest-scoring units removed: its logits equal the source's
masked forward with those units' masks at 0, and every kept FFN channel outscores every removed one of its
layer. Calibration draws every domain equally. Bad input stops with exit code 2 and a message; an existing
folder is only replaced with --overwrite.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.train_runs import REPO, make_workspace, write_config  # noqa: E402

TARGET = {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 48}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oneshot")
    return {"tmp": tmp, **make_workspace(tmp)}


def _oneshot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megadrp", "oneshot", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                                       "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_oneshot_cuts_the_lowest_scoring_units_and_matches_the_masked_source(ws):
    from megadrp.model import load_pretrained

    tmp = ws["tmp"]
    config = write_config(tmp, ws, tmp / "cut", mode="cpt", pruning={"target": TARGET},
                          dress={"calibration_batches": 3})
    proc = _oneshot("--config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp / "cut" / "pruned"
    assert "recover it with `megadrp cpt" in proc.stdout
    for i in (1, 2, 3):  # the calibration's progress, batch by batch, with the time it took and will take
        assert f"calibration batch {i}/3, " in proc.stdout and " elapsed, eta " in proc.stdout
    hf = json.loads((out / "config.json").read_text())
    assert {k: hf[k] for k in TARGET} == TARGET and hf["hidden_size"] == 64 and hf["num_hidden_layers"] == 4
    record = json.loads((out / "oneshot_scores.json").read_text())
    assert record["calibration_tokens"] == 3 * 2 * 32 and sum(record["calibration_sequences"].values()) == 3 * 2
    scores = torch.tensor(record["scores"]["intermediate"])
    for layer, removed in enumerate(record["removed"]["intermediate"]):
        assert len(removed) == 128 - 48
        kept = sorted(set(range(128)) - set(removed))
        assert scores[layer, kept].min() > scores[layer, removed].max()
    assert [len(r) for r in record["removed"]["head"]] == [1] * 4

    # the cut computes what the source computes with the removed units masked to 0
    source, cut = load_pretrained(ws["model"]), load_pretrained(str(out))
    masks = {"intermediate": torch.ones(4, 128), "head": torch.ones(4, 2)}
    for layer in range(4):
        masks["intermediate"][layer, record["removed"]["intermediate"][layer]] = 0
        masks["head"][layer, record["removed"]["head"][layer]] = 0
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = source(ids, masks=masks)
        got = cut(ids)
    # the folder is bf16 (export.dtype): agreement to bf16's rounding of the weights
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    card = (out / "README.md").read_text()
    assert "one-shot structured pruning by activation importance" in card and "Checkpoint step" not in card


def test_oneshot_calibration_weights_every_domain_equally(ws):
    """A domain with 10x the tokens of the other still gives only half of the calibration sequences."""
    import numpy as np

    from megadrp.config import load_config
    from megadrp.data import IndexedDataset, IndexedDatasetWriter, load_domain_datasets, write_meta
    from megadrp.data.tokenizer import load_tokenizer
    from megadrp.methods.oneshot import calibration

    tmp = ws["tmp"]
    code = IndexedDataset(ws["prefix"] + "_code")
    with IndexedDatasetWriter(Path(ws["prefix"] + "_bigcode"), np.uint16) as w:
        for _ in range(10):
            for i in range(len(code)):
                w.add_document(np.asarray(code[i]).tolist())
    write_meta(Path(ws["prefix"] + "_bigcode"), load_tokenizer(ws["model"]).info())
    cfg = load_config(str(write_config(tmp, ws, tmp / "cal", mode="cpt", pruning={"target": TARGET},
                                       dress={"calibration_batches": 40})), ["mode=oneshot"])
    datasets = load_domain_datasets(cfg.data.prefix, ["prose", "bigcode"])
    assert datasets["bigcode"].num_tokens > 8 * datasets["prose"].num_tokens
    batches, rows = calibration(cfg, datasets)
    assert len(batches) == 40 and tuple(batches[0].shape) == (2, 33)
    assert sum(rows.values()) == 80 and 28 <= rows["prose"] <= 52, rows  # natural weights would give ~8


def test_oneshot_refuses_bad_targets_and_keeps_an_existing_folder(ws):
    tmp = ws["tmp"]
    big = write_config(tmp, ws, tmp / "big", mode="cpt", pruning={"target": {"intermediate_size": 4096}})
    proc = _oneshot("--config", str(big))
    assert proc.returncode == 2 and "pruning.target" in proc.stderr and "4096" in proc.stderr
    same = write_config(tmp, ws, tmp / "same", mode="cpt", pruning={"target": {}})
    proc = _oneshot("--config", str(same))
    assert proc.returncode == 2 and "nothing to prune" in proc.stderr

    config = write_config(tmp, ws, tmp / "keep", mode="cpt", pruning={"target": TARGET},
                          dress={"calibration_batches": 1})
    assert _oneshot("--config", str(config)).returncode == 0
    weights = tmp / "keep" / "pruned" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    proc = _oneshot("--config", str(config))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert weights.stat().st_mtime_ns == before
    assert _oneshot("--config", str(config), "--overwrite").returncode == 0
    assert weights.stat().st_mtime_ns != before
