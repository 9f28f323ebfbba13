"""Sheared-LLaMA's rule in a real (tiny) prune run: it reads held-out losses at its update interval, against the
same held-out reference losses DRPruning gets, and its weights follow from them by the paper's formula."""
from __future__ import annotations

import sys

import numpy as np

from tests.helpers.train_runs import launch, make_workspace, read_metrics, run_env, write_config


def test_sheared_updates_from_heldout_losses_against_heldout_references(tmp_path):
    ws = make_workspace(tmp_path)
    run_dir = tmp_path / "sheared"
    c = 1e-4
    config = write_config(tmp_path, ws, run_dir, data={"eval_prefix": ws["eval_prefix"]},
                          dro={"method": "sheared", "update_interval": 2, "sheared_smoothing": c},
                          optim={"max_steps": 4, "gradient_accumulation_steps": 1},
                          logging={"eval_interval": 0, "eval_batches": 1}, checkpoint={"save_interval": 4})
    proc = launch([sys.executable, "-m", "megadrp", "prune", "--config", str(config)], run_env(tmp_path), timeout=200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    domains = ["prose", "code"]
    refs = read_metrics(run_dir, "reference")
    assert len(refs) == 1 and refs[0]["step"] == 0  # the source's held-out loss, as DRPruning gets
    ref = np.array([refs[0]["reference_loss"][d] for d in domains])
    evals = {r["step"]: np.array([r["eval_loss"][d] for d in domains]) for r in read_metrics(run_dir, "eval")}
    assert sorted(evals) == [2, 4]  # held-out evaluation at the rule's update steps, once each
    train = {r["step"]: r for r in read_metrics(run_dir, "train")}
    w = np.array([train[1]["domain_weights"][d] for d in domains])
    for step in (2, 4):
        logits = np.log(w) + np.maximum(evals[step] - ref, 0.0)
        w = np.exp(logits - logits.max())
        w = (1 - c) * w / w.sum() + c / len(domains)
        got = np.array([train[step]["domain_weights"][d] for d in domains])
        np.testing.assert_allclose(got, w, rtol=1e-9)
    assert np.any(np.abs(w - 0.5) > 1e-3)  # the update really moved the mix


def test_recovery_measures_its_references_on_the_source_not_on_the_cut_model(tmp_path):
    # cpt starts from the cut model; its own loss as l_ref made Sheared's rule inert in recovery (every excess
    # clamped to 0 once the loss falls). The reference is the source's: the distillation teacher, or
    # dro.reference_model, scored on the same held-out windows as a prune run scores the source at its start.
    from tests.helpers.tiny_models import make_tiny_hf_model

    ws = make_workspace(tmp_path)
    cut = make_tiny_hf_model(tmp_path, "llama", num_attention_heads=2, num_key_value_heads=1, hidden_size=48,
                             intermediate_size=64, num_hidden_layers=3, seed=5, name="cut")
    common = dict(data={"eval_prefix": ws["eval_prefix"]}, dro={"method": "sheared", "update_interval": 2},
                  optim={"max_steps": 1, "gradient_accumulation_steps": 1},
                  logging={"eval_interval": 0, "eval_batches": 1}, checkpoint={"save_interval": 1})

    def reference(name: str, mode: str, **sections) -> dict:
        run_dir = tmp_path / name
        cfg = {**common, **sections, "model": {"path": ws["model"] if mode == "prune" else str(cut)}}
        cfg["dro"] = {**common["dro"], **sections.get("dro", {})}
        config = write_config(tmp_path, ws, run_dir, mode=mode, **cfg)
        proc = launch([sys.executable, "-m", "megadrp", mode, "--config", str(config)], run_env(tmp_path),
                      timeout=200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        (ref,) = read_metrics(run_dir, "reference")
        return ref

    source = reference("prune_source", "prune")
    assert source["reference_model"] == "starting model"  # prune starts from the source
    teacher = reference("cpt_teacher", "cpt", distill={"alpha": 0.5, "teacher": ws["model"]})
    explicit = reference("cpt_explicit", "cpt", dro={"reference_model": ws["model"]})
    alone = reference("cpt_alone", "cpt")
    assert teacher["reference_model"] == ws["model"] + " (the distillation teacher)"
    assert explicit["reference_model"] == ws["model"]
    assert alone["reference_model"].startswith("starting model, no source given: set dro.reference_model")
    for domain, loss in source["reference_loss"].items():
        assert abs(teacher["reference_loss"][domain] - loss) < 1e-5 * loss
        assert abs(explicit["reference_loss"][domain] - loss) < 1e-5 * loss
        assert abs(alone["reference_loss"][domain] - loss) > 1e-2  # the cut model's own, a different model
