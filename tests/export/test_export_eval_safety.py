"""Messages that misled and overwrites nobody asked for, in export, eval and oneshot (issue 30, items 5 and 6).

Before: export called a truncated optimizer shard a pickle/security problem; eval of a folder without weights, or
with a truncated safetensors file, was a transformers traceback without the file's name; `--push-to-hub` without
a token exported first and then failed on the network; oneshot refused a folder of the user's only after the
scoring pass, saying it "already holds a model"; replacing an export deleted files the user had added to it;
`eval --output` replaced any file (the evaluated model's weights too); model files were written 0600.
"""
from __future__ import annotations

import json
import shutil
import stat

import huggingface_hub.constants
import pytest

from megadrp.cli import main
from megadrp.export import ExportError, export_checkpoint
from megadrp.export.writer import EXPORT_MARKER
from tests.helpers.model_folders import write_corpus
from tests.helpers.train_runs import write_config
from tests.trainer.test_train_reliability import base, copy_run  # noqa: F401 - base: a 2-step prune run (1 rank, tiny model)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_export_names_a_truncated_shard_as_damage_not_as_a_pickle(base, tmp_path):  # noqa: F811
    run, _ = copy_run(base, "truncated_shard")
    optim = next((run / "checkpoints" / "step_2").glob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[: optim.stat().st_size // 2])
    with pytest.raises(ExportError) as err:
        export_checkpoint(run / "checkpoints" / "step_2", tmp_path / "out", progress=False)
    assert "truncated or replaced" in str(err.value) and optim.name in str(err.value)
    assert "not plain checkpoint data" not in str(err.value) and "step_1" in str(err.value)


def test_replacing_an_export_keeps_the_users_files_and_writes_0644(base, tmp_path):  # noqa: F811
    out = tmp_path / "export"
    export_checkpoint(base["run"], out, dtype="float32", progress=False)
    listed = json.loads((out / EXPORT_MARKER).read_text())["files"]
    assert "model.safetensors" in listed and "config.json" in listed and EXPORT_MARKER in listed
    assert _mode(out / "model.safetensors") == _mode(out / "config.json")  # 0644 under umask 022, not 0600
    (out / "notes.txt").write_text("my notes")
    (out / "evals").mkdir()
    (out / "evals" / "run1.json").write_text("{}")
    export_checkpoint(base["run"], out, dtype="float32", progress=False)
    assert (out / "notes.txt").read_text() == "my notes" and (out / "evals" / "run1.json").is_file()
    assert "notes.txt" not in json.loads((out / EXPORT_MARKER).read_text())["files"]


def test_push_to_hub_without_a_token_stops_before_exporting(base, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_tokens"))
    out = tmp_path / "hub_out"
    assert main(["export", str(base["run"]), "--output", str(out), "--push-to-hub", "someone/model"]) == 2
    err = capsys.readouterr().err
    assert "needs a Hugging Face token" in err and "HF_TOKEN" in err and "Nothing was exported" in err
    assert not out.exists()


def test_eval_names_the_folder_or_file_it_cannot_read(base, tmp_path, capsys):  # noqa: F811
    corpus = write_corpus(tmp_path / "corpus", {"prose": ["It is a truth universally acknowledged."]})
    hollow = tmp_path / "hollow"
    shutil.copytree(base["ws"]["model"], hollow, ignore=shutil.ignore_patterns("*.safetensors"))
    assert main(["eval", "--model", str(hollow), "--corpus", str(corpus)]) == 2
    err = capsys.readouterr().err
    assert f"{hollow} has a config.json but no weights" in err and "Traceback" not in err
    torn = tmp_path / "torn"
    shutil.copytree(base["ws"]["model"], torn)
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["eval", "--model", str(torn), "--corpus", str(corpus)]) == 2
    assert f"{weights} cannot be read" in capsys.readouterr().err


def test_eval_output_never_replaces_a_file_it_did_not_write(base, tmp_path, capsys):  # noqa: F811
    corpus = write_corpus(tmp_path / "corpus", {"prose": ["It is a truth universally acknowledged."]})
    model = tmp_path / "model"
    shutil.copytree(base["ws"]["model"], model)
    weights = (model / "model.safetensors").read_bytes()
    assert main(["eval", "--model", str(model), "--corpus", str(corpus), "--output",
                 str(model / "model.safetensors")]) == 2
    assert "is not a results file of megadrp eval: refusing to replace it" in capsys.readouterr().err
    assert (model / "model.safetensors").read_bytes() == weights
    (model / "README.md").write_text("---\nlicense: apache-2.0\n---\n# My model\n")
    card = (model / "README.md").read_text()
    assert main(["eval", "--model", str(model), "--corpus", str(corpus), "--markdown", str(model / "README.md")]) == 2
    assert "is not a markdown file of megadrp eval" in capsys.readouterr().err
    assert (model / "README.md").read_text() == card
    results, md = tmp_path / "eval.json", tmp_path / "eval.md"
    for _ in range(2):  # its own files it replaces
        assert main(["eval", "--model", str(model), "--corpus", str(corpus), "--output", str(results),
                     "--markdown", str(md)]) == 0


def test_model_config_errors_name_the_model_type_or_the_field(tmp_path):
    from megadrp.model import read_shape

    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_head": 2}))
    with pytest.raises(ValueError, match=r"unsupported model_type 'gpt2' in config.json; supported families: llama"):
        read_shape(tmp_path / "gpt2")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 2}))
    with pytest.raises(ValueError, match=r"cut/config.json lacks the field '\w+', which a llama config.json has"):
        read_shape(tmp_path / "cut")


def test_oneshot_refuses_a_users_folder_before_scoring(base, tmp_path, capsys):  # noqa: F811
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    config = write_config(tmp_path, base["ws"], tmp_path / "oneshot_run", mode="oneshot",
                          dress={"calibration_batches": 1})
    for extra in ([], ["--overwrite"]):
        assert main(["oneshot", "--config", str(config), "--output", str(mine), *extra]) == 2
        out = capsys.readouterr()
        assert "was not written by megadrp export" in out.err and "scoring" not in out.out
    assert (mine / "thesis.tex").read_text() == "months of work"


def test_a_user_file_the_new_export_would_replace_is_refused(tmp_path):
    from megadrp.export.writer import AtomicFolder

    out = tmp_path / "export"
    out.mkdir()
    (out / EXPORT_MARKER).write_text(json.dumps({"files": ["config.json", EXPORT_MARKER]}))
    (out / "config.json").write_text("{}")
    (out / "notes.md").write_text("mine")  # added by the user; the new export writes a notes.md of its own
    with pytest.raises(ExportError, match=r"holds \['notes.md'\], which megadrp did not write"):
        with AtomicFolder(out) as tmp:
            (tmp / "config.json").write_text('{"new": 1}')
            (tmp / "notes.md").write_text("megadrp's")
            (tmp / EXPORT_MARKER).write_text("{}")
    assert (out / "notes.md").read_text() == "mine" and (out / "config.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folder left
