"""`make demo` (`megadrp run --config RECIPE.yaml`) end to end on a tiny configuration.

`megadrp run` runs every stage of the recipe through the `megadrp` subcommands: preprocess a corpus folder laid
out like `experiments/corpus_build.py`'s, cut the source in one shot, recover it on 2 gloo ranks under ZeRO-3
with distillation and DRPruning's DRO, export, evaluate the source, the cut and the recovered model per domain,
write the report. The second run must find every stage cached and redo nothing but the report; another cut asked
of the same run folder is refused before any work, naming the field that differs.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.pipeline_runs import TARGET, pipeline_config, pipeline_workspace, run_python
from tests.helpers.train_runs import DOMAIN_TEXT

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return pipeline_workspace(tmp_path_factory.mktemp("demo"))


def _run(args: list[str], timeout: int = 1200) -> str:
    return run_python(args, timeout)


def _recipe_command(ws, run_dir: Path, *extra: str) -> list[str]:
    """`megadrp run` on the tiny demo recipe: a one-shot cut, 6 recovery steps with distillation from the source."""
    return ["-m", "megadrp", "run", "--config", str(pipeline_config(ws["tmp"] / "demo.yaml", 6, "cpt")),
            f"model.path={ws['model']}", f"distill.teacher={ws['model']}", f"run_dir={run_dir}",
            f"stages.corpus={ws['corpus']}", f"stages.bin_dir={ws['bins']}", "stages.nproc=2",
            "stages.recovery_steps=6", "eval.max_windows=2", "eval.seq_length=32", *extra]


@pytest.mark.timeout(2400)  # three runs of the recipe, each model's speed in its own process: minutes on 2 cores
def test_demo_pipeline_end_to_end_then_cached(workspace):
    ws = workspace
    run_dir = ws["tmp"] / "runs" / "demo"
    cmd = _recipe_command(ws, run_dir)
    out = _run(cmd)
    assert "[1/6 tokenise, 0:00 elapsed]" in out and "[6/6 report," in out  # numbered stages with the time

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
    # DRPruning's initial references: held-out loss per domain, measured before step 1
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
    # beside the quality, each model's speed and memory (stages.speed), as ratios to the source
    for label in ev:
        sp = ev[label]["speed"]
        assert sp["prefill"]["tokens_per_s"] > 0 and [d["batch"] for d in sp["decode"]] == [1, 4]
    assert ev["pruned"]["speed"]["weights_mb"] < ev["source"]["speed"]["weights_mb"]
    assert "## Speed and memory" in (run_dir / "eval.md").read_text()
    card = (run_dir / "export" / "README.md").read_text()
    assert "| **average** |" in card and "### Speed and memory" in card  # eval --update-card
    # the recovered model's card names the lineage's model, not the unpublished cut it continued from
    source_name = Path(ws["model"]).name
    assert f"base_model: {source_name}" in card and "base_model: pruned" not in card
    assert f"cut from `{source_name}`" in card and "(42.1%)" not in card
    # a card a person would publish: a name, the size against the original, the whole pipeline and its command
    body = card.split("\n---\n", 1)[1].lstrip()
    assert body.startswith(f"# {source_name}-pruned-0.") and "(100.0%)" not in card
    made = body.split("## How it was made\n", 1)[1].split("\n## ", 1)[0]
    assert "1. One-shot cut by activation importance on 128 calibration tokens, no training -> " in made
    assert "2. Recovery: continued pretraining for 6 steps (768 tokens), domain reweighting drpruning, distilled " \
        f"from `{source_name}` (KD weight 0.5)" in made
    assert "Command: `megadrp run --config " in made and "stages.recovery_steps=6" in made
    assert "## Use" in card and "AutoModelForCausalLM.from_pretrained" in card
    # 6: the report: a summary with the evaluation's table, and the plots
    report = run_dir / "report"
    summary = (report / "summary.md").read_text()
    assert "## Held-out evaluation" in summary and "| source | oneshot | pruned |" in summary
    assert "## Speed and memory" in summary
    assert len(list(report.glob("*.png"))) >= 3
    assert f"model        : {run_dir}/export/" in out

    again = _run(cmd)
    assert again.count("cached:") >= 6, again  # preprocess (2 splits), oneshot, cpt, export, eval
    for stage in ("oneshot", "cpt", "export", "eval"):
        assert f"-m megadrp {stage} " not in again, again

    # the same run folder asked for another cut: refused before any work, naming the field that changed
    proc = subprocess.run([sys.executable, *_recipe_command(ws, run_dir, "pruning.target.intermediate_size=96")],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 1 and "config.pruning.target.intermediate_size: 64 -> 96" in proc.stderr, proc.stderr
    assert "$ " + sys.executable + " -m megadrp oneshot" not in proc.stdout


def test_the_gpu_demo_recipe_runs_the_papers_method(workspace):
    """`make demo` where torch sees a GPU runs configs/demo_smollm2_gpu.yaml: DRPruning's learned masks under its
    DRO (stages.cut: prune), their cut, recovery under DRO with the source's references, export, scoring, report,
    every stage in one process (one rank). Here the shipped recipe itself, on the tiny model and the CPU (shapes,
    steps, precision and DeepSpeed JSON overridden)."""
    from megadrp.config import load_config

    recipe = str(REPO / "configs" / "demo_smollm2_gpu.yaml")
    for mode in ("prune", "cpt"):
        cfg = load_config(recipe, [f"mode={mode}"])
        assert cfg.stages.cut == "prune" and cfg.stages.nproc == 1 and cfg.dro.method == "drpruning"
        assert cfg.optim.micro_batch_size * cfg.data.seq_length == 8192 and cfg.deepspeed.precision == "bf16"
    ws = workspace
    run_dir = ws["tmp"] / "runs" / "demo_gpu"
    target = "pruning.target={" + ", ".join(f"{k}: {v}" for k, v in TARGET.items()) + "}"
    out = _run(["-m", "megadrp", "run", "--config", recipe, f"model.path={ws['model']}", f"run_dir={run_dir}",
                f"stages.corpus={ws['corpus']}", f"stages.bin_dir={ws['bins']}", "stages.cut_steps=4",
                "stages.recovery_steps=2", target, f"data.domains=[{', '.join(DOMAIN_TEXT)}]", "optim.warmup_steps=1",
                "data.seq_length=32", "optim.micro_batch_size=2",
                "dro.update_interval=2", "deepspeed.config=ds_configs/zero3_cpu.json", "deepspeed.precision=fp32",
                "eval.max_windows=2", "eval.seq_length=32", "logging.log_interval=1", "logging.wandb_mode=disabled"])
    assert "$ (in process)" in out and "megadrp prune" in out
    prune = [json.loads(line) for line in (run_dir / "prune" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in prune if m.get("kind") == "train"]
    assert max(m["step"] for m in steps) == 4 and all("expected_sparsity" in m for m in steps)
    assert len({tuple(m["domain_weights"].values()) for m in steps}) > 1  # DRO moved the mix
    cut = json.loads((run_dir / "pruned" / "config.json").read_text())
    assert {k: cut[k] for k in TARGET} == TARGET
    recover = [json.loads(line) for line in (run_dir / "recover" / "metrics.jsonl").read_text().splitlines()]
    assert max(m["step"] for m in recover if m.get("kind") == "train") == 2
    assert [m for m in recover if m.get("kind") == "reference"]  # DRO's references measured (on the source)
    assert set(json.loads((run_dir / "eval.json").read_text())["models"]) == {"source", "prune", "pruned"}
    assert (run_dir / "report" / "summary.md").is_file()
