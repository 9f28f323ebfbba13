"""Shared set-up of the pipeline tests (tools/demo.py, tools/experiment.py, the GPU session's rehearsal): a corpus
folder laid out as experiments/corpus_build.py writes it, and a tiny recipe for the pipelines' runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers.train_runs import DOMAIN_TEXT

REPO = Path(__file__).resolve().parents[2]

TARGET = {"hidden_size": 48, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64,
          "num_hidden_layers": 3}


def pipeline_corpus(root: Path) -> Path:
    """CORPUS/{train,heldout}/DOMAIN.jsonl + manifest.json, the layout experiments/corpus_build.py writes."""
    for split, docs in (("train", 40), ("heldout", 10)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for d, (domain, text) in enumerate(DOMAIN_TEXT.items()):
            words = text.split(" ")
            lines = [json.dumps({"text": " ".join(words[i % len(words):] + words[:i % len(words)])})
                     for i in range(d, d + docs)]
            (root / split / f"{domain}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "manifest.json").write_text(json.dumps({"domains": {d: {} for d in DOMAIN_TEXT}}))
    return root


def pipeline_config(path: Path, max_steps: int, mode: str = "prune") -> Path:
    """A recipe for the pipelines on the tiny model: prune (or, as the demo, cpt with distillation) to TARGET."""
    cfg = {
        "mode": mode, "run_dir": "unused",
        "model": {"path": ""},
        "pruning": {"target": TARGET, "warmup_fraction": 0.5, "lr_log_alpha": 0.5, "lr_lambda": 0.5},
        "data": {"seq_length": 32},
        "dro": {"method": "drpruning", "update_interval": 2, "fit_in_background": False},
        "optim": {"max_steps": max_steps, "micro_batch_size": 2, "lr": 1e-3},
        "deepspeed": {"config": str(REPO / "ds_configs" / "zero3_cpu.json"), "precision": "fp32"},
        "checkpoint": {"save_interval": max_steps},
        "logging": {"log_interval": 1, "wandb_mode": "disabled"},
    }
    if mode == "cpt":  # the demo's recipe: one-shot cut, then recovery with distillation from the source
        cfg.update(dress={"calibration_batches": 2}, distill={"alpha": 0.5})
    path.write_text(yaml.safe_dump(cfg))
    return path


def pipeline_workspace(tmp: Path) -> dict:
    """The tiny source model (4 layers, GQA) and the pipeline corpus in ``tmp``: what the pipeline tests share."""
    from tests.helpers.tiny_models import make_tiny_hf_model

    model = make_tiny_hf_model(tmp, "llama", num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                               intermediate_size=128, num_hidden_layers=4, seed=0)
    return {"tmp": tmp, "model": str(model), "corpus": str(pipeline_corpus(tmp / "corpus")), "bins": str(tmp / "bin")}


def run_python(args: list[str], timeout: int) -> str:
    """``python ARGS`` from the repository (one thread, wandb off); its stdout, or a failure with the output's end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout
