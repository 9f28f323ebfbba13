"""Knowledge distillation (megadrp/distill/): the KD loss against its plain formula, the config and pre-flight
errors, and real runs: cpt from a frozen ZeRO-3 teacher on 2 gloo ranks (a student identical to its teacher
has KD 0 at step 1; a resume is bit-identical with distillation on) and prune mode's all-masks-1 teacher.
"""
from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from megadrp.distill import kd as kd_mod
from megadrp.distill.kd import kd_per_token, kd_reference
from tests.helpers.train_runs import deepspeed_cmd, launch, make_workspace, read_metrics, run_env, write_config

EXACT_KEYS = ("loss", "lm_loss", "kd_loss", "lr", "tokens_seen", "domain_weights", "domain_loss")


# ---- the loss ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [0, 5, 64])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_gradient_matches_autograd_of_the_plain_formula(monkeypatch, top_k, temperature):
    monkeypatch.setattr(kd_mod, "CHUNK", 4)  # several chunks, the last one partial
    g = torch.Generator().manual_seed(top_k)
    student = 3 * torch.randn(2, 7, 64, generator=g, dtype=torch.float64)
    teacher = 3 * torch.randn(2, 7, 64, generator=g, dtype=torch.float64)
    weights = torch.rand(2, 7, generator=g, dtype=torch.float64)  # per-token weights, as the LM term's
    a, b = student.clone().requires_grad_(), student.clone().requires_grad_()
    got, want = kd_per_token(a, teacher, temperature, top_k), kd_reference(b, teacher, temperature, top_k)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    assert got.dtype == torch.float32 and got.shape == (2, 7)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert a.grad.abs().max() > 1e-2  # a real gradient, not two zeros


def test_kd_values():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 40, generator=g)
    t = torch.randn(3, 5, 40, generator=g)
    assert kd_per_token(z, z).abs().max() < 1e-6  # identical models: KL 0
    full = kd_per_token(z, t)
    assert (full > 0).all()
    # The top-k + rest bins merge tokens, which can only lose divergence; k >= V is the full KL.
    assert (kd_per_token(z, t, top_k=4) <= full + 1e-6).all()
    torch.testing.assert_close(kd_per_token(z, t, top_k=40), full)
    # T^2 scaling: for logits far apart the KL at temperature T is of the order of T^2 * KL(z/T, t/T), finite.
    assert torch.isfinite(kd_per_token(100 * z, 100 * t, temperature=4.0)).all()
    with pytest.raises(ValueError, match="same vocabulary"):
        kd_per_token(z, t[..., :30])


