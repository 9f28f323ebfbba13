"""From a run config to the numbers the memory model needs, without weights: shapes, ZeRO set-up, batch.

A model's shape comes from ``model.path/config.json`` when the folder exists; a recipe written before the
weights are downloaded names the model by its Hub name instead (``models/Llama-3.1-70B``), and the table below
holds the published config.json values of the families' common sizes, so ``megadrp plan`` works on a laptop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from megadrp.config import ConfigError
from megadrp.methods import get_method
from megadrp.trainer.build import SELF_TEACHER

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
_LLAMA31 = dict(model_type="llama", vocab_size=128256, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
                max_position_embeddings=131072, rope_scaling=_LLAMA3_ROPE, tie_word_embeddings=False)
_LLAMA2 = dict(model_type="llama", vocab_size=32000, rms_norm_eps=1e-5, max_position_embeddings=4096,
               tie_word_embeddings=False)
# HF config.json values (the Hub's model cards), keyed by the lower-cased folder name without "-hf".
KNOWN_SHAPES = {
    "llama-3.1-70b": dict(_LLAMA31, hidden_size=8192, num_attention_heads=64, num_key_value_heads=8,
                          intermediate_size=28672, num_hidden_layers=80),
    "llama-3.1-8b": dict(_LLAMA31, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=14336, num_hidden_layers=32),
    "llama-2-70b": dict(_LLAMA2, hidden_size=8192, num_attention_heads=64, num_key_value_heads=8,
                        intermediate_size=28672, num_hidden_layers=80),
    "llama-2-13b": dict(_LLAMA2, hidden_size=5120, num_attention_heads=40, num_key_value_heads=40,
                        intermediate_size=13824, num_hidden_layers=40),
    "llama-2-7b": dict(_LLAMA2, hidden_size=4096, num_attention_heads=32, num_key_value_heads=32,
                       intermediate_size=11008, num_hidden_layers=32),
    "qwen2-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, num_attention_heads=12,
                       num_key_value_heads=2, intermediate_size=8960, num_hidden_layers=28, rms_norm_eps=1e-6,
                       rope_theta=1e6, max_position_embeddings=131072, tie_word_embeddings=True),
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, num_hidden_layers=30, rms_norm_eps=1e-5,
                         rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True),
}


def shape_of(path: str, field: str = "model.path"):
    """ModelShape of a Hugging Face folder, or of a known model named by the folder's last component."""
    from megadrp.model import ModelShape

    if path and Path(path, "config.json").is_file():
        from megadrp.model import read_shape

        return read_shape(path)[0]
    key = Path(path or "").name.lower().removesuffix("-hf")
    if key in KNOWN_SHAPES:
        return ModelShape.from_hf_config(KNOWN_SHAPES[key])
    raise ConfigError(field, path, "has no config.json and does not name a known shape "
                      f"({', '.join(sorted(KNOWN_SHAPES))}); give a Hugging Face folder (config.json is enough)")


def _teacher(cfg, method, shape):
    """(teacher ModelShape of a separate copy or None, whether a teacher pass's logits exist) from the
    ``distill`` section, read defensively: a config without one has no teacher."""
    distill = getattr(cfg, "distill", None)
    if distill is None or not float(getattr(distill, "alpha", 0.0) or 0.0) > 0:
        return None, False
    path = getattr(distill, "teacher", "") or ""
    if path:
        return shape_of(path, "distill.teacher"), True
    if method.empty_teacher == SELF_TEACHER:  # the masked model's own all-masks-1 pass: no second copy
        return None, True
    return shape, True  # a frozen copy of model.path (dress; a method without a default is refused in pre-flight)


def _teacher_of_inputs(inputs):
    """The same pair from a pre-flight's resolved teacher (megadrp.trainer.build.TeacherSpec or None)."""
    spec = inputs.teacher
    if spec is None:
        return None, False
    return (None if spec.kind == "self" else spec.shape), True


def run_shape(cfg, gpus: int, precision: Optional[str] = None, ds_config: Optional[dict] = None,
              gpu_memory_gib: Optional[float] = None, inputs=None):
    """The RunShape of ``cfg`` on ``gpus`` data-parallel ranks (precision resolved for GPUs unless given; a ZeRO
    stage "auto" resolved for GPUs of ``gpu_memory_gib``). ``inputs``: a run's pre-flight RunInputs, whose
    precision, DeepSpeed JSON, shapes and teacher are used as resolved (the trainer's start-up check)."""
    from megadrp.config import check_deepspeed_json, resolve_precision
    from megadrp.config.deepspeed_check import deepspeed_json_precision
    from megadrp.plan.estimate import RunShape, ZeroSetup

    if inputs is not None:
        precision, ds_config = inputs.precision, inputs.ds_config
    if precision is None:
        precision = resolve_precision(cfg.deepspeed.precision, "cuda", deepspeed_json_precision(cfg.deepspeed.config))
    shape = inputs.shape if inputs is not None else shape_of(cfg.model.path)
    if ds_config is None:
        from megadrp.config.zero_stage import resolve_zero_stage

        ds_config = check_deepspeed_json(cfg.deepspeed.config, cfg.optim, precision, gpus)
        # a "stage": "auto" JSON: the stage the trainer would pick on GPUs of this memory (80 GiB if not given)
        resolve_zero_stage(ds_config, shape.num_params(), gpus, precision, "cuda",
                           device_bytes=int((gpu_memory_gib or 80.0) * 2 ** 30))
    method = get_method(cfg.mode)
    target, mask_params = None, 0
    if inputs is not None:
        target = inputs.target_shape
    elif method.needs_target:
        from megadrp.masks import resolve_target

        target = resolve_target(shape, cfg.pruning.target)
    if method.masked_forward:
        from megadrp.masks import Lagrangian, MaskSet

        masks = MaskSet(shape, target)  # log_alpha tensors only: a few MB even at 70B
        mask_params = sum(p.numel() for p in masks.parameters())
        mask_params += sum(p.numel() for p in Lagrangian(masks.families).parameters())
    teacher, teacher_logits = _teacher_of_inputs(inputs) if inputs is not None else _teacher(cfg, method, shape)
    return RunShape(shape=shape, target=target, precision=precision, zero=ZeroSetup.from_ds_config(ds_config),
                    gpus=gpus, micro_batch=cfg.optim.micro_batch_size,
                    accumulation=cfg.optim.gradient_accumulation_steps, seq_length=cfg.data.seq_length,
                    activation_checkpointing=cfg.model.activation_checkpointing, mask_params=mask_params,
                    teacher=teacher, teacher_logits=teacher_logits, masked=method.masked_forward,
                    fused_loss=bool(getattr(cfg.model, "fused_cross_entropy", False)) and not teacher_logits,
                    max_steps=cfg.optim.max_steps)
