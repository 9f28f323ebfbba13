"""Resolve what to evaluate: an exported Hugging Face folder, or a megadrp checkpoint exported on the fly.

Evaluation works from a dense HF folder only (see ARCHITECTURE.md, Dependencies); a checkpoint
(a folder with megadrp's state file, or a run directory with checkpoints; megadrp.run_format) is first exported
to a temporary folder through ``megadrp.export``.
"""
from __future__ import annotations

from pathlib import Path

from megadrp.run_format import STATE_FILE, find_checkpoint


def export_to(checkpoint: Path, out_dir: Path) -> Path:
    """Export ``checkpoint`` into ``out_dir`` (a dense HF folder) and return it."""
    from megadrp.export.api import export_checkpoint

    export_checkpoint(str(checkpoint), str(out_dir))
    if not (out_dir / "config.json").is_file():
        raise RuntimeError(f"exporting {checkpoint} wrote no config.json into {out_dir}")
    return out_dir


def resolve_model_dir(path, scratch_dir) -> Path:
    """A HF folder to load: ``path`` itself, or the export of the checkpoint it names into ``scratch_dir``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist")
    checkpoint = find_checkpoint(path)
    if checkpoint is not None:
        out = Path(scratch_dir) / f"export_{checkpoint.parent.parent.name}_{checkpoint.name}"
        out.mkdir(parents=True, exist_ok=True)
        return export_to(checkpoint, out)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is neither a Hugging Face model folder (config.json) nor a megadrp "
                                f"checkpoint ({STATE_FILE})")
    from megadrp.model.lazy_weights import check_weight_files

    check_weight_files(path)  # before transformers, whose error names neither the folder nor the file
    return path


def default_device(device=None):
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_hf(path, device=None, dtype=None):
    """(model in eval mode on ``device``, fast tokenizer) from a HF folder; stock transformers, no remote code.

    ``dtype`` None: bfloat16 on CUDA, float32 on CPU (losses are always accumulated in float32).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = default_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True, trust_remote_code=False)
    return model.to(device).eval(), tokenizer
