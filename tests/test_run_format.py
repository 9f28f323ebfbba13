"""megadrp.run_format: the state round-trips exactly without pickle; old pickle states are refused, not loaded,
and convert on request; the manifest catches a changed, truncated or missing file."""
from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from megadrp import run_format


def _state():
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    opt.step()
    return {"step": 7, "loss": float("nan"), "lr": 1 / 3, "name": "prune", "none": None, "flag": True,
            "masks": {"log_alpha.head": torch.randn(2, 3), "bf16": torch.ones(2, dtype=torch.bfloat16)},
            "side_optimizer": opt.state_dict(),  # int keys, tuples (betas), 0-dim tensors
            "rng": [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}],
            "weights": [np.float64(0.25), np.int64(3)], "__odd": {"__tensor__": "not a reference"}}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b) or (isinstance(a, np.generic) and a.item() == b)


def test_state_round_trips_exactly(tmp_path):
    state = _state()
    run_format.write_state(tmp_path, state)
    back = run_format.read_state(tmp_path)
    assert _same(state, back)
    random.setstate(back["rng"][0]["python"])  # the RNG states are usable as such
    np.random.set_state(back["rng"][0]["numpy"])
    torch.optim.AdamW([torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]).load_state_dict(
        back["side_optimizer"])
    with pytest.raises(TypeError, match=r"state.bad is a object"):
        run_format.write_state(tmp_path, {"bad": object()})


def test_legacy_pickle_state_is_refused_and_converts_on_request(tmp_path):
    torch.save({"step": 3, "masks": {"x": torch.arange(4)}}, tmp_path / run_format.LEGACY_STATE)
    with pytest.raises(run_format.RunFormatError, match="old state format.*convert-legacy"):
        run_format.read_state(tmp_path)
    res = subprocess.run([sys.executable, "-m", "megadrp.run_format", "convert-legacy", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    state = run_format.read_state(tmp_path)
    assert state["step"] == 3 and torch.equal(state["masks"]["x"], torch.arange(4))
    assert not (tmp_path / run_format.LEGACY_STATE).exists() and run_format.verify_manifest(tmp_path) == []


def test_manifest_names_changed_truncated_and_missing_files(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"a" * 100)
    (tmp_path / "b.pt").write_bytes(b"b" * 100)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "t.json").write_text("{}")
    run_format.write_manifest(tmp_path, {n: run_format.file_digest(tmp_path / n)
                                         for n in run_format.manifest_files(tmp_path)})
    assert run_format.verify_manifest(tmp_path) == []
    (tmp_path / "a.pt").write_bytes(b"a" * 99 + b"x")
    (tmp_path / "b.pt").write_bytes(b"b" * 50)
    (tmp_path / "tok" / "t.json").unlink()
    problems = run_format.verify_manifest(tmp_path)
    assert any("a.pt does not match its checksum" in p for p in problems)
    assert any("b.pt has 50 bytes, 100 were written" in p for p in problems)
    assert any("t.json is missing" in p for p in problems)


def test_resolve_latest_pointer(tmp_path):
    from megadrp.trainer import checkpoint

    notes = []
    assert checkpoint.resolve("auto", tmp_path) is None  # nothing yet: a fresh start
    ck = tmp_path / "checkpoints" / "step_4"
    ck.mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("step_4\n")
    assert checkpoint.resolve("auto", tmp_path, note=notes.append) is None  # a torn step_4 only: nothing to resume
    with pytest.raises(ValueError, match="not a complete megadrp checkpoint"):
        checkpoint.resolve(str(ck), tmp_path)
    (ck.parent / "step_2").mkdir()
    (ck.parent / "step_2" / checkpoint.STATE_FILE).write_text("{}")
    # `latest` names a torn folder: the newest complete one, said so (never a silent fresh start).
    assert checkpoint.resolve("auto", tmp_path, note=notes.append) == ck.parent / "step_2"
    assert "step_4, which is not complete" in notes[-1] and "step_2" in notes[-1]
    (ck / checkpoint.STATE_FILE).write_text("{}")
    assert checkpoint.resolve("auto", tmp_path) == ck
    assert checkpoint.resolve(str(tmp_path), "elsewhere") == ck
    assert checkpoint.resolve("none", tmp_path) is None
    # `latest` deleted: the newest complete step_N, not a fresh start over the run.
    (tmp_path / "checkpoints" / "latest").unlink()
    assert checkpoint.resolve("auto", tmp_path, note=notes.append) == ck
    assert "latest is missing" in notes[-1]
