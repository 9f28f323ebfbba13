"""Everything a run is built from, resolved and checked *before* any process group, model or engine exists.

Pre-flight checks (each a plain error naming the field and the fix): the DeepSpeed JSON against the run
config and the world size (batch arithmetic, precision, no DeepSpeed optimizer/scheduler), a ZeRO stage "auto"
resolved from the model's size (config/zero_stage.py); the source model's
config; the target shape against the source (prune mode); the training / held-out binaries present and made
with the run's tokenizer, every token id inside the model's vocabulary, every domain long enough for one
sample. (The distillation teacher's checks, megadrp/distill/teacher.py, run right after, from train.py: distill
sits on the trainer. Where the run starts, resume vs fresh and the checkpoint's config, is
megadrp.trainer.resume_check.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megadrp.config import ConfigError, check_deepspeed_json, resolve_precision
from megadrp.config.zero_stage import resolve_zero_stage


@dataclass
class Plan:
    ds_config: dict
    precision: str
    world_size: int
    shape: object  # ModelShape of the model trained (the source in prune mode)
    family: object
    weights_path: str  # HF folder the initial weights come from
    tokenizer_path: str
    datasets: dict
    eval_datasets: dict
    token_counts: list
    target_shape: Optional[object] = None
    zero_reason: str = ""  # why the ZeRO stage was chosen ('' when the JSON pins it)
    teacher: Optional[object] = None  # megadrp.distill.TeacherSpec (set by train.py); None: distillation off
    reference: Optional[object] = None  # TeacherSpec of the model DRO's l_ref is measured on; None: the starting one
    data_fingerprint: Optional[dict] = None  # {domain: megadrp.data.fingerprint}: recorded in checkpoints


def preflight(cfg, world_size: Optional[int] = None) -> Plan:
    from megadrp.data import load_domain_datasets
    from megadrp.model import read_shape

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg.deepspeed.precision, device_type)
    ds_config = check_deepspeed_json(cfg.deepspeed.config, cfg.optim, precision, world)

    if not cfg.model.path:
        raise ConfigError("model.path", cfg.model.path, "give the source model's Hugging Face folder")
    if not Path(cfg.model.path, "config.json").is_file():
        raise ConfigError("model.path", cfg.model.path, "has no config.json; give a Hugging Face model folder")
    shape, family = read_shape(cfg.model.path, cfg.model.family)
    zero_reason = resolve_zero_stage(ds_config, shape.num_params(), world, precision, device_type)
    if cfg.model.compile and int(ds_config.get("zero_optimization", {}).get("stage", 0)) == 3:
        raise ConfigError("model.compile", True, "is not supported under ZeRO-3 (its per-module parameter hooks): "
                          "use a ZeRO stage of 0-2 (ds_configs/auto.json picks 1 where the model fits)")
    weights_path = cfg.model.path
    init_from = cfg.checkpoint.init_from
    if init_from and Path(init_from, "config.json").is_file():
        init_shape, _ = read_shape(init_from, cfg.model.family)
        if init_shape != shape:
            raise ConfigError("checkpoint.init_from", init_from, f"has shape {init_shape}, model.path has {shape}")
        weights_path = init_from
    target = None
    if cfg.mode in ("prune", "oneshot"):
        from megadrp.masks import active_families, resolve_target

        target = resolve_target(shape, cfg.pruning.target)
        if not active_families(shape, target):
            raise ConfigError("pruning.target", cfg.pruning.target, "equals the source shape: nothing to prune")

    if not cfg.data.prefix:
        raise ConfigError("data.prefix", cfg.data.prefix, "give the prefix of the training binaries PREFIX_DOMAIN.bin")
    if not cfg.data.domains:
        raise ConfigError("data.domains", cfg.data.domains, "list the domain names, e.g. [code, math, web]")
    if cfg.data.seq_length > shape.max_position_embeddings:
        raise ConfigError("data.seq_length", cfg.data.seq_length,
                          f"exceeds the model's max_position_embeddings ({shape.max_position_embeddings})")
    tokenizer = cfg.data.tokenizer or cfg.model.path
    datasets = load_domain_datasets(cfg.data.prefix, cfg.data.domains, tokenizer=tokenizer)
    eval_datasets = {}
    if cfg.data.eval_prefix:
        eval_datasets = load_domain_datasets(cfg.data.eval_prefix, cfg.data.domains, tokenizer=tokenizer)
    # load_domain_datasets checked every id against the tokenizer; the tokenizer must fit the embedding.
    from megadrp.data.tokenizer import load_tokenizer

    tok_vocab = load_tokenizer(tokenizer).vocab_size
    if tok_vocab > shape.vocab_size:
        raise ConfigError("data.tokenizer", tokenizer, f"has {tok_vocab} tokens but the model's embedding has "
                          f"{shape.vocab_size}; use the model's own tokenizer")
    # The sampler would find this only after the engine is built (minutes at 7B): one sample needs T + 1 tokens.
    short = [f"{d} ({ds.num_tokens} tokens in {ds.bin_file})" for d, ds in datasets.items()
             if ds.num_tokens < cfg.data.seq_length + 1]
    if short:
        raise ConfigError("data.domains", list(cfg.data.domains),
                          f"too few tokens for one training sample of seq_length + 1 = {cfg.data.seq_length + 1}: "
                          f"{', '.join(short)}; add data to that domain, drop it, or lower data.seq_length")
    counts = [float(ds.num_tokens) for ds in datasets.values()]
    from megadrp.data.fingerprint import fingerprint

    return Plan(ds_config=ds_config, precision=precision, world_size=world, shape=shape, family=family,
                weights_path=weights_path, tokenizer_path=tokenizer, datasets=datasets, eval_datasets=eval_datasets,
                token_counts=counts, target_shape=target, zero_reason=zero_reason,
                data_fingerprint={d: fingerprint(ds.prefix) for d, ds in datasets.items()})
