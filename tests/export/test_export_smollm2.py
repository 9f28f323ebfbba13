"""Slow: export parity on a 4-layer slice of the real SmolLM2-135M (GQA 9/3 heads, tied embeddings, head_dim 64)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

MODEL = Path(__file__).resolve().parents[2] / ".cache" / "models" / "smollm2-135m"


@pytest.mark.slow
@pytest.mark.skipif(not (MODEL / "config.json").is_file(),
                    reason=f"real SmolLM2 not at {MODEL} (tools/convert_smollm2.py writes it)")
def test_smollm2_slice_export_matches_masked_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megadrp.config.schema import TargetShape
    from megadrp.export import export_from_model
    from megadrp.masks import MaskSet
    from megadrp.model import MaskedCausalLM, get_family, read_hf_state_dict, read_shape

    shape, fam = read_shape(MODEL)
    layers = 4
    hf_sd = {k: v for k, v in read_hf_state_dict(MODEL).items()
             if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    shape = shape.replace(num_hidden_layers=layers)
    model = MaskedCausalLM(shape, fam).eval()
    model.load_state_dict(fam.hf_to_internal(hf_sd))
    target = {"hidden_size": 384, "num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 1024,
              "num_hidden_layers": 3}
    maskset = MaskSet(shape, TargetShape(**target))
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in maskset.log_alpha.values():
            p.copy_(torch.randn(p.shape, generator=g) * 2.0)
        masks = maskset.deterministic()
    out = export_from_model(model.state_dict(), masks, shape, "llama", tmp_path / "smol", dtype="float32",
                            target=target, source_model_dir=str(MODEL), progress=False)
    assert get_family("llama").architecture == "LlamaForCausalLM"

    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(["The capital of France is", "def main(argv=None):"], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        want, got = model(ids, masks), hf(ids).logits
    assert (got - want).abs().max().item() <= 1e-4
    c = hf.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size,
            c.num_hidden_layers, c.tie_word_embeddings) == (384, 6, 2, 64, 1024, 3, True)
    expected = shape.replace(**target).num_params()  # SmolLM2 is tied and its export stays tied
    assert sum(p.numel() for p in hf.parameters()) == expected
