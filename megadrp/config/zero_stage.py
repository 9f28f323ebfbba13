"""ZeRO stage ``"auto"``: shard no more than the model's states need.

ZeRO-3 gathers and releases every module's parameters around its forward and backward. With 8+ ranks that
traffic overlaps the matmuls; on one GPU it has nobody to shard with and halves the step rate (0.94B LLaMA on
one H100: 20% MFU under ZeRO-3 against 42% on plain torch, docs/BENCHMARKS.md). A DeepSpeed JSON whose
``zero_optimization.stage`` is ``"auto"`` (ds_configs/auto.json, the default) gets the lowest stage whose
per-rank model states (weights, gradients, fp32 master copy and Adam moments; Rajbhandari et al., 2020, sec. 3)
fit in FIT_FRACTION of one device's memory, the rest left to activations. A number in the JSON pins the stage.

Stage 0 is never chosen: its checkpoints carry no ZeRO optimizer shards, which export consolidates the weights
from (megadrp/export/consolidate.py). Stage 1 at world size 1 partitions over one rank, i.e. not at all.
A JSON that offloads to the CPU keeps stage 3 (offloading parameters needs it; the JSON asked for memory).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

# Model states may take this fraction of one device's memory; activations, the logits chunk and the
# allocator's fragmentation need the rest.
FIT_FRACTION = 0.5
# fp32 master weights (4 bytes) + Adam's two fp32 moments (8 bytes) per parameter.
OPTIMIZER_BYTES = 12
_WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def model_state_bytes(num_params: int, stage: int, world_size: int, precision: str) -> float:
    """Bytes of model states per rank under ZeRO ``stage`` (1-3) over ``world_size`` ranks."""
    w = g = _WEIGHT_BYTES[precision]
    o = OPTIMIZER_BYTES
    per_param = {1: w + g + o / world_size, 2: w + (g + o) / world_size, 3: (w + g + o) / world_size}[stage]
    return num_params * per_param


def device_memory_bytes(device_type: str, world_size: int) -> int:
    """Memory of the device one rank trains on: the GPU's, or on CPU the host's RAM shared by the local ranks."""
    if device_type == "cuda":
        return torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, local)


def choose_stage(num_params: int, world_size: int, precision: str, device_bytes: int) -> Tuple[int, str]:
    """(stage, reason): the lowest of stages 1-3 whose model states fit FIT_FRACTION of ``device_bytes``."""
    budget = FIT_FRACTION * device_bytes
    for stage in (1, 2, 3):
        need = model_state_bytes(num_params, stage, world_size, precision)
        if need <= budget or stage == 3:
            fits = "fit" if need <= budget else "do not fit"
            return stage, (f"auto: model states {need / 2 ** 30:.2f} GiB per rank {fits} in "
                           f"{FIT_FRACTION:.0%} of {device_bytes / 2 ** 30:.0f} GiB at world size {world_size}")
    raise AssertionError("unreachable")


def resolve_zero_stage(ds_config: dict, num_params: int, world_size: int, precision: str, device_type: str,
                       device_bytes: Optional[int] = None) -> str:
    """Replace a ``"stage": "auto"`` in ``ds_config`` (in place) by the chosen stage; returns the reason
    ('' for a pinned stage). Stage-3-only settings are dropped when a lower stage is chosen."""
    zero = ds_config.setdefault("zero_optimization", {})
    if zero.get("stage", 0) != "auto":
        return ""
    if "offload_param" in zero or "offload_optimizer" in zero:
        zero["stage"] = 3
        return "auto: the JSON offloads to the CPU, which keeps stage 3"
    if device_bytes is None:
        device_bytes = device_memory_bytes(device_type, world_size)
    stage, reason = choose_stage(num_params, world_size, precision, device_bytes)
    zero["stage"] = stage
    if stage < 3:
        for key in [k for k in zero if k.startswith("stage3_")]:
            del zero[key]
    return reason
