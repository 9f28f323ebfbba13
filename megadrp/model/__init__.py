"""LLaMA-family model for pruning: family registry with HF key maps, ModelShape, the masked decoder, HF I/O."""
from megadrp.model.decoder import MaskedCausalLM
from megadrp.model.families import MODEL_FAMILIES, ModelFamily, family_for_config, get_family
from megadrp.model.hf_io import load_pretrained, read_hf_config, read_shape, resolve_family
from megadrp.model.lazy_weights import read_hf_state_dict
from megadrp.model.shape import ModelShape

__all__ = ["MODEL_FAMILIES", "ModelFamily", "MaskedCausalLM", "ModelShape", "family_for_config", "get_family",
           "load_pretrained", "read_hf_config", "read_hf_state_dict", "read_shape", "resolve_family"]
