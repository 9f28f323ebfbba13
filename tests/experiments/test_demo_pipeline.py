"""`make demo`'s pipeline end to end on a tiny configuration, and the method comparison of tools/experiment.py.

The same scripts as the real demo (tools/demo.py, tools/experiment.py) run every stage through the `megadrp`
subcommands: preprocess a corpus folder laid out like `experiments/corpus_build.py`'s, cut the source in one shot,
recover it on 2 gloo ranks under ZeRO-3 with distillation and DRPruning's DRO, export, evaluate the source, the
cut and the recovered model per domain and on a text file, write the report. The second run must find every
stage cached and redo nothing but the report.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.pipeline_runs import TARGET, pipeline_config, pipeline_corpus
from tests.helpers.train_runs import DOMAIN_TEXT

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from tests.helpers.tiny_models import make_tiny_hf_model

    tmp = tmp_path_factory.mktemp("demo")
    model = make_tiny_hf_model(tmp, "llama", num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                               intermediate_size=128, num_hidden_layers=4, seed=0)
    return {"tmp": tmp, "model": str(model), "corpus": str(pipeline_corpus(tmp / "corpus")), "bins": str(tmp / "bin")}


def _run(args: list[str], timeout: int = 600) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def test_demo_pipeline_end_to_end_then_cached(workspace):
    ws = workspace
    run_dir = ws["tmp"] / "runs" / "demo"
    cmd = ["tools/demo.py", "--model", ws["model"], "--corpus", ws["corpus"], "--bin-dir", ws["bins"],
           "--run-dir", str(run_dir), "--config", str(pipeline_config(ws["tmp"] / "demo.yaml", 6, "cpt")),
           "--nproc", "2",
           "--eval-windows", "2", "--eval-seq-length", "32"]
    out = _run(cmd)

    # 1: one .bin/.idx pair per domain and split
    for split in ("train", "heldout"):
        for domain in DOMAIN_TEXT:
            assert os.path.getsize(f"{ws['bins']}/{split}_{domain}.bin") > 0
    # 2: the one-shot cut has the target shape and records what it removed and why
    cut = json.loads((run_dir / "pruned" / "config.json").read_text())
    assert {k: cut[k] for k in TARGET} == TARGET
    scores = json.loads((run_dir / "pruned" / "oneshot_scores.json").read_text())
    removed = scores["removed"]["intermediate"]
    assert len(removed) == 4 and all(len(r) == 128 - 64 for r in removed)
    # 3: the recovery finished with a final checkpoint, distilled, and logged DRO weights for both domains
    recover = run_dir / "recover"
    metrics = [json.loads(line) for line in (recover / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if m.get("kind") == "train"]
    assert max(m["step"] for m in steps) == 6
    assert all(m["kd_loss"] > 0 for m in steps)  # the cut student differs from its teacher from step 1
    assert (recover / "checkpoints" / "step_6").is_dir()
    # DRPruning's initial references: the cut model's held-out loss per domain, measured before step 1
    refs = [m["reference_loss"] for m in metrics if m.get("kind") == "reference"]
    assert len(refs) == 1 and set(refs[0]) == set(DOMAIN_TEXT) and all(v > 0 for v in refs[0].values())
    # 4: the export has the target shape
    hf = json.loads((run_dir / "export" / "config.json").read_text())
    assert {k: hf[k] for k in TARGET} == TARGET
    # 5: eval.json has loss / perplexity / bits per byte per domain for the source, the cut and the recovered model
    ev = json.loads((run_dir / "eval.json").read_text())["models"]
    assert set(ev) == {"source", "oneshot", "pruned"}
    for label in ev:
        for domain in DOMAIN_TEXT:
            r = ev[label]["domains"][domain]
            assert math.isclose(r["perplexity"], math.exp(r["loss"]), rel_tol=1e-6)
            assert r["bits_per_byte"] > 0
    assert ev["source"]["domains"]["code"]["loss"] != ev["pruned"]["domains"]["code"]["loss"]
    assert ev["oneshot"]["domains"]["code"]["loss"] != ev["pruned"]["domains"]["code"]["loss"]
    assert "| source | oneshot | pruned |" in (run_dir / "eval.md").read_text()
    card = (run_dir / "export" / "README.md").read_text()
    assert "| **average** |" in card  # eval --update-card
    # the recovered model's card names the lineage's model, not the unpublished cut it continued from
    source_name = Path(ws["model"]).name
    assert f"base_model: {source_name}" in card and "base_model: pruned" not in card
    assert f"cut from `{source_name}`" in card and "(42.1%)" not in card
    unseen = json.loads((run_dir / "eval_unseen.json").read_text())["models"]
    assert set(unseen) == {"source", "oneshot", "pruned"}
    for r in unseen.values():
        assert set(r["domains"]) == {"textwrap.py"} and r["domains"]["textwrap.py"]["tokens"] > 0
    # 6: the report: a summary and the plots
    report = run_dir / "report"
    assert (report / "summary.md").read_text().strip()
    assert len(list(report.glob("*.png"))) >= 3
    assert f"Everything is under {run_dir}/" in out

    again = _run(cmd)
    assert again.count("cached:") >= 7, again  # preprocess (2 splits), oneshot, cpt, export, eval (2)
    for stage in ("oneshot", "cpt", "export", "eval"):
        assert f"megadrp {stage}" not in again, again


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
