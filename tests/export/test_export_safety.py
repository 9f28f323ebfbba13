"""Export never deletes what megadrp did not write, and refuses before consolidating (reliability, issue 17).

An existing --output is replaced only when it is empty or a previous export (it holds megadrp_export.json):
a copy of the source model with the user's notes in it must survive, and the refusal must come before the
checkpoint is read (consolidating a 70B checkpoint takes minutes).
"""
from __future__ import annotations

import shutil

import pytest

from megadrp import run_format
from megadrp.export import ExportError
from megadrp.export.api import export_checkpoint
from tests.helpers.tiny_models import make_tiny_hf_model


def _checkpoint_without_shards(tmp_path):
    """A folder megadrp resolves as a checkpoint whose DeepSpeed shards are missing: reading it fails."""
    ckpt = tmp_path / "run" / "checkpoints" / "step_2"
    ckpt.mkdir(parents=True)
    run_format.write_state(ckpt, {"step": 2, "mode": "cpt", "family": "llama", "source_shape": {}, "config": {}})
    return ckpt


def test_export_refuses_a_model_folder_with_user_files_before_consolidating(tmp_path):
    model = make_tiny_hf_model(tmp_path, "llama", seed=3)
    out = tmp_path / "out"
    shutil.copytree(model, out)
    (out / "NOTES.md").write_text("my notes")
    ckpt = _checkpoint_without_shards(tmp_path)
    with pytest.raises(ExportError, match="not written by megadrp export") as err:
        export_checkpoint(ckpt, out, progress=False)
    assert "megadrp_export.json" in str(err.value) and str(out) in str(err.value)
    assert (out / "NOTES.md").read_text() == "my notes" and (out / "model.safetensors").is_file()

    # A non-empty folder without config.json: the same refusal, also before the checkpoint is read.
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("x")
    with pytest.raises(ExportError, match="not written by megadrp export"):
        export_checkpoint(ckpt, notes, progress=False)
    assert (notes / "a.txt").read_text() == "x"

    # A previous export (it has megadrp_export.json) may be replaced: the export goes on to read the
    # checkpoint, and fails there, on the missing shards, leaving the old export in place.
    prev = tmp_path / "prev"
    shutil.copytree(model, prev)
    (prev / "megadrp_export.json").write_text("{}\n")
    with pytest.raises(ExportError, match="model_states"):
        export_checkpoint(ckpt, prev, progress=False)
    assert (prev / "model.safetensors").is_file()
