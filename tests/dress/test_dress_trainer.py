"""`dress` mode through the real trainer: 2 gloo ranks, DeepSpeed ZeRO-3 (parameters partitioned), tiny llama.

The penalty and the norms are computed in forward hooks on partitioned parameters and the proximal shrink edits
ZeRO-3's fp32 master copy; the run ends with the cut model written as a dense HF folder of the target shape.
"""
from __future__ import annotations

import pytest

from tests.helpers.train_runs import deepspeed_cmd, launch, make_workspace, read_metrics, run_env, write_config  # noqa: E402


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dress_ws")
    return tmp, make_workspace(tmp)


def test_dress_mode_zero3_regularises_and_exports_the_cut(ws):
    from transformers import AutoModelForCausalLM

    tmp, space = ws
    run_dir = tmp / "dress_run"
    config = write_config(tmp, space, run_dir, mode="dress", optim={"max_steps": 10, "gradient_accumulation_steps": 1},
                          checkpoint={"save_interval": 10, "keep_last": 1},
                          dress={"criterion": "activation", "apply": "proximal", "penalty_init": 0.01,
                                 "penalty_final": 1.0, "regularize_steps": 10, "calibration_batches": 2},
                          export={"dtype": "float32"})
    proc = launch(deepspeed_cmd(config, "mode=dress"), run_env(tmp), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = read_metrics(run_dir)
    norms = [r["dress_norm_all"] for r in recs]
    # logged at each step's forward, i.e. before that step's shrink; the first shrink (1%) is within Adam's noise
    assert len(recs) == 10 and all(b < a for a, b in zip(norms[1:], norms[2:])), norms
    assert norms[-1] < 0.4 * norms[0], norms
    assert recs[-1]["dress_coef"] == pytest.approx(1.0) and recs[0]["dress_coef"] == pytest.approx(0.01)
    hf = AutoModelForCausalLM.from_pretrained(run_dir / "pruned")
    c = hf.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
            c.num_hidden_layers) == (48, 2, 1, 64, 3)

    # step 3 of DReSS: the cut model finetunes with the ordinary cpt mode (domain reweighting on)
    cpt_dir = tmp / "dress_cpt"
    cpt_cfg = write_config(tmp, {**space, "model": str(run_dir / "pruned")}, cpt_dir, mode="cpt",
                           optim={"max_steps": 3, "gradient_accumulation_steps": 1}, pruning={"target": {}},
                           checkpoint={"save_interval": 3, "keep_last": 1})
    proc = launch(deepspeed_cmd(cpt_cfg, "mode=cpt"), run_env(tmp), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cpt = read_metrics(cpt_dir)
    assert len(cpt) == 3 and all(r["lm_loss"] < 8.0 for r in cpt)  # finite, in the trained model's range
