"""End-to-end training runs: 2 gloo ranks under ZeRO-3 through the real `deepspeed` launcher and torchrun.

One uninterrupted prune run is the reference: its expected sparsity must move to the target, and a run killed
with SIGKILL mid-way and resumed with `--resume auto` must reproduce its losses exactly. Also: a kill inside a
checkpoint write leaves the previous checkpoint loadable; a 2-node launch on localhost trains (cpt mode, with
held-out eval); configuration errors stop the run before any work; a NaN loss stops it cleanly.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.train_runs import (
    REPO,
    TRAIN,
    deepspeed_cmd,
    free_port,
    launch,
    make_workspace,
    read_metrics,
    run_env,
    write_config,
)

# Keys of a train record that must be identical between an uninterrupted and a resumed run.
EXACT_KEYS = ("loss", "lm_loss", "lagrangian", "lr", "tokens_seen", "domain_weights", "domain_loss",
              "expected_sparsity", "target_sparsity", "lambdas", "expected_params")

PRUNE = {"pruning": {"lr_log_alpha": 1.0, "lr_lambda": 1.0, "warmup_fraction": 0.25}}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_ws")
    return {"tmp": tmp, **make_workspace(tmp)}


@pytest.fixture(scope="module")
def reference_run(ws):
    """The uninterrupted prune run, launched as users do: `megadrp prune --config X --nproc 2`."""
    tmp = ws["tmp"]
    run_dir = tmp / "reference"
    config = write_config(tmp, ws, run_dir, **PRUNE)
    proc = launch([sys.executable, "-m", "megadrp", "prune", "--config", str(config), "--nproc", "2"], run_env(tmp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir, config, proc


def test_prune_sparsity_moves_to_target(reference_run):
    run_dir, _, proc = reference_run
    recs = read_metrics(run_dir)
    assert [r["step"] for r in recs] == list(range(1, 13))
    assert "step 12/12" in proc.stdout and "sparsity" in proc.stdout  # the rank-0 step line
    first, last = recs[0], recs[-1]
    targets = last["target_sparsity"]
    assert set(targets) == {"layer", "head", "intermediate", "hidden"}  # derived from source vs target shape
    gap0 = sum(abs(first["expected_sparsity"][f] - t) for f, t in targets.items()) / len(targets)
    gap1 = sum(abs(last["expected_sparsity"][f] - t) for f, t in targets.items()) / len(targets)
    assert gap1 < 0.6 * gap0, (first["expected_sparsity"], last["expected_sparsity"], targets)
    for family, target in targets.items():  # the tracking controller: on target at the end, never far above it
        assert target > 0.2 and abs(last["expected_sparsity"][family] - target) < 0.02, (family, last)
        over = max(r["expected_sparsity"][family] - r["target_sparsity"][family] for r in recs)
        assert over < 0.05, (family, over)
    assert last["expected_params"] < 0.8 * first["expected_params"]
    assert any(v != 0.0 for v in last["lambdas"].values())
    assert set(last["domain_weights"]) == {"prose", "code"}
    assert abs(sum(last["domain_weights"].values()) - 1) < 1e-9
    # keep_last=2: step_4 was pruned after step_12 became the latest
    ck = run_dir / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_12"
    assert sorted(p.name for p in ck.iterdir() if p.name.startswith("step_")) == ["step_12", "step_8"]
    assert (ck / "step_12" / "megadrp_state.json").is_file() and (ck / "step_12" / "tokenizer").is_dir()


def test_sigkill_then_resume_auto_reproduces_losses_exactly(ws, reference_run):
    tmp = ws["tmp"]
    ref_dir, _, _ = reference_run
    run_dir = tmp / "killed"
    config = write_config(tmp, ws, run_dir, **PRUNE)
    # Slow steps down (no effect on the numbers) so the kill lands mid-run, after checkpoint step_4.
    proc = subprocess.Popen(deepspeed_cmd(config), env=run_env(tmp, MEGADRP_DEBUG_STEP_SLEEP=0.5), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 200
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and any(r["step"] >= 6 for r in read_metrics(run_dir)):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # launcher and both ranks, as a lost node would
    proc.wait()
    killed_at = max(r["step"] for r in read_metrics(run_dir))
    assert 6 <= killed_at < 12
    assert (run_dir / "checkpoints" / "latest").read_text().strip() in ("step_4", "step_8")

    resumed = launch(deepspeed_cmd(config, "--resume", "auto"), run_env(tmp))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    ref, got = read_metrics(ref_dir), read_metrics(run_dir)
    assert [r["step"] for r in got] == list(range(1, 13))  # records after the checkpoint were rewritten once
    for a, b in zip(ref, got):
        for key in EXACT_KEYS:
            assert a[key] == b[key], (a["step"], key, a[key], b[key])


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(ws):
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from megadrp.trainer import checkpoint

    tmp = ws["tmp"]
    run_dir = tmp / "torn"
    config = write_config(tmp, ws, run_dir, **PRUNE)
    proc = launch(deepspeed_cmd(config), run_env(tmp, MEGADRP_FAULT_KILL_IN_CHECKPOINT=8))
    assert proc.returncode != 0
    ck = run_dir / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_4"
    assert not (ck / "step_8").exists() and (ck / ".tmp_step_8").is_dir()  # the torn write stays aside
    assert checkpoint.resolve("auto", run_dir) == ck / "step_4"
    state = checkpoint.read_state(ck / "step_4")
    assert state["step"] == 4 and state["mode"] == "prune" and len(state["rng"]) == 2
    assert set(state["mode_state"]["masks"]) and "masks" not in state  # saved once, in the mode's state
    assert state["sampler"]["step"] == 8  # 4 steps x 2 micro-batches
    weights = get_fp32_state_dict_from_zero_checkpoint(str(ck), tag="step_4")
    assert weights["embed_tokens.weight"].shape == (512, 64)
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_two_node_launch_on_localhost_trains_cpt(ws, reference_run):
    """Two torchrun "nodes" on localhost, cpt mode, weights-only start from the prune run's last checkpoint."""
    tmp = ws["tmp"]
    ref_dir = reference_run[0]
    run_dir = tmp / "two_nodes"
    config = write_config(tmp, ws, run_dir, mode="cpt", optim={"max_steps": 8},
                          data={"eval_prefix": ws["eval_prefix"]}, logging={"eval_interval": 4, "eval_batches": 1})
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               TRAIN, "--config", str(config), "--init-from", str(ref_dir / "checkpoints" / "step_12")],
                              env=run_env(tmp), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "world size 2" in outs[0] and "initialising weights from" in outs[0]
    recs = read_metrics(run_dir)
    assert [r["step"] for r in recs] == list(range(1, 9))  # weights only: the step count starts afresh
    # The prune run's trained weights start lower than the source's untrained ones (6.2 at its step 1).
    assert recs[0]["lm_loss"] < read_metrics(ref_dir)[0]["lm_loss"] - 0.2
    assert "expected_sparsity" not in recs[0]  # dense mode: no mask fields
    first = sum(r["lm_loss"] for r in recs[:3]) / 3
    last = sum(r["lm_loss"] for r in recs[-3:]) / 3
    assert last < first
    evals = read_metrics(run_dir, "eval")
    assert [e["step"] for e in evals] == [4, 8]
    assert set(evals[-1]["eval_loss"]) == {"prose", "code"} and set(evals[-1]["eval_bpb"]) == {"prose", "code"}
    assert evals[-1]["eval_loss"]["prose"] < evals[0]["eval_loss"]["prose"] + 0.5
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_8"


