"""Hugging Face folder I/O: read config.json and weights (safetensors, sharded or not, or pytorch_model.bin),
and build a MaskedCausalLM from them. Never runs remote code; torch.load only with weights_only=True.

The two halves (read_hf_state_dict, Family.hf_to_internal) are public so the trainer can load under ZeRO-3
(gathering each parameter itself) without going through load_pretrained.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple, Union

import torch

from megadrp.model.decoder import MaskedCausalLM
from megadrp.model.families import Family, family_for_config, get_family
from megadrp.model.shape import ModelShape

PathLike = Union[str, Path]


def read_hf_config(path: PathLike) -> dict:
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        raise FileNotFoundError(f"{cfg} not found: expected a Hugging Face model folder")
    return json.loads(cfg.read_text())


def resolve_family(path_or_config: Union[PathLike, dict], family: str = "auto") -> Family:
    """The Family of a folder (or config dict); 'auto' reads config.json's model_type."""
    cfg = path_or_config if isinstance(path_or_config, dict) else read_hf_config(path_or_config)
    if family == "auto":
        return family_for_config(cfg)
    fam = get_family(family)
    if cfg.get("model_type") not in (None, fam.model_type):
        raise ValueError(f"family {family!r} asked for, but config.json has model_type {cfg.get('model_type')!r}")
    return fam


def read_shape(path: PathLike, family: str = "auto") -> Tuple[ModelShape, Family]:
    cfg = read_hf_config(path)
    return ModelShape.from_hf_config(cfg), resolve_family(cfg, family)


def _load_file(f: Path) -> Dict[str, torch.Tensor]:
    if f.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(f))
    return torch.load(f, map_location="cpu", weights_only=True)


def read_hf_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """{hf_key: tensor} on CPU from model.safetensors[.index.json] or pytorch_model.bin[.index.json]: the whole
    model in host memory. Loaders that copy tensor by tensor use megadrp.model.lazy_weights.open_hf_weights."""
    p = Path(path)
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (p / index).exists():
            shards = sorted(set(json.loads((p / index).read_text())["weight_map"].values()))
            sd = {}
            for shard in shards:
                sd.update(_load_file(p / shard))
            return sd
        if (p / single).exists():
            return _load_file(p / single)
    raise FileNotFoundError(f"no model.safetensors, pytorch_model.bin or their index json in {p}")


def load_pretrained(path: PathLike, family: str = "auto", dtype: torch.dtype = torch.float32,
                    **model_kwargs) -> MaskedCausalLM:
    """A MaskedCausalLM with the folder's weights (cast to dtype). model_kwargs go to MaskedCausalLM."""
    from megadrp.model.lazy_weights import open_hf_weights, shape_of

    shape, fam = read_shape(path, family)
    internal = fam.hf_to_internal(open_hf_weights(path))
    model = MaskedCausalLM(shape, fam, dtype=dtype, **model_kwargs)
    own = model.state_dict()
    if set(own) != set(internal):
        raise KeyError(f"{path}: weights {sorted(set(internal) ^ set(own))[:8]} do not match the model's parameters")
    for k in own:
        if tuple(own[k].shape) != shape_of(internal, k):
            raise ValueError(f"{k}: checkpoint shape {shape_of(internal, k)} != config shape {tuple(own[k].shape)}")
    with torch.no_grad():  # one source tensor in memory at a time (safetensors), besides the model itself
        for k, t in own.items():
            t.copy_(internal[k])
    return model
