"""Model card metadata carried from the source, and the Hub upload path up to HfApi's first request.

No Hub is reachable here and huggingface_hub ships no local stand-in server, so the upload test runs
huggingface_hub for real in offline mode: it must get as far as HfApi's create-repo request, fail there
with huggingface_hub's own offline error, never show the token, and leave the exported folder intact.
"""
from __future__ import annotations

import json

import pytest
import torch

from megadrp.export import export_from_model
from megadrp.model import load_pretrained
from tests.helpers.tiny_models import make_tiny_hf_model

SECRET = "hf_notARealTokenButSecret123"


@pytest.fixture()
def source(tmp_path):
    src = make_tiny_hf_model(tmp_path, "llama", seed=8)
    (src / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# tiny source\n")
    cfg = json.loads((src / "config.json").read_text())
    cfg["_name_or_path"] = "HuggingFaceTB/SmolLM2-135M"
    (src / "config.json").write_text(json.dumps(cfg))
    return src


def test_card_carries_license_base_model_and_facts(source, tmp_path):
    from huggingface_hub import ModelCard

    model = load_pretrained(source)
    masks = {"layer": torch.tensor([1.0, 0.0, 0.9, 0.8])}
    out = export_from_model(model.state_dict(), masks, model.shape, "llama", tmp_path / "exp", dtype="float32",
                            target={"num_hidden_layers": 3}, source_model_dir=str(source), progress=False,
                            card_info={"mode": "prune", "dro_method": "drpruning", "tokens_seen": 12345,
                                       "domain_weights": {"code": 0.4, "web": 0.6}})
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert card.data.library_name == "transformers"
    text = card.text
    assert "tokens seen: 12345" in text and "| web | 0.6000 |" in text
    assert "| num_hidden_layers | 4 | 3 | 3 |" in text  # source, target, achieved
    n = sum(t.numel() for t in model.state_dict().values())
    assert f"(source {n:,})" in text


def test_push_reaches_hfapi_and_never_shows_the_token(source, tmp_path, monkeypatch, caplog, capsys):
    from huggingface_hub.errors import OfflineModeIsEnabled

    from megadrp.export.hub import push_folder

    monkeypatch.setenv("HF_TOKEN", SECRET)
    model = load_pretrained(source)
    out = export_from_model(model.state_dict(), None, model.shape, "llama", tmp_path / "exp", progress=False)
    caplog.set_level("DEBUG")
    with pytest.raises(OfflineModeIsEnabled, match="api/repos/create"):
        push_folder(out, "someone/tiny-pruned", private=True)
    captured = capsys.readouterr()
    assert SECRET not in caplog.text + captured.out + captured.err
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()