def test_nan_loss_stops_cleanly_without_checkpointing_the_bad_state(ws):
    tmp = ws["tmp"]
    run_dir = tmp / "nan"
    config = write_config(tmp, ws, run_dir, optim={"lr": 1e30}, checkpoint={"save_interval": 1})
    # In-process single rank: also exercises `megadrp prune` without a launcher.
    proc = launch([sys.executable, "-m", "megadrp", "prune", "--config", str(config)], run_env(tmp), timeout=180)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "training diverged" in proc.stderr
    bad = read_metrics(run_dir)[-1]["step"] + 1
    assert f"at step {bad}" in proc.stderr and f"step_{bad - 1}" in proc.stderr
    ck = run_dir / "checkpoints"
    assert (ck / "latest").read_text().strip() == f"step_{bad - 1}"
    assert not (ck / f"step_{bad}").exists() and not (ck / f".tmp_step_{bad}").exists()


def test_config_mismatch_fails_before_any_work(ws):
    tmp = ws["tmp"]
    ds_json = tmp / "ds_micro4.json"
    ds_json.write_text('{"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3}}')
    run_dir = tmp / "bad_json"
    config = write_config(tmp, ws, run_dir, deepspeed={"config": str(ds_json)})
    t0 = time.time()
    proc = launch([sys.executable, "-m", "megadrp", "prune", "--config", str(config)], run_env(tmp), timeout=120)
    assert proc.returncode == 2
    assert "train_micro_batch_size_per_gpu" in proc.stderr and "says 4" in proc.stderr
    assert not run_dir.exists()
    assert time.time() - t0 < 60

    # A global batch the world size does not divide, found by every rank before any process group exists.
    run_dir = tmp / "bad_world"
    config = write_config(tmp, ws, run_dir, optim={"global_batch_size": 6})
    proc = launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN,
                   "--config", str(config)], run_env(tmp), timeout=120)
    assert proc.returncode != 0
    assert "optim.global_batch_size" in proc.stderr and "multiple of micro_batch_size x world size" in proc.stderr
    assert not run_dir.exists()

    # Training binaries that do not exist: every missing file named, with the command that makes them.
    config = write_config(tmp, ws, tmp / "no_data", data={"prefix": str(tmp / "nowhere" / "train")})
    proc = launch([sys.executable, "-m", "megadrp", "cpt", "--config", str(config)], run_env(tmp), timeout=120)
    assert proc.returncode == 2 and "missing 4 data file(s)" in proc.stderr and "megadrp preprocess" in proc.stderr
    assert not (tmp / "no_data").exists()

    # A target the source cannot be pruned to (more heads than the source has).
    config = write_config(tmp, ws, tmp / "bad_target", pruning={"target": {"num_attention_heads": 8}})
    proc = launch([sys.executable, "-m", "megadrp", "prune", "--config", str(config)], run_env(tmp), timeout=120)
    assert proc.returncode == 2 and "pruning.target.num_attention_heads" in proc.stderr
