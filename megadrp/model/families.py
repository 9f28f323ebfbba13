"""The model-family registry: per family its HF names, its explicit state-dict key map and a tiny debug shape.

Adding a family is adding an entry here, not branching in the model. Internal parameter names are
megadrp's own (see MaskedCausalLM); every HF key is listed explicitly so an unknown or missing key is an error
rather than a silently random weight.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from megadrp.model.shape import ModelShape

# The HF parameter names, spelled here only (LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM share
# them): the key maps below, the export surgery and DReSS's coupled slices all build names with these.
HF_EMBED, HF_FINAL_NORM, HF_LM_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"
HF_PROJ_BLOCK = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                 "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}  # every projection of a layer
HF_ATTN_IN, HF_MLP_IN = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")  # they read the residual stream
HF_LAYER_NORMS = ("input_layernorm", "post_attention_layernorm")


def hf_layer_prefix(i) -> str:
    return f"model.layers.{i}."


def hf_layer_param(i, name: str, kind: str = "weight") -> str:
    """HF name of layer ``i``'s projection ``name`` (a key of HF_PROJ_BLOCK; ``kind`` weight or bias) or norm."""
    if name in HF_LAYER_NORMS:
        return f"{hf_layer_prefix(i)}{name}.weight"
    return f"{hf_layer_prefix(i)}{HF_PROJ_BLOCK[name]}.{name}.{kind}"


