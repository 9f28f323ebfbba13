"""Slow: llama.cpp itself (llama-cpp-python, built once by `make llama-cpp` into .cache/wheels) loads megadrp's GGUF
of the real SmolLM2-135M and greedy-decodes the same continuation as transformers does from the folder."""
from __future__ import annotations

from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[2] / ".cache" / "models" / "smollm2-135m"
PROMPT = "The capital of France is"


@pytest.mark.slow
@pytest.mark.skipif(not (MODEL / "config.json").is_file(),
                    reason=f"real SmolLM2 not at {MODEL} (tools/convert_smollm2.py writes it)")
@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_llama_cpp_continues_like_transformers(tmp_path, quant):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: make llama-cpp")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megadrp.export.gguf_writer import write_gguf

    path = write_gguf(MODEL, quant, out=tmp_path / f"smollm2.{quant}.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False)
    ours = llm(PROMPT, max_tokens=6, temperature=0.0)["choices"][0]["text"]

    tok = AutoTokenizer.from_pretrained(str(MODEL))
    model = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
    theirs = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert " Paris" in ours and ours.split()[:2] == theirs.split()[:2], (ours, theirs)
    assert llm.metadata.get("tokenizer.chat_template")  # the chat template travelled with the weights
