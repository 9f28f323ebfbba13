"""The trainer's step speed seen without a GPU, and its host synchronisations on one.

tools/bench_train.py drives the real Trainer (masks, DRO, DeepSpeed, logging) and, with --count-ops, counts the
operators and host syncs of one step (tools/step_counts.py). On the CPU the counts are what a regression in
launch count or a new `.item()` would change, so they are checked here against the numbers recorded in
docs/BENCHMARKS.md ("Operators and host syncs per step"). The GPU test runs the step under CUDA's sync debug
mode, where each wait for the device raises a warning naming the Python line.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tests.helpers.train_runs import REPO, make_workspace, run_env, write_config

# Torch calls on device tensors of one step (tools/step_counts.py "device_calls"), tiny model (4 layers, d 64),
# seq 32 x micro 2, ZeRO-1 on CPU, measured with this test's command (docs/BENCHMARKS.md); a change of more than
# 10% is a finding, either way (before the step stopped reading back: cpt 502, prune 1863).
OPS_PER_STEP = {"cpt": 491, "prune": 847}
# megadrp's own host syncs per step: none in cpt; in prune the tracking controller's one read of log_alpha.
SYNCS_PER_STEP = {"cpt": 0, "prune": 1}


def test_bench_counts_and_times_the_real_trainer_step(tmp_path):
    ws = make_workspace(tmp_path)
    out = tmp_path / "train.json"
    cmd = [sys.executable, str(REPO / "tools" / "bench_train.py"), "--model", ws["model"], "--seq", "32",
           "--steps", "2", "--chunks", "1", "--warmup", "2", "--count-ops", "--work", str(tmp_path / "work"),
           "--out", str(out), "logging.log_interval=10", "dro.update_interval=5"]
    proc = subprocess.run(cmd, env=run_env(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "prune / cpt step time" in proc.stdout
    res = json.loads(out.read_text())
    rows = {r["mode"]: r for r in res["rows"]}
    assert set(rows) == {"cpt", "prune"} and res["device"].startswith("CPU")
    for mode, r in rows.items():
        assert r["zero_stage"] == 1 and r["steps"] == 2 and r["mfu"] is None  # ZeRO auto: stage 1; no CPU peak
        assert r["tokens_per_s"] == pytest.approx(2 * 32 / r["step_s"])
        c = r["counts"]
        assert not c["settled"]  # the counted step is one whose numbers stay on the device
        assert c["syncs"]["megadrp"] == SYNCS_PER_STEP[mode], c["sync_sites"]
        assert abs(c["ops"]["device_calls"] / OPS_PER_STEP[mode] - 1) < 0.10, c["ops"]
    if SYNCS_PER_STEP["prune"]:
        assert rows["prune"]["counts"]["sync_sites"]["megadrp cpu"].startswith("megadrp/masks/controller.py")
    assert res["ratios"]["prune_over_cpt"]["default"] == pytest.approx(rows["prune"]["step_s"] / rows["cpt"]["step_s"])


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["cpt", "prune"])
def test_trainer_step_does_not_wait_for_the_gpu(tmp_path, mode):
    from megadrp.config import load_config
    from megadrp.methods import get_mode
    from megadrp.trainer import Trainer, dist
    from megadrp.trainer.build import preflight

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    ws = make_workspace(tmp_path)
    path = write_config(tmp_path, ws, tmp_path / "run", mode=mode, deepspeed={"config": "ds_configs/auto.json",
                        "precision": "bf16"}, logging={"log_interval": 10, "wandb_mode": "disabled"},
                        checkpoint={"save_interval": 100}, optim={"max_steps": 50, "micro_batch_size": 2,
                                                                  "gradient_accumulation_steps": 2, "lr": 1e-3},
                        dro={"method": "drpruning", "update_interval": 5, "fit_in_background": False})
    cfg = load_config(str(path), [])
    plan = preflight(cfg, world_size=1)
    dist.ensure_single_process_env()
    dist.init_distributed()
    trainer = Trainer(cfg, plan, get_mode(mode)).setup()
    for _ in range(2):  # first-step allocations and copies
        trainer.run_step()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.run_step()  # step 3: neither a log nor a DRO-update step
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{Path(w.filename).as_posix()}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    ours = [s for s in syncs if "/megadrp/" in s]
    allowed = ["/megadrp/masks/controller.py"] if mode == "prune" else []  # the tracking solve's one read
    assert [s for s in ours if not any(a in s for a in allowed)] == [], syncs
    assert len(ours) <= SYNCS_PER_STEP[mode], syncs
    print(f"{mode}: {len(syncs)} syncs in the step, {len(ours)} in megadrp: {syncs}")
    record = trainer.settle()
    assert record["step"] == 3 and record["lm_loss"] > 0