# ---- configuration and pre-flight ---------------------------------------------------------------------------
def test_distill_config_errors():
    from megadrp.config import ConfigError, load_config
    from megadrp.methods import method_for

    cfg = load_config(None, ["mode=cpt"])
    assert cfg.distill.alpha == 0.0 and cfg.distill.temperature == 1.0 and cfg.distill.top_k == 0
    for override, field in (("distill.alpha=1.5", "distill.alpha"), ("distill.temperature=0", "distill.temperature"),
                            ("distill.top_k=-1", "distill.top_k"), ("distill.alpha=0.5", "distill.teacher")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            method_for(load_config(None, ["mode=cpt", override]))  # the last one: cpt's own rule
    method_for(load_config(None, ["mode=prune", "distill.alpha=0.5"]))  # prune's teacher: its own unmasked pass


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill_ws")
    return {"tmp": tmp, **make_workspace(tmp)}


def test_preflight_names_a_bad_teacher(ws):
    from megadrp.config import ConfigError, load_config
    from megadrp.methods import get_method
    from megadrp.trainer.build import preflight
    from tests.helpers.tiny_models import make_tiny_hf_model

    tmp = ws["tmp"]

    def teacher_of(teacher, mode="cpt"):  # the pre-flight of train.py resolves the teacher with everything else
        config = write_config(tmp, ws, tmp / "pf", mode=mode, distill={"alpha": 0.5, "teacher": str(teacher)},
                              dress={"regularize_steps": 4})
        cfg = load_config(str(config))
        return preflight(cfg, get_method(cfg.mode), world_size=2).teacher

    with pytest.raises(ConfigError, match="no config.json"):
        teacher_of(tmp / "nowhere")
    other_vocab = make_tiny_hf_model(tmp, vocab_size=384, name="teacher_v384")
    with pytest.raises(ConfigError, match=f"vocabulary of 384 logits.*{ws['model']}.* 512"):
        teacher_of(other_vocab)
    # Same size, other tokenizer: two ids swapped.
    swapped = tmp / "teacher_swapped"
    shutil.copytree(ws["model"], swapped)
    tok = json.loads((swapped / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (swapped / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ConfigError, match=f"teacher_swapped.*different tokenizer.*{ws['model']}"):
        teacher_of(swapped)
    spec = teacher_of(ws["model"])
    assert spec.kind == "frozen" and spec.path == ws["model"]
    assert teacher_of("", mode="prune").kind == "self"
    assert teacher_of("", mode="dress").path == ws["model"]  # dress: a frozen copy of the source


# ---- runs ---------------------------------------------------------------------------------------------------
CPT_KD = {"optim": {"max_steps": 6}, "checkpoint": {"save_interval": 3, "keep_last": 2}}


def test_cpt_from_a_frozen_zero3_teacher_and_bit_identical_resume(ws):
    tmp = ws["tmp"]
    distill = {"alpha": 0.5, "teacher": ws["model"], "temperature": 2.0}
    ref_dir = tmp / "kd_cpt"
    config = write_config(tmp, ws, ref_dir, mode="cpt", distill=distill, **CPT_KD)
    proc = launch(deepspeed_cmd(config), run_env(tmp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = read_metrics(ref_dir)
    assert [r["step"] for r in ref] == list(range(1, 7))
    assert ref[0]["kd_loss"] < 1e-6  # the student starts as a copy of its teacher
    assert ref[-1]["kd_loss"] > 1e-4  # then the LM half of the loss moves it away
    for r in ref:
        assert r["loss"] == pytest.approx(0.5 * r["lm_loss"] + 0.5 * r["kd_loss"], rel=1e-9)
    assert "| kd " in proc.stdout
    from megadrp.eval.report import write_report

    write_report(ref_dir, tmp / "kd_report")
    assert (tmp / "kd_report" / "kd_loss.png").stat().st_size > 1000  # `megadrp report` plots it

    run_dir = tmp / "kd_cpt_resumed"
    config = write_config(tmp, ws, run_dir, mode="cpt", distill=distill, **CPT_KD)
    proc = launch(deepspeed_cmd(config, "--resume", str(ref_dir / "checkpoints" / "step_3")), run_env(tmp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = read_metrics(run_dir)
    assert [r["step"] for r in got] == [4, 5, 6]
    for a, b in zip(ref[3:], got):
        for key in EXACT_KEYS:
            assert a[key] == b[key], (a["step"], key, a[key], b[key])


def test_prune_distils_from_its_own_unmasked_pass(ws):
    tmp = ws["tmp"]
    run_dir = tmp / "kd_prune"
    config = write_config(tmp, ws, run_dir, distill={"alpha": 1.0, "top_k": 16}, optim={"max_steps": 8},
                          pruning={"warmup_fraction": 0.25, "lr_log_alpha": 1.0, "lr_lambda": 1.0})
    proc = launch([sys.executable, "-m", "megadrp", "prune", "--config", str(config)], run_env(tmp), timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = read_metrics(run_dir)
    kd = [r["kd_loss"] for r in recs]
    # Masks start at 1 (log_alpha 5): student = teacher; as sparsity grows the masked model departs from it.
    assert kd[0] < 1e-3 and max(kd[-3:]) > 10 * max(kd[0], 1e-5), kd
    assert recs[-1]["expected_params"] < 0.95 * recs[0]["expected_params"]
    for r in recs:  # alpha 1: the loss is the KD term plus the Lagrangian, the LM loss still tracked per domain
        assert r["loss"] == pytest.approx(r["kd_loss"] + r["lagrangian"], rel=1e-9, abs=1e-12)
        assert set(r["domain_loss"]) <= {"prose", "code"} and r["lm_loss"] > 0