# internal name -> HF name; "{i}" is the layer index.
_GLOBAL_KEYS = {"embed_tokens.weight": HF_EMBED, "norm.weight": HF_FINAL_NORM, "lm_head.weight": HF_LM_HEAD}
_LAYER_KEYS = {
    "layers.{i}.input_layernorm.weight": hf_layer_param("{i}", "input_layernorm"),
    "layers.{i}.self_attn.q_weight": hf_layer_param("{i}", "q_proj"),
    "layers.{i}.self_attn.k_weight": hf_layer_param("{i}", "k_proj"),
    "layers.{i}.self_attn.v_weight": hf_layer_param("{i}", "v_proj"),
    "layers.{i}.self_attn.o_weight": hf_layer_param("{i}", "o_proj"),
    "layers.{i}.post_attention_layernorm.weight": hf_layer_param("{i}", "post_attention_layernorm"),
    "layers.{i}.mlp.gate_weight": hf_layer_param("{i}", "gate_proj"),
    "layers.{i}.mlp.up_weight": hf_layer_param("{i}", "up_proj"),
    "layers.{i}.mlp.down_weight": hf_layer_param("{i}", "down_proj"),
}
_QKV_BIAS_KEYS = {
    "layers.{i}.self_attn.q_bias": hf_layer_param("{i}", "q_proj", "bias"),
    "layers.{i}.self_attn.k_bias": hf_layer_param("{i}", "k_proj", "bias"),
    "layers.{i}.self_attn.v_bias": hf_layer_param("{i}", "v_proj", "bias"),
}
# Keys some checkpoints carry that hold no weights (old transformers saved the RoPE buffer).
_IGNORED_HF_KEYS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_LAYER_INDEX = re.compile(r"^model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_type: str  # config.json model_type
    config_class: str  # transformers config class name
    architecture: str  # transformers CausalLM class name (config.json "architectures")
    qkv_bias: bool
    debug_shape: ModelShape
    config_defaults: dict = field(default_factory=dict)  # written into exported config.json

    def hf_config_dict(self, shape: ModelShape) -> dict:
        """A config.json dict of this family for ``shape``; head_dim is always written explicitly, because
        pruning hidden_size or heads keeps the source head_dim."""
        rope = {"rope_theta": shape.rope_theta, "rope_type": "default"}
        if shape.rope_scaling:
            rope.update(shape.rope_scaling)
        d = {
            "architectures": [self.architecture], "model_type": self.model_type, "hidden_act": "silu",
            "vocab_size": shape.vocab_size, "hidden_size": shape.hidden_size,
            "num_attention_heads": shape.num_attention_heads, "num_key_value_heads": shape.num_key_value_heads,
            "head_dim": shape.head_dim, "intermediate_size": shape.intermediate_size,
            "num_hidden_layers": shape.num_hidden_layers, "rms_norm_eps": shape.rms_norm_eps,
            "rope_theta": shape.rope_theta, "rope_parameters": rope,
            "max_position_embeddings": shape.max_position_embeddings,
            "tie_word_embeddings": shape.tie_word_embeddings,
        }
        d.update(self.config_defaults)
        if self.model_type == "llama":
            d["attention_bias"] = False
            d["mlp_bias"] = False
        if shape.sliding_window is not None:
            d["sliding_window"] = shape.sliding_window
            if self.model_type == "qwen2":
                d["use_sliding_window"] = True
        d.update(shape.extra)
        return d

    def key_map(self, num_layers: int, tie_word_embeddings: bool) -> Dict[str, str]:
        """Explicit internal -> HF key map for a model of this many layers."""
        keys = {k: v for k, v in _GLOBAL_KEYS.items() if not (tie_word_embeddings and k == "lm_head.weight")}
        layer_keys = dict(_LAYER_KEYS, **(_QKV_BIAS_KEYS if self.qkv_bias else {}))
        for i in range(num_layers):
            keys.update({k.format(i=i): v.format(i=i) for k, v in layer_keys.items()})
        return keys

    def hf_to_internal(self, hf_sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """HF state dict -> MaskedCausalLM state dict. A tied checkpoint (no lm_head.weight) gets the
        embedding as lm_head.weight, as the model ties them. Missing or unexpected keys raise."""
        layers = {int(m.group(1)) for k in hf_sd if (m := _LAYER_INDEX.match(k))}
        num_layers = max(layers) + 1 if layers else 0
        tied = "lm_head.weight" not in hf_sd
        kmap = self.key_map(num_layers, tied)
        wanted = set(kmap.values())
        unexpected = sorted(k for k in hf_sd if k not in wanted and not _IGNORED_HF_KEYS.fullmatch(k))
        missing = sorted(v for v in wanted if v not in hf_sd)
        if unexpected or missing:
            raise KeyError(f"{self.name} checkpoint does not match the {self.name} key map: "
                           f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                           f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
        if tied:
            kmap = dict(kmap, **{"lm_head.weight": kmap["embed_tokens.weight"]})
        if hasattr(hf_sd, "renamed"):  # lazily read weights (megadrp/model/lazy_weights.py) stay lazy
            return hf_sd.renamed(kmap)
        return {ik: hf_sd[hk] for ik, hk in kmap.items()}

    def internal_to_hf(self, internal_sd: Dict[str, torch.Tensor],
                       tie_word_embeddings: Optional[bool] = None) -> Dict[str, torch.Tensor]:
        """MaskedCausalLM state dict -> HF state dict. With tied embeddings lm_head.weight is left out.
        tie_word_embeddings=None infers it: lm_head absent, or sharing the embedding's storage."""
        if tie_word_embeddings is None:
            lm, emb = internal_sd.get("lm_head.weight"), internal_sd["embed_tokens.weight"]
            tie_word_embeddings = lm is None or (lm.data_ptr() == emb.data_ptr() and lm.shape == emb.shape)
        layers = {int(k.split(".")[1]) for k in internal_sd if k.startswith("layers.")}
        kmap = self.key_map(max(layers) + 1 if layers else 0, tie_word_embeddings)
        missing = sorted(k for k in kmap if k not in internal_sd)
        if missing:
            raise KeyError(f"internal state dict lacks {missing[:8]}")
        return {hk: internal_sd[ik] for ik, hk in kmap.items()}


def _debug(**kw) -> ModelShape:
    base = dict(vocab_size=512, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                intermediate_size=128, num_hidden_layers=4, rms_norm_eps=1e-6, max_position_embeddings=512)
    base.update(kw)
    return ModelShape(**base)


MODEL_FAMILIES: Dict[str, ModelFamily] = {
    "llama": ModelFamily("llama", "llama", "LlamaConfig", "LlamaForCausalLM", qkv_bias=False, debug_shape=_debug()),
    "mistral": ModelFamily("mistral", "mistral", "MistralConfig", "MistralForCausalLM", qkv_bias=False,
                      debug_shape=_debug(), config_defaults={"sliding_window": None}),
    "qwen2": ModelFamily("qwen2", "qwen2", "Qwen2Config", "Qwen2ForCausalLM", qkv_bias=True,
                    debug_shape=_debug(attention_bias=True, rope_theta=1e6),
                    config_defaults={"use_sliding_window": False, "sliding_window": None}),
}


def get_family(name: str) -> ModelFamily:
    if name not in MODEL_FAMILIES:
        raise ValueError(f"unsupported model family {name!r}; supported families: {', '.join(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[name]


def family_for_config(cfg: dict) -> ModelFamily:
    """The family of a config.json dict, from its model_type."""
    mt = cfg.get("model_type")
    for fam in MODEL_FAMILIES.values():
        if fam.model_type == mt:
            return fam
    raise ValueError(f"unsupported model_type {mt!r} in config.json; supported families: "
                     f"{', '.join(f.model_type for f in MODEL_FAMILIES.values())}")
