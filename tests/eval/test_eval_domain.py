"""Per-domain evaluation equals a hand computation on a tiny random Llama; absent and empty domains are clear."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megadrp.eval import loading
from megadrp.eval.domain_eval import evaluate_domains, evaluate_models
from megadrp.eval.windows import _token_bytes, load_heldout
from tests.helpers.model_folders import MULTI, TEXTS, build_model_folder, build_tokenizer, write_corpus


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama")
    model, tok = build_model_folder(folder)
    return folder, model, tok


def hand_numbers(model, tok, docs, seq_length, max_windows):
    """Plain torch: tokenize the EOS-joined text once, cut windows, sum cross-entropy, count decoded bytes."""
    ids = tok(tok.eos_token.join(docs), add_special_tokens=False)["input_ids"]
    if max_windows:
        ids = ids[:seq_length * max_windows]
    nats, tokens, nbytes = 0.0, 0, 0
    for start in range(0, len(ids), seq_length):
        w = torch.tensor(ids[start:start + seq_length])
        if w.numel() < 2:
            break
        with torch.no_grad():
            logits = model(w[None]).logits[0]
        nats += F.cross_entropy(logits[:-1].double(), w[1:], reduction="sum").item()
        tokens += w.numel() - 1
        nbytes += len(tok.decode(w[1:].tolist(), skip_special_tokens=True).encode("utf-8"))
    return nats, tokens, nbytes


@pytest.mark.parametrize("seq_length,max_windows", [(16, 3), (24, 0)])
def test_matches_hand_computation(tiny, seq_length, max_windows):
    folder, model, tok = tiny
    res = evaluate_domains(model, tok, TEXTS, seq_length=seq_length, max_windows=max_windows, batch_size=2)
    for name, docs in TEXTS.items():
        nats, tokens, nbytes = hand_numbers(model, tok, docs, seq_length, max_windows)
        r = res["domains"][name]
        assert r["tokens"] == tokens and r["bytes"] == nbytes
        assert r["loss"] == pytest.approx(nats / tokens, rel=1e-5)
        assert r["bits_per_byte"] == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-5)
        assert r["perplexity"] == pytest.approx(math.exp(nats / tokens), rel=1e-5)
    if max_windows:
        assert all(r["windows"] == max_windows for r in res["domains"].values())
    # A random model over ~400 tokens is near-uniform: loss close to ln(vocab).
    assert res["domains"]["prose"]["loss"] == pytest.approx(math.log(len(tok)), rel=0.1)
    worst = max(res["domains"], key=lambda d: res["domains"][d]["bits_per_byte"])
    assert res["worst"]["domain"] == worst
    assert res["average"]["bits_per_byte"] == pytest.approx(
        sum(r["bits_per_byte"] for r in res["domains"].values()) / 2)


def test_folder_callable_and_forward_fn_agree(tiny):
    folder, model, tok = tiny
    base = evaluate_domains(model, tok, TEXTS, seq_length=16, max_windows=2)
    from_path = evaluate_domains(str(folder), None, TEXTS, seq_length=16, max_windows=2, device="cpu")
    masked_like = evaluate_domains(None, tok, TEXTS, seq_length=16, max_windows=2, device="cpu",
                                   forward_fn=lambda ids: model(input_ids=ids).logits)
    for other in (from_path, masked_like):
        for d in TEXTS:
            assert other["domains"][d]["loss"] == pytest.approx(base["domains"][d]["loss"], rel=1e-5)
            assert other["domains"][d]["bytes"] == base["domains"][d]["bytes"]


def test_token_bytes_tile_multibyte_text(tmp_path):
    tok = build_tokenizer(tmp_path / "tok")
    enc = tok(MULTI, add_special_tokens=False, return_offsets_mapping=True)
    per_token = _token_bytes(MULTI, enc["offset_mapping"])
    assert per_token.sum() == len(MULTI.encode("utf-8"))
    assert (per_token >= 0).all() and len(per_token) == len(enc["input_ids"])


def test_compare_two_models_on_same_windows(tmp_path, tiny):
    folder, model, tok = tiny
    other, _ = build_model_folder(tmp_path / "other", seed=1, num_layers=1)
    res = evaluate_models({"source": str(folder), "pruned": str(tmp_path / "other")}, TEXTS, seq_length=16,
                          max_windows=2, device="cpu")
    assert set(res) == {"source", "pruned"}
    for d in TEXTS:
        assert res["source"]["domains"][d]["bytes"] == res["pruned"]["domains"][d]["bytes"]
        assert res["source"]["domains"][d]["loss"] != res["pruned"]["domains"][d]["loss"]


def test_empty_and_absent_domains(tmp_path, tiny):
    folder, model, tok = tiny
    corpus = write_corpus(tmp_path / "corpus", {"prose": TEXTS["prose"], "empty": []})
    texts = load_heldout(corpus)
    assert texts["empty"] == [] and len(texts["prose"]) == 3
    res = evaluate_domains(model, tok, texts, seq_length=16, max_windows=1)
    assert list(res["domains"]) == ["prose"] and "no held-out text" in res["skipped"]["empty"]
    assert res["worst"]["domain"] == "prose"
    with pytest.raises(FileNotFoundError, match=r"'legal'.*available: \['empty', 'prose'\]"):
        load_heldout(corpus, ["prose", "legal"])
    with pytest.raises(FileNotFoundError, match="heldout"):
        load_heldout(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_domains(model, tok, {"empty": [], "blank": [""]}, seq_length=16)


def test_max_bytes_caps_each_domain(tmp_path):
    corpus = write_corpus(tmp_path / "c", {"multi": [MULTI, MULTI]})
    texts = load_heldout(corpus, max_bytes=20)
    assert sum(len(t.encode()) for t in texts["multi"]) <= 20 and MULTI.startswith(texts["multi"][0])


def test_a_folder_that_is_neither_model_nor_checkpoint_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither"):
        loading.resolve_model_dir(tmp_path, tmp_path / "scratch")


def test_checkpoint_is_exported_then_evaluated(tmp_path, tiny, monkeypatch):
    """A run dir resolves to checkpoints/<latest>, goes through megadrp.export's export_checkpoint, then scores."""
    import shutil

    folder, model, tok = tiny
    ckpt = tmp_path / "run" / "checkpoints" / "step_7"
    ckpt.mkdir(parents=True)
    (ckpt / "megadrp_state.json").write_bytes(b"")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_7")
    calls = []

    def fake_export(src, out):
        calls.append(src)
        shutil.copytree(folder, out, dirs_exist_ok=True)

    import megadrp.export.api

    monkeypatch.setattr(megadrp.export.api, "export_checkpoint", fake_export)
    res = evaluate_domains(str(tmp_path / "run"), None, TEXTS, seq_length=16, max_windows=1, device="cpu")
    assert calls == [str(ckpt)]
    base = evaluate_domains(model, tok, TEXTS, seq_length=16, max_windows=1)
    assert res["domains"]["code"]["loss"] == pytest.approx(base["domains"]["code"]["loss"], rel=1e-5)


def test_other_family_from_shared_tiny_models(tmp_path):
    from tests.helpers.tiny_models import make_tiny_hf_model

    path = make_tiny_hf_model(tmp_path, "qwen2", num_key_value_heads=2, seed=0)
    res = evaluate_domains(str(path), None, TEXTS, seq_length=32, max_windows=2, device="cpu")
    assert set(res["domains"]) == set(TEXTS)
    assert all(0 < r["bits_per_byte"] < 20 and r["tokens"] == 62 for r in res["domains"].values())
