"""A checkpoint folder is untrusted input, not only its pickles (issue 30, item 7): links, special files, files
its manifest does not list, manifest names and `latest` pointers that lead outside the run directory are refused
(or ignored, for `latest`) by export, eval and resume, before anything is read through them; a run_dir that is
empty or odd never makes a run write outside where the user pointed.

Before: `latest` holding an absolute path or '../..' resumed/exported another run's checkpoint; a symlink in a
checkpoint was hashed, loaded and copied into the export (its target anywhere on the machine); a FIFO named
`*.pt` made export wait forever; a file added to a checkpoint was ignored; run_dir '' wrote into the current
directory and '~/x' into a folder literally named '~'.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from megadrp import run_format
from megadrp.export import ExportError, export_checkpoint
from megadrp.trainer import checkpoint
from tests.helpers.train_runs import REPO, run_env
from tests.trainer.test_train_reliability import base, copy_run, refresh_manifest  # noqa: F401 - base: a 2-step prune run


def test_latest_pointing_outside_the_run_is_ignored(base, tmp_path):  # noqa: F811
    run, _ = copy_run(base, "pointer")
    other, _ = copy_run(base, "pointer_other")
    ck = run / "checkpoints"
    (other / "checkpoints" / "step_9").mkdir()
    (other / "checkpoints" / "step_9" / run_format.STATE_FILE).write_text("{}")
    for pointer in (str(other / "checkpoints" / "step_9"), "../../pointer_other/checkpoints/step_9"):
        (ck / "latest").write_text(pointer + "\n")
        notes = []
        assert run_format.resolve("auto", run, note=notes.append) == ck / "step_2"  # this run's newest, said so
        assert "does not name a step_N folder of this run" in notes[0]
        assert run_format.find_checkpoint(run) == ck / "step_2"  # export and eval
    (ck / "latest").unlink()
    os.symlink(other / "checkpoints" / "step_9", ck / "latest")
    assert run_format.resolve("auto", run, note=[].append) == ck / "step_2"


def test_links_special_and_unlisted_files_are_refused_before_being_read(base, tmp_path):  # noqa: F811
    secret = tmp_path / "secret.txt"
    secret.write_text("not the checkpoint's")
    run, _ = copy_run(base, "linked")
    step = run / "checkpoints" / "step_2"
    os.symlink(secret, step / "tokenizer" / "notes.txt")
    with pytest.raises(ExportError, match=r"tokenizer/notes.txt is a symbolic link \(to .*secret.txt\)"):
        export_checkpoint(step, tmp_path / "out", progress=False)
    assert any("symbolic link" in p for p in checkpoint.verify(step))  # resume: the same refusal
    assert not (tmp_path / "out").exists()
    # A link listed in the manifest with the target's checksum (a doctored manifest) is refused all the same.
    os.unlink(step / "tokenizer" / "notes.txt")
    shard = next(step.glob("*model_states.pt"))
    shard.rename(tmp_path / shard.name)
    os.symlink(tmp_path / shard.name, shard)
    refresh_manifest(step)
    with pytest.raises(ExportError, match="is a symbolic link"):
        export_checkpoint(step, tmp_path / "out", progress=False)
    # A file added after the checkpoint was written is not covered by its checksums.
    run, _ = copy_run(base, "unlisted")
    step = run / "checkpoints" / "step_2"
    (step / "tokenizer" / "added.json").write_text("{}")
    with pytest.raises(ExportError, match=r"added.json is not listed in megadrp_manifest.json"):
        export_checkpoint(step, tmp_path / "out", progress=False)
    assert any("not listed" in p for p in checkpoint.verify(step))
    # A manifest naming a file outside the folder would make verification read it.
    manifest = json.loads((step / run_format.MANIFEST).read_text())
    manifest["files"]["../../../secret.txt"] = {"sha256": "0", "bytes": 1}
    (step / run_format.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="outside the checkpoint folder"):
        export_checkpoint(step, tmp_path / "out", progress=False)


def test_a_fifo_in_a_checkpoint_does_not_hang_export(base, tmp_path):  # noqa: F811
    run, _ = copy_run(base, "fifo")
    step = run / "checkpoints" / "step_2"
    os.mkfifo(step / "zz_extra_states.pt")  # DeepSpeed's *.pt files are loaded: this one would block forever
    proc = subprocess.run([sys.executable, "-m", "megadrp", "export", str(step), "--output", str(tmp_path / "o")],
                          env=run_env(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "zz_extra_states.pt is not a regular file" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("run_dir, why", [("", "is empty"), (None, "is empty"), ("  ", "is empty"),
                                          ("~/runs/x", "starts with '~'"), ("runs/a\nb", "control character")])
def test_an_odd_run_dir_is_refused(run_dir, why):
    from megadrp.config import ConfigError
    from megadrp.config.schema import RunConfig

    with pytest.raises(ConfigError, match=why):
        RunConfig(run_dir=run_dir).check()


def test_a_run_dir_that_is_a_file_is_refused(tmp_path):
    from megadrp.config import ConfigError, load_config

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        load_config(None, [f"run_dir={tmp_path / 'file'}"])
    with pytest.raises(ConfigError, match="is empty"):
        load_config(None, ["run_dir="])  # what `run_dir=$UNSET_VARIABLE` gives
