"""Shared set-up of the training tests: a tiny HF model, tiny per-domain binaries, a recipe, a run launcher.

Runs go through the real launchers (`deepspeed`, `torchrun`) on 2 gloo ranks with one thread each, with
wandb, HF and torch-extension caches in temporary folders.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "megadrp" / "train.py")

DOMAIN_TEXT = {
    "prose": "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
             "want of a wife. The quick brown fox jumps over the lazy dog. In the beginning God created the heaven.",
    "code": "def main(argv=None):\n    return sum(x * x for x in range(10))\nclass A:\n    pass\n"
            "for i in range(100): print(i * 2 + 1)\n",
}


def make_workspace(tmp: Path) -> dict:
    """A tiny llama (GQA 4/2 heads, d 64, m 128, 4 layers), train + held-out binaries for two domains."""
    from megadrp.data import IndexedDatasetWriter, write_meta
    from megadrp.data.tokenizer import load_tokenizer
    from tests.helpers.tiny_models import make_tiny_hf_model

    model = make_tiny_hf_model(tmp, "llama", num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                               intermediate_size=128, num_hidden_layers=4, seed=0)
    tok = load_tokenizer(str(model))
    rng = np.random.default_rng(0)
    for split, docs in (("train", 60), ("heldout", 12)):
        for domain, text in DOMAIN_TEXT.items():
            prefix = tmp / "data" / f"{split}_{domain}"
            prefix.parent.mkdir(parents=True, exist_ok=True)
            words = text.split(" ")
            with IndexedDatasetWriter(prefix, np.uint16) as w:
                for _ in range(docs):
                    start = int(rng.integers(0, len(words) - 8))
                    ids = tok.encode_batch([" ".join(words[start:] + words[:start])])[0]
                    w.add_document(ids + [tok.eod_id])
            write_meta(prefix, tok.info())
    return {"model": str(model), "prefix": str(tmp / "data" / "train"), "eval_prefix": str(tmp / "data" / "heldout")}


def write_config(tmp: Path, ws: dict, run_dir: Path, mode: str = "prune", **sections) -> Path:
    cfg = {
        "mode": mode, "run_dir": str(run_dir),
        "model": {"path": ws["model"]},
        "pruning": {"target": {"hidden_size": 48, "num_attention_heads": 2, "num_key_value_heads": 1,
                               "intermediate_size": 64, "num_hidden_layers": 3},
                    "warmup_fraction": 0.5, "lr_log_alpha": 0.5, "lr_lambda": 0.5},
        "data": {"prefix": ws["prefix"], "eval_prefix": "", "domains": list(DOMAIN_TEXT), "seq_length": 32},
        "dro": {"method": "drpruning", "update_interval": 3, "fit_in_background": False},
        "optim": {"max_steps": 12, "micro_batch_size": 2, "gradient_accumulation_steps": 2, "lr": 1e-3},
        "deepspeed": {"config": str(REPO / "ds_configs" / "zero3_cpu.json"), "precision": "fp32"},
        "checkpoint": {"save_interval": 4, "keep_last": 2},
        "logging": {"log_interval": 1, "wandb_mode": "disabled"},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    path = tmp / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_env(tmp: Path, **extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(tmp / "torch_ext"),
               WANDB_DIR=str(tmp / "wandb"), HF_HOME=str(tmp / "hf"), WANDB_MODE="disabled",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def free_port() -> int:
    from megadrp.trainer.dist import free_port as fp

    return fp()


def deepspeed_cmd(config: Path, *extra: str, nproc: int = 2) -> list:
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--master_port",
            str(free_port()), TRAIN, "--config", str(config), *extra]


def launch(cmd: list, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path, kind: str = "train") -> list:
    path = Path(run_dir) / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]
