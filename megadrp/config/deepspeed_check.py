"""Check a DeepSpeed JSON against the run config and resolve it into the dict DeepSpeed gets.

The batch arithmetic (global = micro x accumulation x data-parallel size) and the precision are
checked before any work starts: a mismatch otherwise surfaces as a DeepSpeed assertion deep in
``initialize`` or, worse, as silently different training. Fields written ``"auto"`` are filled
from the run config; fields given explicitly must agree with it.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from megadrp.config.schema import ConfigError


def _shipped_ds_configs() -> Path:
    """The DeepSpeed JSONs shipped with megadrp: the repository's top-level ds_configs/ in a source checkout (or an
    editable install), and the same files as package data megadrp/ds_configs/ in a wheel (setup.py maps them)."""
    package = Path(__file__).resolve().parents[1]
    in_wheel = package / "ds_configs"
    return in_wheel if in_wheel.is_dir() else package.parent / "ds_configs"


SHIPPED_DS_CONFIGS = _shipped_ds_configs()


def resolve_ds_config_path(path: str) -> str:
    """The file a ``deepspeed.config`` names: the path itself (absolute, or from the working directory) when it
    exists, else for ``ds_configs/NAME.json`` (or a bare ``NAME.json``) the shipped ds_configs/NAME.json,
    so recipes work from any directory and from an installed wheel."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return path
    if p.parent in (Path("."), Path("ds_configs")) and (SHIPPED_DS_CONFIGS / p.name).is_file():
        return str(SHIPPED_DS_CONFIGS / p.name)
    return path


def resolve_precision(requested: str, device_type: str, json_precision: str = "auto") -> str:
    """The weights' dtype, which the JSON must train in: 'auto' is bf16 on accelerators, unless the DeepSpeed JSON
    fixes its own (``json_precision``, e.g. ds_configs/zero3_cpu.json: fp32), which leaves 'auto' no choice; on CPU
    'auto' and 'bf16' store fp32 weights (bf16 runs there as autocast over them, megadrp/trainer/precision.py)."""
    if device_type == "cpu" and requested in ("auto", "bf16"):
        return "fp32"
    if requested != "auto":
        return requested
    return "bf16" if json_precision == "auto" else json_precision


def _json_precision(ds: dict) -> str:
    if ds.get("bf16", {}).get("enabled") is True:
        return "bf16"
    if ds.get("fp16", {}).get("enabled") is True:
        return "fp16"
    if ds.get("bf16", {}).get("enabled") == "auto" or ds.get("fp16", {}).get("enabled") == "auto":
        return "auto"
    return "fp32"


def _load(path_or_dict) -> tuple[dict, str]:
    """(a copy of the DeepSpeed config, where it came from); a missing or broken file is a ConfigError."""
    if isinstance(path_or_dict, dict):
        return copy.deepcopy(path_or_dict), "<dict>"
    src = resolve_ds_config_path(path_or_dict)
    if not os.path.exists(src):
        shipped = ", ".join(f"ds_configs/{p.name}" for p in sorted(SHIPPED_DS_CONFIGS.glob("*.json")))
        raise ConfigError("deepspeed.config", src, f"file not found (relative paths start from the working "
                                                   f"directory); shipped with megadrp: {shipped}")
    with open(src, encoding="utf-8") as fh:
        try:
            return json.load(fh), src
        except json.JSONDecodeError as err:
            raise ConfigError("deepspeed.config", src, f"is not valid JSON: {err}") from err


def deepspeed_json_precision(path_or_dict) -> str:
    """The precision a DeepSpeed JSON fixes ('bf16' | 'fp16' | 'fp32'), or 'auto' when it leaves it to the run."""
    return _json_precision(_load(path_or_dict)[0])


def check_deepspeed_json(path_or_dict, optim, precision: str, world_size: int) -> dict:
    """Return the resolved DeepSpeed config, or raise ConfigError naming the mismatch and the fix.

    ``optim`` is the run's OptimConfig, ``precision`` the resolved precision ('bf16'|'fp16'|'fp32'),
    ``world_size`` the data-parallel size.
    """
    ds, src = _load(path_or_dict)
    micro, accum = optim.micro_batch_size, optim.gradient_accumulation_steps
    expected_global = micro * accum * world_size
    if optim.global_batch_size is not None and optim.global_batch_size != expected_global:
        if optim.global_batch_size % (micro * world_size) == 0:
            fix = f"set optim.gradient_accumulation_steps={optim.global_batch_size // (micro * world_size)}"
        else:
            fix = (f"the global batch must be a multiple of micro_batch_size x world size "
                   f"= {micro * world_size}")
        raise ConfigError("optim.global_batch_size", optim.global_batch_size,
                          f"micro_batch_size ({micro}) x gradient_accumulation_steps ({accum}) x data-parallel "
                          f"size ({world_size}) = {expected_global}; {fix}")

    for key, want in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", accum),
                      ("train_batch_size", expected_global)):
        have = ds.get(key, "auto")
        if have == "auto":
            ds[key] = want
        elif have != want:
            raise ConfigError(f"deepspeed.config:{key}", have,
                              f"{src} says {have} but the run config gives {want} (micro {micro} x accumulation "
                              f"{accum} x world size {world_size}); set it to \"auto\" or make them agree")

    have_prec = _json_precision(ds)
    if have_prec == "auto":
        ds["bf16"] = {"enabled": precision == "bf16"}
        ds["fp16"] = {**ds.get("fp16", {}), "enabled": precision == "fp16"}
        if precision != "fp16":
            ds.pop("fp16")
    elif have_prec != precision:
        raise ConfigError("deepspeed.precision", precision,
                          f"{src} trains in {have_prec}; set deepspeed.precision={have_prec} or use a JSON for "
                          f"{precision} (e.g. ds_configs/zero3_cpu.json for fp32 on CPU)")

    clip = ds.get("gradient_clipping", "auto")
    ds["gradient_clipping"] = optim.grad_clip if clip == "auto" else clip
    if ds["gradient_clipping"] != optim.grad_clip:
        raise ConfigError("deepspeed.config:gradient_clipping", clip,
                          f"{src} clips at {clip} but optim.grad_clip is {optim.grad_clip}; "
                          "make them agree or use \"auto\"")
    for forbidden in ("optimizer", "scheduler"):
        if forbidden in ds:
            raise ConfigError(f"deepspeed.config:{forbidden}", ds[forbidden],
                              "megadrp builds its own optimizer groups (weights, log_alpha, ascending multipliers) "
                              "and schedules; remove this section (DeepSpeed schedulers overwrite every group's LR)")
    ds.setdefault("steps_per_print", 10 ** 9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds
