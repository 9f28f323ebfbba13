"""The method comparison of tools/experiment.py end to end on a tiny configuration (`make demo`'s pipeline,
`megadrp run`, is tests/recipe/test_run_demo.py).

tools/experiment.py runs every stage through the `megadrp` subcommands (megadrp/recipe/stages.py): preprocess a
corpus folder laid out like `experiments/corpus_build.py`'s, cut the source with learned masks or in one shot,
recover each cut, evaluate the cut and recovered models per domain and on domains no run trained on, and read
the papers' claims from the tables.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.pipeline_runs import TARGET, pipeline_config, pipeline_workspace, run_python

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return pipeline_workspace(tmp_path_factory.mktemp("demo"))


def _run(args: list[str], timeout: int = 600) -> str:
    return run_python(args, timeout)


def _unseen_corpus(tmp: Path) -> tuple[Path, Path]:
    """A corpus of one domain that no run trains on, built by experiments/corpus_build.py from a local folder."""
    texts = tmp / "unseen_texts"
    texts.mkdir()
    for i in range(3):
        (texts / f"poem{i}.txt").write_text(f"Roses are red, violets are blue, poem number {i} rhymes with you.\n" * 6)
    sources = tmp / "unseen_sources.yaml"
    sources.write_text(yaml.safe_dump({"domains": {"verse": [{"path": str(texts), "include": ["*.txt"],
                                                                "format": "text"}]}}))
    corpus = tmp / "corpus_unseen"
    _run(["-m", "experiments.corpus_build", "--sources", str(sources), "--output", str(corpus),
          "--cache", str(tmp / "src")])
    return sources, corpus


def test_experiment_compares_methods_over_seeds_before_and_after_recovery(workspace):
    ws = workspace
    run_dir = ws["tmp"] / "runs" / "experiment"
    unseen_sources, unseen_corpus = _unseen_corpus(ws["tmp"])
    argv = ["tools/experiment.py", "--model", ws["model"], "--corpus", ws["corpus"], "--bin-dir", ws["bins"],
            "--unseen-sources", str(unseen_sources), "--unseen-corpus", str(unseen_corpus),
            "--run-dir", str(run_dir), "--config", str(pipeline_config(ws["tmp"] / "exp.yaml", 4)),
            "--methods", "uniform", "oneshot", "--seeds", "1", "2", "--steps", "4", "--cpt-steps", "2",
            "--distill-alpha", "0.5", "--nproc", "2", "--eval-windows", "2", "--eval-seq-length", "32",
            "pruning.target={hidden_size: 48, num_attention_heads: 2, num_key_value_heads: 1, "
            "intermediate_size: 64, num_hidden_layers: 3}", "dress.calibration_batches=2"]
    out = _run(argv)
    # the source twice (held-out, unseen), then every run's cut and final models in one process, and every final
    # model on the unseen corpus in one more: not one process per model
    assert out.count("-m megadrp eval") == 4, out
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["runs"]) == {"uniform", "oneshot"}
    for method in ("uniform", "oneshot"):
        for seed in ("1", "2"):
            base = run_dir / method / f"seed{seed}"
            hf = json.loads((base / "export" / "config.json").read_text())
            assert {k: hf[k] for k in TARGET} == TARGET
            run = results["runs"][method][seed]
            assert run["final"] == json.loads((base / "eval.json").read_text())["models"][method]
            assert run["cut"]["average"]["loss"] != run["final"]["average"]["loss"]  # recovery changed it
            assert run["tokens"]["cpt"] == 2 * 2 * 2 * 32  # steps x ranks x micro x seq
            # the final model scored on the domain no run trained on, apart from the training corpus's held-out
            assert set(run["unseen"]["domains"]) == {"verse"} and run["unseen"]["domains"]["verse"]["tokens"] > 0
            assert run["unseen"] == json.loads((base / "eval_unseen.json").read_text())["models"][method]
            assert "verse" not in (base / "export" / "README.md").read_text()  # the card keeps the held-out table
        assert ("prune" in results["runs"][method]["1"]["tokens"]) == (method == "uniform")  # oneshot: no training
        s = results["summary"]["final"][method]["average"]
        assert s["range"] == pytest.approx(max(s["values"]) - min(s["values"])) and len(s["values"]) == 2
    # uniform mixing keeps its weights; the recovery's drpruning default would move them
    weights = results["runs"]["uniform"]["1"]["weights"]
    assert len(weights) == 1 and weights[0]["weights"] == {"prose": 0.5, "code": 0.5}
    assert results["runs"]["uniform"]["1"]["final"] != results["runs"]["uniform"]["2"]["final"]  # seeds differ
    table = (run_dir / "results.md").read_text()
    assert set(results["unseen_source"]["domains"]) == {"verse"}
    assert set(results["summary"]["unseen"]) == {"uniform", "oneshot"}
    for part in ("## After recovery", "## The cut models before recovery", "## Gap to the source", "| uniform |",
                 "| oneshot |", "| source (unpruned) |", "average: ", "## Domains no run trained on",
                 "## Reading (domains no run trained on)", "| model | verse | average | worst |"):
        assert part in table, part
    assert "## Reading" in out
    assert "Wall seconds per run" in table and results["status"] == "complete"

    # Re-run under a time limit already spent: the first run (cached) is the only one started; the rest are named
    # as not run, and the one-seed table gives no verdict. The seed-major order put uniform seed 1 first.
    _run(argv + ["--time-limit", "1"])
    partial = json.loads((run_dir / "results.json").read_text())
    assert {m: list(s) for m, s in partial["runs"].items()} == {"uniform": ["1"]}
    assert partial["runs"]["uniform"]["1"]["final"] == results["runs"]["uniform"]["1"]["final"]
    assert partial["status"].startswith("**Partial: 1 of 4 runs.** stopped by --time-limit 1 s before oneshot seed 1")
    assert "not run: oneshot seed 1, uniform seed 2, oneshot seed 2." in (run_dir / "results.md").read_text()
