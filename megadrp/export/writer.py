"""Write a dense Hugging Face folder (config, safetensors shards, tokenizer, generation config, card), atomically.

The folder loads with stock ``AutoModelForCausalLM.from_pretrained`` and no remote code: the source family's
config class with the achieved shape and an explicit ``head_dim``. Weights are written shard by shard with
huggingface_hub's splitter and safetensors (no model is instantiated, so a 70B export needs no second copy).
Everything goes into a temporary sibling folder that is renamed into place last, so a crash never leaves a
half-written export where a loader would find it. The marker file (megadrp_export.json) lists every file the
export wrote ("files"); replacing an earlier export removes only those, and files a user added to that folder
since (notes, eval results) are carried over into the new one (a name the new export also writes is refused).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Optional

import torch

from megadrp.data.tokenizer_files import GENERATION_CONFIG, copy_model_files
from megadrp.export.surgery import ExportError
from megadrp.model.families import get_family
from megadrp.run_format import plain_file_mode

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        plain_file_mode(folder / name)  # 0644 like the rest of the folder, not safetensors' 0600
        del shard
    if split.is_sharded:
        total = sum(t.numel() * t.element_size() for t in meta.values())
        index = {"metadata": dict(split.metadata, total_size=total), "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [name for name, _ in files]


def copy_tokenizer(sources: list, folder: Path) -> Optional[Path]:
    """Tokenizer, chat template and generation config from ``sources`` (first wins, megadrp.data.tokenizer_files);
    returns the folder the tokenizer came from (or None)."""
    return copy_model_files(sources, folder)


def save_generation_config(config, folder: Path) -> None:
    """Keep the source's generation_config.json (copied with the tokenizer), else derive one from ``config``."""
    from transformers import GenerationConfig

    if not (Path(folder) / GENERATION_CONFIG).is_file():
        GenerationConfig.from_model_config(config).save_pretrained(folder)


EXPORT_MARKER = "megadrp_export.json"  # written into every export; only such a folder is ever replaced


def check_output_folder(out_dir: str | Path) -> Path:
    """Refuse an ``--output`` that megadrp did not write: call before any expensive work (consolidation).

    An existing folder is replaced only when it is empty or holds ``megadrp_export.json`` (a previous
    export). A config.json alone is not enough: a copied source model, or a folder of the user's own
    notes next to one, would be deleted.
    """
    out = Path(out_dir).absolute()
    if not out.exists():
        return out
    if not out.is_dir():
        raise ExportError(f"--output {out} is a file, not a folder; choose a new or empty --output folder")
    if any(out.iterdir()) and not (out / EXPORT_MARKER).is_file():
        raise ExportError(f"--output {out} is not empty and was not written by megadrp export (no {EXPORT_MARKER}): "
                          f"refusing to replace it. Choose a new or empty --output folder")
    return out


class AtomicFolder:
    """``with AtomicFolder(out) as tmp:`` write into ``tmp``; on success it replaces ``out`` in one rename.

    An existing ``out`` is replaced only when ``check_output_folder`` allows it (empty, or a previous export),
    so a mistyped --output never deletes an unrelated folder.
    """

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir).absolute()
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        check_output_folder(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        theirs = _unlisted_files(self.out) if self.out.exists() else []
        clash = [n for n in theirs if (self.tmp / n).exists()]
        if clash:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise ExportError(f"--output {self.out} holds {clash}, which megadrp did not write there and the new "
                              f"export would replace: move them out of the folder, then export again")
        list_export_files(self.tmp)
        old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
        if self.out.exists():
            self.out.rename(old)
        self.tmp.rename(self.out)
        for name in theirs:  # the user's own files stay where they were
            (self.out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(old / name, self.out / name)
        shutil.rmtree(old, ignore_errors=True)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def list_export_files(folder: Path) -> None:
    """Record in the marker every file of the finished export (the marker itself included); called again by a
    writer that adds a file after the folder is in place (oneshot's scores)."""
    marker = folder / EXPORT_MARKER
    doc = json.loads(marker.read_text()) if marker.is_file() else {}
    doc["files"] = sorted(set(_files(folder)) | {EXPORT_MARKER})
    marker.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def _unlisted_files(folder: Path) -> list[str]:
    """Files of an earlier export folder that its marker does not list: not megadrp's, kept on replace. A marker
    of an older megadrp without a list: every file counts as the export's (replaced as before)."""
    try:
        listed = json.loads((folder / EXPORT_MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if listed is None:
        return []
    return [n for n in _files(folder) if n not in set(listed)]
