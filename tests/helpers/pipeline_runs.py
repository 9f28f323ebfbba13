"""Shared set-up of the pipeline tests (tools/demo.py, tools/experiment.py, the GPU session's rehearsal): a corpus
folder laid out as experiments/corpus_build.py writes it, and a tiny recipe for the pipelines' runs."""
from __future__ import annotations

import json
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
