"""ZeRO stage "auto" (megadrp/config/zero_stage.py): the rule on model sizes people run, a pinned stage left
alone, and a real 2-rank run under the stage the rule picks (ds_configs/auto.json), exported afterwards."""
from __future__ import annotations

import json

import pytest

from megadrp.config.zero_stage import choose_stage, model_state_bytes, resolve_zero_stage
from tests.helpers.train_runs import REPO, deepspeed_cmd, launch, make_workspace, read_metrics, run_env, write_config  # noqa: E402

GIB = 2 ** 30


def test_model_state_bytes_follow_the_zero_paper():
    # mixed precision: 2 (weights) + 2 (grads) + 12 (fp32 master + Adam) bytes per parameter, unsharded
    assert model_state_bytes(10, 1, 1, "bf16") == 160
    assert model_state_bytes(10, 1, 4, "bf16") == 10 * (4 + 3)
    assert model_state_bytes(10, 2, 4, "bf16") == 10 * (2 + 14 / 4)
    assert model_state_bytes(10, 3, 4, "bf16") == 10 * 16 / 4
    assert model_state_bytes(10, 3, 1, "fp32") == 10 * 20


@pytest.mark.parametrize("params,world,gpu_gib,stage", [
    (135e6, 1, 80, 1),   # SmolLM2-135M on one GPU: nothing to shard with
    (0.94e9, 1, 80, 1),  # the 0.94B benchmark shape: 15 GiB of states
    (8e9, 8, 80, 2),     # 8B on 8 GPUs: 44 GiB at stage 1 is over half the GPU, stage 2 is 30 GiB
    (7e9, 1, 80, 3),     # 7B on one GPU does not fit below stage 3
    (70e9, 8, 80, 3),
])
def test_rule_picks_the_lowest_stage_that_fits(params, world, gpu_gib, stage):
    got, reason = choose_stage(int(params), world, "bf16", gpu_gib * GIB)
    assert got == stage, reason
    assert f"world size {world}" in reason


def test_a_number_in_the_json_pins_the_stage_and_offload_keeps_stage_3():
    pinned = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    assert resolve_zero_stage(pinned, 1000, 1, "fp32", "cpu", device_bytes=64 * GIB) == ""
    assert pinned["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}
    offload = {"zero_optimization": {"stage": "auto", "offload_optimizer": {"device": "cpu"}}}
    assert "offload" in resolve_zero_stage(offload, 1000, 1, "bf16", "cuda", device_bytes=80 * GIB)
    assert offload["zero_optimization"]["stage"] == 3
    auto = json.loads((REPO / "ds_configs" / "auto.json").read_text())
    reason = resolve_zero_stage(auto, 1000, 2, "fp32", "cpu", device_bytes=8 * GIB)
    assert auto["zero_optimization"]["stage"] == 1 and reason.startswith("auto: model states")
    assert not [k for k in auto["zero_optimization"] if k.startswith("stage3_")]


def test_two_rank_dress_run_under_the_auto_stage_shrinks_and_exports(tmp_path):
    """ds_configs/auto.json on 2 gloo ranks: the tiny model's states fit, so stage 1, and the start-up line says
    so. DReSS's proximal shrink must reach ZeRO-1's fp32 master fragments: edited on the module's weights only,
    each step would restore the unshrunk master and the checkpoint (consolidated from the master) would hold
    no zeroed slice."""
    from megadrp.export.consolidate import load_checkpoint_for_export

    ws = make_workspace(tmp_path)
    run_dir = tmp_path / "auto_stage"
    config = write_config(tmp_path, ws, run_dir, mode="dress",
                          deepspeed={"config": "ds_configs/auto.json", "precision": "auto"},
                          optim={"max_steps": 6, "gradient_accumulation_steps": 1},
                          checkpoint={"save_interval": 6, "keep_last": 1},
                          dress={"apply": "proximal", "penalty_init": 0.05, "penalty_final": 1.0,
                                 "regularize_steps": 6, "calibration_batches": 2})
    proc = launch(deepspeed_cmd(config, "mode=dress"), run_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "ZeRO stage 1 (auto: model states" in proc.stdout
    norms = [r["dress_norm_all"] for r in read_metrics(run_dir)]
    assert len(norms) == 6 and norms[-1] < 0.6 * norms[0], norms
    sd, state = load_checkpoint_for_export(run_dir)  # consolidated from the fp32 master fragments
    assert state["step"] == 6 and "lm_head.weight" in sd
    # the last shrink (coefficient 1) zeroed the selected hidden dims (64 -> 48) in the master copy itself
    assert int((sd["embed_tokens.weight"].abs().sum(0) == 0).sum()) == 64 - 48


def test_the_planner_resolves_an_auto_stage_as_the_trainer_would():
    from megadrp.config import RunConfig, TargetShape
    from megadrp.plan.resolve import run_shape

    cfg = RunConfig()  # deepspeed.config defaults to ds_configs/auto.json
    cfg.model.path, cfg.pruning.target = "smollm2-135m", TargetShape(intermediate_size=768)
    assert run_shape(cfg, 1, gpu_memory_gib=80).zero.stage == 1
    cfg.model.path, cfg.pruning.target = "llama-3.1-70b", TargetShape(intermediate_size=14336)
    assert run_shape(cfg, 8, gpu_memory_gib=80).zero.stage == 3
