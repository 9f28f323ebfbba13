"""The real SmolLM2-135M (converted by tools/convert_smollm2.py) through MaskedCausalLM vs transformers."""
from pathlib import Path

import pytest
import torch

from megadrp.config import TargetShape
from megadrp.masks import MaskSet
from megadrp.model import load_pretrained

SMOLLM2 = Path(__file__).resolve().parents[2] / ".cache" / "models" / "smollm2-135m"


@pytest.mark.slow
def test_smollm2_matches_hf_logits():
    if not (SMOLLM2 / "config.json").exists():
        pytest.skip(f"{SMOLLM2} absent: run `python tools/convert_smollm2.py --output .cache/models/smollm2-135m`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SMOLLM2)
    ref = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32).eval()
    model = load_pretrained(SMOLLM2).eval()
    s = model.shape
    assert (s.num_hidden_layers, s.hidden_size, s.num_attention_heads, s.num_key_value_heads, s.head_dim) == \
        (30, 576, 9, 3, 64)
    assert s.tie_word_embeddings and s.num_params() == sum(p.numel() for p in ref.parameters())
    ids = tok(["The capital of France is", "def fibonacci(n):\n    return"], return_tensors="pt",
              padding=True).input_ids
    ones = {f: torch.ones_like(z) for f, z in MaskSet(s, TargetShape(hidden_size=320, num_attention_heads=6,
                                                                       intermediate_size=1024,
                                                                       num_hidden_layers=20)).sample(0, 0).items()}
    with torch.no_grad():
        expected = ref(ids).logits
        assert (model(ids) - expected).abs().max() <= 1e-5
        assert (model(ids, ones) - expected).abs().max() <= 1e-5
        prompt = tok("The capital of France is", return_tensors="pt").input_ids  # unpadded: last token is real
        assert tok.decode(model(prompt)[0, -1].argmax()) == " Paris"
