"""`megadrp eval --tasks` on local lm-eval task folders, without a corpus; lm-eval's own message for an unknown task;
`--update-card` writes the results into an export's model card.

The lm-eval tests run lm-eval for real (HFLM + simple_evaluate) on a 3-question multiple-choice task whose data
is a local JSONL file, so nothing is downloaded; they are skipped where lm-eval (the `eval` extra) is missing.
"""
from __future__ import annotations

import json

import pytest
import torch

from megadrp.eval.cli import main
from tests.helpers.model_folders import TEXTS, write_corpus
from tests.helpers.tiny_models import make_tiny_hf_model

QUESTIONS = [("The quick brown fox jumps over the lazy", [" dog", " cat"]),
             ("Simple is better than", [" complex", " ugly"]),
             ("In the beginning God created the heaven and the", [" earth", " sea"])]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny source, its megadrp export (one layer pruned), a corpus, and a local lm-eval task folder."""
    from megadrp.export import export_from_model
    from megadrp.model import load_pretrained

    root = tmp_path_factory.mktemp("tasks")
    src = make_tiny_hf_model(root, "llama", seed=2, name="source")
    model = load_pretrained(src)
    export_from_model(model.state_dict(), {"layer": torch.tensor([1.0, 0.0, 1.0, 1.0])}, model.shape, "llama",
                      root / "export", tokenizer_src=str(src), dtype="float32", target={"num_hidden_layers": 3},
                      source_model_dir=str(src), progress=False, card_info={"mode": "prune"})
    write_corpus(root / "corpus", TEXTS)
    tasks = root / "my_tasks"
    tasks.mkdir()
    data = tasks / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": 0}) + "\n" for q, c in QUESTIONS))
    # lm-eval resolves data_files against the working directory: an absolute path keeps the task portable.
    (tasks / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    return root


def test_corpus_or_tasks_is_required(setup, capsys):
    assert main(["--model", str(setup / "export")]) == 2
    assert "give --corpus" in capsys.readouterr().err


def test_update_card_writes_the_heldout_table(setup, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["--model", f"pruned={setup / 'export'}", "--compare", f"source={setup / 'source'}", "--corpus",
               str(setup / "corpus"), "--seq-length", "16", "--max-windows", "2", "--device", "cpu",
               "--output", str(out), "--update-card"])
    assert rc == 0
    res = json.loads(out.read_text())["models"]
    assert res["pruned"]["shape"]["num_hidden_layers"] == 3 and res["source"]["shape"]["num_hidden_layers"] == 4
    card = (setup / "export" / "README.md").read_text()
    bpb = [res[m]["average"]["bits_per_byte"] for m in ("pruned", "source")]
    assert f"| **average** | {bpb[0]:.4f} | {bpb[1]:.4f} |" in card
    assert ("## Quality warning" in card) == (bpb[0] > 1.5 * bpb[1])
    assert "model card updated" in capsys.readouterr().err
    assert main(["--model", str(setup / "source"), "--corpus", str(setup / "corpus"), "--update-card"]) == 2


def test_local_task_folder_without_corpus(setup, tmp_path):
    pytest.importorskip("lm_eval")
    out = tmp_path / "tasks.json"
    rc = main(["--model", str(setup / "export"), "--tasks", "tiny_mc", "--include-path", str(setup / "my_tasks"),
               "--device", "cpu", "--batch-size", "2", "--output", str(out), "--update-card"])
    assert rc == 0
    res = json.loads(out.read_text())["models"]["export"]
    assert "domains" not in res
    acc = res["tasks"]["results"]["tiny_mc"]["acc,none"]
    assert acc in (0.0, 1 / 3, 2 / 3, 1.0)  # 3 questions, scored by lm-eval itself
    card = (setup / "export" / "README.md").read_text()
    assert f"| tiny_mc | acc,none | {acc:.4f} |" in card


def test_unknown_task_gets_lm_evals_message(setup, capsys):
    pytest.importorskip("lm_eval")
    rc = main(["--model", str(setup / "export"), "--corpus", str(setup / "corpus"), "--tasks", "tiny_mcq",
               "--include-path", str(setup / "my_tasks"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'tiny_mcq' is not a registered task/group/tag name" in err  # lm-eval's own words
    assert "Hub" not in err and "download" not in err and "[eval] export" not in err  # refused before loading
    assert main(["--model", str(setup / "export"), "--tasks", "tiny_mc", "--include-path",
                 str(setup / "missing")]) == 2
