"""The DeepSpeed engine: the model built under ``zero.Init``, HF weights streamed in, ``deepspeed.initialize``.

ZeRO-3 partitions each parameter as it is created inside ``zero.Init``, so a 7B model never exists whole on
one rank. The source weights are read on rank 0 only, one tensor at a time from the safetensors shards
(megadrp/model/lazy_weights.py, so host memory holds one source tensor, not the model), and copied inside
``GatheredParameters(modifier_rank=0)``, which re-partitions rank 0's values to every rank on exit. Loading
happens *before* ``initialize``: ZeRO's fp32 master copy is made from the parameters then (an edit after it
would be overwritten at the next step from the master copy; docs/TRAINING.md).
"""
from __future__ import annotations

from typing import Optional

import torch

from megadrp.trainer import dist

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def build_model(shape, family, ds_config: dict, precision: str, model_cfg):
    """MaskedCausalLM constructed under zero.Init (ZeRO-3) in the training dtype; weights uninitialised."""
    import deepspeed

    from megadrp.kernels.backend import set_backend
    from megadrp.model import MaskedCausalLM

    set_backend(model_cfg.use_kernels)  # every masked op of this process (training and periodic eval)
    dtype = DTYPES[precision]
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=zero_stage(ds_config) == 3):
        model = MaskedCausalLM(shape, family, dtype=dtype,
                               activation_checkpointing=model_cfg.activation_checkpointing,
                               attn_backend=model_cfg.attn_backend)
    if model_cfg.compile:  # preflight refused it under ZeRO-3
        for layer in model.layers:  # regional compilation: the layers share one code object, so one graph
            layer.compile()
    return model


def _read_source_weights(path: str, family):
    """{internal name: tensor}, read one tensor at a time on access (safetensors; .bin is read whole)."""
    from megadrp.model.lazy_weights import open_hf_weights

    return family.hf_to_internal(open_hf_weights(path))


def load_source_weights(model, path: str, family, ds_config: dict, read=None) -> None:
    """Copy the HF folder's weights into the (possibly partitioned) model; checked on rank 0, error on all ranks.
    ``read(path, family) -> {internal name: tensor}`` replaces the HF reader (e.g. a consolidated checkpoint)."""
    import deepspeed

    from megadrp.model.lazy_weights import shape_of

    zero3 = zero_stage(ds_config) == 3
    state: Optional[dict] = None
    error = ""
    if dist.is_main():
        try:
            state = (read or _read_source_weights)(path, family)
            for name, p in model.named_parameters():
                want = tuple(getattr(p, "ds_shape", p.shape))
                if name not in state:
                    raise KeyError(f"{path}: no weight for {name}")
                if shape_of(state, name) != want:
                    raise ValueError(f"{path}: {name} has shape {shape_of(state, name)}, the model expects {want}")
        except Exception as err:  # reported on every rank so none waits in a collective
            error = f"{type(err).__name__}: {err}"
    error = dist.all_gather_object(error)[0]
    if error:
        raise RuntimeError(f"cannot load source weights: {error}")
    for name, p in model.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0, enabled=zero3):
            if dist.is_main():
                with torch.no_grad():
                    p.data.copy_(state[name].to(device=p.device, dtype=p.dtype))


def initialize(model, optimizer, ds_config: dict):
    """deepspeed.initialize with the client optimizer and no DeepSpeed scheduler (the LR is set client-side)."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config,
                                           dist_init_required=False)
    return engine


def initialize_frozen(model, ds_config: dict):
    """A frozen model's engine (a teacher, a reference): no optimizer, so under ZeRO-3 a parameter-offload engine
    whose hooks gather the partitioned weights layer by layer, without optimizer state."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, config=ds_config, dist_init_required=False)
    return engine


def gather_full_state_dict(module, keep: bool) -> dict:
    """The module's whole fp32 weights on this rank's CPU when ``keep`` ({} otherwise). Collective under ZeRO-3:
    one parameter is gathered at a time and only a keeping rank copies it, so no other rank ever holds more than
    one gathered parameter (keeping on every rank would cost the whole model per rank: ~28 GB at 7B)."""
    import deepspeed

    out = {}
    for name, p in module.named_parameters():
        if hasattr(p, "ds_id"):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if keep:
                    out[name] = p.detach().float().cpu().clone()
        elif keep:
            out[name] = p.detach().float().cpu()
    return out
