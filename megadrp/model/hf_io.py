"""Hugging Face folder I/O: read config.json, and build a MaskedCausalLM from a folder's config and weights
(read by megadrp.model.lazy_weights). Never runs remote code.

The two halves (the weights, megadrp.model.lazy_weights; ModelFamily.hf_to_internal) are public so the trainer can
load under ZeRO-3 (gathering each parameter itself) without going through load_pretrained.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple, Union

import torch

from megadrp.model.decoder import MaskedCausalLM
from megadrp.model.families import ModelFamily, family_for_config, get_family
from megadrp.model.lazy_weights import open_hf_weights, shape_of
from megadrp.model.shape import ModelShape

PathLike = Union[str, Path]


def read_hf_config(path: PathLike) -> dict:
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        raise FileNotFoundError(f"{cfg} not found: expected a Hugging Face model folder")
    try:
        return json.loads(cfg.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{cfg} is not valid JSON ({err}); restore the model's config.json (download it "
                         f"again)") from None


def resolve_family(path_or_config: Union[PathLike, dict], family: str = "auto") -> ModelFamily:
    """The ModelFamily of a folder (or config dict); 'auto' reads config.json's model_type."""
    cfg = path_or_config if isinstance(path_or_config, dict) else read_hf_config(path_or_config)
    if family == "auto":
        return family_for_config(cfg)
    fam = get_family(family)
    if cfg.get("model_type") not in (None, fam.model_type):
        raise ValueError(f"family {family!r} asked for, but config.json has model_type {cfg.get('model_type')!r}")
    return fam


def read_shape(path: PathLike, family: str = "auto") -> Tuple[ModelShape, ModelFamily]:
    """(shape, family) of an HF folder: the family first, so a model of another architecture (GPT-2, ...) is named
    as an unsupported model_type rather than by the first field it lacks."""
    cfg = read_hf_config(path)
    fam = resolve_family(cfg, family)
    try:
        return ModelShape.from_hf_config(cfg), fam
    except KeyError as err:
        raise ValueError(f"{Path(path) / 'config.json'} lacks the field {err.args[0]!r}, which a {fam.model_type} "
                         f"config.json has; restore the model's config.json (download it again)") from None


def load_pretrained(path: PathLike, family: str = "auto", dtype: torch.dtype = torch.float32,
                    **model_kwargs) -> MaskedCausalLM:
    """A MaskedCausalLM with the folder's weights (cast to dtype). model_kwargs go to MaskedCausalLM."""
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
