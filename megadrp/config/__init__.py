"""Run configuration: the typed tree, YAML + dotted overrides, DeepSpeed JSON checks."""
from megadrp.config.deepspeed_check import check_deepspeed_json, resolve_precision
from megadrp.config.loader import apply_override, describe, from_dict, load_config, save_config, to_dict
from megadrp.config.schema import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    DeepSpeedConfig,
    DistillConfig,
    DressConfig,
    DroConfig,
    EvalConfig,
    ExportConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    PruningConfig,
    RunConfig,
    TargetShape,
)

__all__ = [
    "CheckpointConfig", "ConfigError", "DataConfig", "DeepSpeedConfig", "DistillConfig", "DressConfig", "DroConfig",
    "EvalConfig", "ExportConfig", "LoggingConfig", "ModelConfig", "OptimConfig", "PruningConfig", "RunConfig",
    "TargetShape",
    "apply_override", "check_deepspeed_json", "describe", "from_dict", "load_config", "resolve_precision",
    "save_config", "to_dict",
]
