"""`megadrp export FOLDER --gguf f16 q8_0`: GGUF files that transformers' GGUF loader reads back to the folder's
logits (megadrp/export/gguf_writer.py), with the tokenizer and chat template, for a cut shape whose heads keep
their width (head_dim != hidden / heads) and for tied embeddings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from megadrp.export.cli import main
from megadrp.export.gguf_writer import gguf_name
from tests.helpers.tiny_models import make_tiny_hf_model

TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def _field(reader, key):
    f = reader.get_field(key)
    value = f.parts[f.data[0]]
    return bytes(value).decode() if value.dtype == np.uint8 else value.item()


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_of_a_cut_shape_reads_back_to_the_same_logits(tmp_path, tied, capsys):
    import gguf

    # 2 query heads of 16 over a 64-wide model: the width a head cut leaves (hidden / heads would say 32)
    folder = make_tiny_hf_model(tmp_path, "llama", num_attention_heads=2, num_key_value_heads=1, hidden_size=64,
                                intermediate_size=96, num_hidden_layers=2, head_dim=16, tie_word_embeddings=tied)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "chat_template": TEMPLATE}))

    assert main([str(folder), "--gguf", "f16", "q8_0"]) == 0
    out = capsys.readouterr().out
    for quant, file_type in (("f16", 1), ("q8_0", 7)):
        path = gguf_name(folder, quant)
        assert path.is_file() and f"GGUF {quant}: {path}" in out
        reader = gguf.GGUFReader(str(path))
        assert _field(reader, "general.architecture") == "llama" and _field(reader, "general.file_type") == file_type
        assert _field(reader, "llama.attention.key_length") == 16 and _field(reader, "llama.attention.head_count") == 2
        assert _field(reader, "tokenizer.chat_template") == TEMPLATE
        assert _field(reader, "tokenizer.ggml.model") == "gpt2"
        names = {t.name: t for t in reader.tensors}
        assert ("output.weight" in names) == (not tied)  # tied: llama.cpp reuses token_embd
        q = names["blk.0.attn_q.weight"].tensor_type
        assert q == (gguf.GGMLQuantizationType.F16 if quant == "f16" else gguf.GGMLQuantizationType.Q8_0)
        assert names["blk.0.ffn_down.weight"].tensor_type == (  # rows of 96: a multiple of 32, so q8_0 too
            gguf.GGMLQuantizationType.F16 if quant == "f16" else gguf.GGMLQuantizationType.Q8_0)
        assert names["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert "greedy tokens agree" in out  # the read-back check ran (it raises, exit 2, beyond the tolerance)


def test_gguf_refuses_what_it_cannot_write(tmp_path, capsys):
    qwen = make_tiny_hf_model(tmp_path, "qwen2", num_hidden_layers=1)
    assert main([str(qwen), "--gguf", "f16"]) == 2
    assert "convert_hf_to_gguf.py" in capsys.readouterr().err
    assert main([str(tmp_path), "--gguf", "f16"]) == 2  # no config.json: not a Hugging Face folder
    assert main([str(qwen)]) == 2 and "give --output" in capsys.readouterr().err
