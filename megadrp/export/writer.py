"""Write a dense Hugging Face folder (config, safetensors shards, tokenizer, generation config, card), atomically.

The folder loads with stock ``AutoModelForCausalLM.from_pretrained`` and no remote code: the source family's
config class with the achieved shape and an explicit ``head_dim``. Weights are written shard by shard with
huggingface_hub's splitter and safetensors (no model is instantiated, so a 70B export needs no second copy).
Everything goes into a temporary sibling folder that is renamed into place last, so a crash never leaves a
half-written export where a loader would find it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Optional

import torch

from megadrp.export.surgery import ExportError
from megadrp.model.families import get_family

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files that make up a tokenizer across slow/fast/sentencepiece/BPE variants.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ExportError(f"dtype {name!r} is not supported; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def hf_config(shape, family, dtype: str = "float32"):
    """The family's transformers config for ``shape`` (explicit head_dim: it never follows d' / H')."""
    from transformers import CONFIG_MAPPING

    d = (get_family(family) if isinstance(family, str) else family).hf_config_dict(shape)
    d["head_dim"] = shape.head_dim
    cfg = CONFIG_MAPPING[d.pop("model_type")](**d)
    cfg.dtype = dtype
    return cfg


def save_weights(hf_sd: Mapping[str, torch.Tensor], folder: Path, dtype: str, max_shard_size: str | int,
                 progress: bool = True) -> list[str]:
    """safetensors shards (+ index when more than one), cast to ``dtype``; returns the file names."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    target = torch_dtype(dtype)
    if isinstance(max_shard_size, str) and max_shard_size.strip().isdigit():  # a byte count
        max_shard_size = int(max_shard_size)
    # Plan shards on meta tensors of the export dtype (sizes right, no memory), then cast one shard at a time,
    # so a large export holds at most one shard's copy beyond the fp32 state dict.
    meta = {k: torch.empty(v.shape, dtype=target, device="meta") for k, v in hf_sd.items()}
    split = split_torch_state_dict_into_shards(meta, max_shard_size=max_shard_size)
    files = list(split.filename_to_tensors.items())
    for name, keys in tqdm(files, desc="writing safetensors", unit="shard", disable=not progress):
        shard = {k: hf_sd[k].detach().to("cpu", target).contiguous() for k in keys}
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        del shard
    if split.is_sharded:
        total = sum(t.numel() * t.element_size() for t in meta.values())
        index = {"metadata": dict(split.metadata, total_size=total), "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [name for name, _ in files]


def copy_tokenizer(sources: list, folder: Path) -> Optional[Path]:
    """Copy the tokenizer files of the first source folder that has any; returns that folder (or None)."""
    for src in sources:
        if not src or not Path(src).is_dir():
            continue
        found = [f for f in TOKENIZER_FILES if (Path(src) / f).is_file()]
        if found:
            for f in found:
                shutil.copy2(Path(src) / f, folder / f)
            return Path(src)
    return None


def save_generation_config(config, source_dir: Optional[Path], folder: Path) -> None:
    """The source model's generation config when it has one, else one derived from the model config."""
    from transformers import GenerationConfig

    if source_dir is not None and (Path(source_dir) / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(source_dir)
    else:
        gen = GenerationConfig.from_model_config(config)
    gen.save_pretrained(folder)


def _looks_like_export(path: Path) -> bool:
    return not any(path.iterdir()) or (path / "config.json").is_file()


class AtomicFolder:
    """``with AtomicFolder(out) as tmp:`` write into ``tmp``; on success it replaces ``out`` in one rename.

    An existing ``out`` is replaced only when it is empty or a previous export (has config.json), so a
    mistyped --output never deletes an unrelated folder.
    """

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir).absolute()
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        if self.out.exists() and (not self.out.is_dir() or not _looks_like_export(self.out)):
            raise ExportError(f"{self.out} exists and is not a previous export (no config.json); "
                              f"choose an empty or new --output folder")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
        if self.out.exists():
            self.out.rename(old)
        self.tmp.rename(self.out)
        shutil.rmtree(old, ignore_errors=True)
