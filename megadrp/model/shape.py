"""ModelShape: the architecture numbers of a LLaMA-family decoder, named as in Hugging Face configs.

One dataclass shared by the model, the masks (source and target shapes), the trainer and export. It reads
HF config.json dicts (transformers 4 style `rope_theta`/`rope_scaling` or transformers 5 `rope_parameters`);
writing one back is the family's job (``ModelFamily.hf_config_dict``: model_type, architecture, defaults).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

# RoPE variants whose inverse frequencies megadrp computes itself (megadrp/model/rope.py).
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def _as_dict(cfg: Any) -> dict:
    if isinstance(cfg, dict):
        return dict(cfg)
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    raise TypeError(f"expected a HF config dict or PretrainedConfig, got {type(cfg).__name__}")


@dataclass
class ModelShape:
    vocab_size: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    num_hidden_layers: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v biases (qwen2)
    rope_scaling: Optional[dict] = None  # None for plain RoPE; else HF rope parameters with 'rope_type'
    sliding_window: Optional[int] = None  # longer sequences are refused (no sliding-window attention here)
    extra: dict = field(default_factory=dict)  # HF config keys carried through unchanged (bos/eos ids, ...)

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")

    # ---- derived numbers -------------------------------------------------------------------------------
    @property
    def is_gqa(self) -> bool:
        return self.num_key_value_heads < self.num_attention_heads

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def layer_params(self, with_biases: bool = True, with_norms: bool = True) -> int:
        """Parameters of one decoder layer: q,k,v,o + gate,up,down (+ q/k/v biases, + 2 norms)."""
        d, hd, h, g, m = (self.hidden_size, self.head_dim, self.num_attention_heads, self.num_key_value_heads,
                          self.intermediate_size)
        n = 2 * d * hd * (h + g) + 3 * d * m
        if with_biases and self.attention_bias:
            n += hd * (h + 2 * g)
        if with_norms:
            n += 2 * d
        return n

    def num_params(self, include_embeddings: bool = True) -> int:
        """Every parameter of the HF model: layers (matrices, biases, norms), final norm, and, if asked,
        the input embeddings plus the LM head when it is not tied. MaskSet.expected_num_params counts the same."""
        n = self.num_hidden_layers * self.layer_params() + self.hidden_size
        if include_embeddings:
            n += self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return n

    def replace(self, **changes) -> "ModelShape":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelShape":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    # ---- HF configs --------------------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, cfg: Any) -> "ModelShape":
        """From a config.json dict or a transformers PretrainedConfig."""
        c = _as_dict(cfg)
        if c.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {c.get('hidden_act')!r} is not supported (SwiGLU with silu only)")
        if c.get("mlp_bias"):
            raise ValueError("mlp_bias=True is not supported (the masked FFN has no biases)")
        model_type = c.get("model_type", "llama")
        attention_bias = True if model_type == "qwen2" else bool(c.get("attention_bias", False))
        if attention_bias and model_type != "qwen2":
            # LLaMA's attention_bias also adds an o_proj bias, which the hidden mask cannot gate cleanly.
            raise ValueError(f"attention_bias=True is not supported for model_type {model_type!r}")
        h = c["num_attention_heads"]
        g = c.get("num_key_value_heads") or h
        head_dim = c.get("head_dim") or c["hidden_size"] // h
        rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
        rope_theta = float(rope.pop("rope_theta", c.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not supported")
        rope.pop("type", None)
        rope["rope_type"] = rope_type
        sliding = c.get("sliding_window")
        if model_type == "qwen2" and not c.get("use_sliding_window", False):
            sliding = None
        keep = ("bos_token_id", "eos_token_id", "pad_token_id", "initializer_range")
        return cls(
            vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_attention_heads=h, num_key_value_heads=g,
            head_dim=head_dim, intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)), rope_theta=rope_theta,
            max_position_embeddings=c.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)), attention_bias=attention_bias,
            rope_scaling=None if rope_type == "default" else rope, sliding_window=sliding,
            extra={k: c[k] for k in keep if c.get(k) is not None},
        )
