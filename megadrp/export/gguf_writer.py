"""A GGUF file of an exported Hugging Face folder (``megadrp export --gguf f16|q8_0``), for llama.cpp and its kin.

Written with ``gguf`` (llama.cpp's own Python package) the way llama.cpp's ``convert_hf_to_gguf.py`` writes a
Llama-architecture model (Llama, Mistral: arch ``llama``): the same tensor names, the query and key rows
permuted into llama.cpp's rotary layout, 1-D tensors (norms) in f32, the 2-D weights in f16 or q8_0 (a row whose
length is no multiple of 32 cannot be q8_0 and stays f16), and the byte-level BPE tokenizer (``gpt2``: tokens,
types, merges, special token ids) with the chat template of ``tokenizer_config.json``.

``verify`` reads the file back with transformers' GGUF loader and compares its logits with the folder's on a
fixed text: the largest difference within 1% (f16) or 5% (q8_0) of the largest logit, and the same greedy next
token at 90% of the positions at least (docs/EXPORT.md, GGUF).
"""
from __future__ import annotations

import json
from pathlib import Path

GGUF_TYPES = {"f16": 1, "q8_0": 7}  # llama.cpp's LlamaFileType: MOSTLY_F16, MOSTLY_Q8_0
# Largest |logit difference| verify allows, as a fraction of the largest |logit|: f16 rounds every weight to 11
# significant bits, q8_0 each block of 32 to 8 bits with one f16 scale.
TOLERANCE = {"f16": 0.01, "q8_0": 0.05}
LLAMA_ARCHS = ("llama", "mistral")
_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}


def gguf_name(folder, quant: str) -> Path:
    return Path(folder) / f"{Path(folder).resolve().name}.{quant}.gguf"


def _permute(w, heads: int):
    """llama.cpp's rotary layout of q/k rows (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_name(hf: str) -> str | None:
    if hf in _TOP:
        return _TOP[hf]
    parts = hf.split(".")
    if parts[:2] == ["model", "layers"]:
        key = ".".join(parts[3:-1])
        if key in _LAYER:
            return f"blk.{parts[2]}.{_LAYER[key]}.{parts[-1]}"
    return None


def _tokenizer(writer, folder: Path, vocab_size: int) -> None:
    import gguf

    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    if tok["model"]["type"] != "BPE":
        raise ValueError(f"{folder}/tokenizer.json is a {tok['model']['type']} tokenizer; GGUF export writes "
                         "byte-level BPE (gpt2) tokenizers only")
    vocab = dict(tok["model"]["vocab"])
    special = {}
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        if added.get("special"):
            special[added["id"]] = added["content"]
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for text, i in vocab.items():
        if i < vocab_size:
            tokens[i] = text
            types[i] = gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    cfg_path = folder / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    ids = {text: i for text, i in vocab.items()}
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("unk_token", writer.add_unk_token_id), ("pad_token", writer.add_pad_token_id)):
        value = tcfg.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if value in ids:
            add(ids[value])
    writer.add_add_bos_token(bool(tcfg.get("add_bos_token", False)))
    template = tcfg.get("chat_template")
    if not template and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if template:
        writer.add_chat_template(template)


def write_gguf(folder, quant: str = "f16", out=None) -> Path:
    """Write FOLDER (an HF Llama/Mistral folder, e.g. a megadrp export) as one GGUF file; returns its path."""
    import gguf
    import numpy as np
    import torch
    from safetensors.torch import load_file

    if quant not in GGUF_TYPES:
        raise ValueError(f"GGUF type {quant!r}: choose one of {', '.join(GGUF_TYPES)}")
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if cfg.get("model_type") not in LLAMA_ARCHS:
        raise ValueError(f"GGUF export writes the llama architecture (Llama, Mistral); {folder} is "
                         f"{cfg.get('model_type')!r}: convert it with llama.cpp's convert_hf_to_gguf.py instead")
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    out = Path(out) if out else gguf_name(folder, quant)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(folder.resolve().name)
    writer.add_context_length(cfg.get("max_position_embeddings", 2048))
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != cfg["hidden_size"] // heads:  # a cut of the heads keeps their width, not hidden / heads
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    writer.add_rope_freq_base(float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
                                    or 10000.0))
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(GGUF_TYPES[quant])
    _tokenizer(writer, folder, cfg["vocab_size"])
    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    if cfg.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when output.weight is absent
    for hf, tensor in state.items():
        name = _tensor_name(hf)
        if name is None:
            raise ValueError(f"{hf}: no GGUF tensor name for it (llama architecture)")
        data = tensor.to(torch.float32).numpy()
        if hf.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif hf.endswith("k_proj.weight"):
            data = _permute(data, kv)
        if data.ndim == 1:
            writer.add_tensor(name, data.astype(np.float32))
        elif quant == "q8_0" and data.shape[-1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, data.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def verify(folder, gguf_file, quant: str, text: str = "The capital of France is Paris. def fibonacci(n):") -> dict:
    """transformers' GGUF loader reads GGUF_FILE back; its logits against FOLDER's on TEXT. Raises ValueError when
    they differ by more than the quantisation's tolerance or the greedy next token differs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok(text, return_tensors="pt").input_ids
    ref = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    back = AutoModelForCausalLM.from_pretrained(str(Path(gguf_file).parent), gguf_file=Path(gguf_file).name,
                                                dtype=torch.float32).eval()
    with torch.no_grad():
        a, b = ref(ids).logits[0], back(ids).logits[0]
    diff, scale = (a - b).abs().max().item(), a.abs().max().item()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    out = {"quant": quant, "max_abs_logit_diff": diff, "max_abs_logit": scale, "tolerance": TOLERANCE[quant] * scale,
           "tokens": ids.shape[1], "greedy_agreement": agree}
    if diff > TOLERANCE[quant] * scale or agree < 0.9:
        raise ValueError(f"{gguf_file} read back by transformers differs from {folder}: {out}")
    return out
