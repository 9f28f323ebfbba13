"""Divergence without NaN (issue 30): the loss-spike guard stops the run with exit 3 like NaN (the default) or
skips the step, leaving the weights unchanged (optim.spike_guard=skip); the NaN fault hook ends in exit 3.

Before: at lr 1e3 the loss went 6.2, 2.2e7, 1.9e7, ... and the run finished with exit 0 and checkpoints; the
NaN fault hook (MEGADRP_FAULT_NAN_AT_STEP) ended in a RuntimeError of the fused cross-entropy's backward.
"""
from __future__ import annotations

import pytest
import torch

from megadrp.trainer.spike_guard import SpikeGuard
from tests.helpers.train_runs import read_metrics
from tests.trainer.test_train_reliability import train

RUN = {"optim": {"max_steps": 4, "micro_batch_size": 2, "gradient_accumulation_steps": 2},
       "checkpoint": {"save_interval": 1, "keep_last": 5}}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from tests.helpers.train_runs import make_workspace

    tmp = tmp_path_factory.mktemp("spike")
    return {"tmp": tmp, **make_workspace(tmp)}


def _config(ws, name, **sections):
    from tests.helpers.train_runs import write_config

    merged = {k: dict(v) for k, v in RUN.items()}
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    return ws["tmp"] / name, write_config(ws["tmp"], ws, ws["tmp"] / name, **merged)


def test_a_diverging_run_stops_with_exit_3(ws):
    run, config = _config(ws, "lr1e3", optim={"lr": 1e3})
    proc = train(ws["tmp"], config)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "training diverged: loss spike at step 2" in proc.stderr and "median of the last 1 steps" in proc.stderr
    assert "Last good checkpoint" in proc.stderr and "step_1" in proc.stderr and "spike_guard=skip" in proc.stderr
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_1"
    assert not (run / "checkpoints" / "step_2").exists()
    assert [r["step"] for r in read_metrics(run)] == [1]


def test_the_nan_fault_hook_exits_3(ws):
    run, config = _config(ws, "nan_hook")
    proc = train(ws["tmp"], config, MEGADRP_FAULT_NAN_AT_STEP=2)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "loss is nan at step 2" in proc.stderr and "Traceback" not in proc.stderr


def test_skip_leaves_the_weights_of_a_spiking_step_unchanged(ws):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run, config = _config(ws, "skip", optim={"spike_guard": "skip"})
    proc = train(ws["tmp"], config, MEGADRP_FAULT_SPIKE_AT_STEP=3)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "step 3 skipped (weights unchanged): loss spike at step 3" in proc.stdout
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert recs[2].get("skipped") is True and recs[2]["lr"] == 0.0 and recs[2]["lm_loss"] > 1000
    assert all("skipped" not in r for r in recs[:2] + recs[3:])
    w = {s: get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=f"step_{s}") for s in (2, 3, 4)}
    assert all(torch.equal(w[2][k], w[3][k]) for k in w[2])  # the skipped step moved no weight
    assert not all(torch.equal(w[3][k], w[4][k]) for k in w[3])  # the next one trains again


def test_guard_statistic():
    g = SpikeGuard("stop", factor=5.0, window=3)
    assert not g.is_spike(1e9)  # no accepted step yet
    for x in (6.0, 5.0, 100.0, 4.0):
        g.observe(x)
    assert g.history == [5.0, 100.0, 4.0] and g.threshold() == 25.0  # the median ignores the lone 100
    low = SpikeGuard("stop", factor=5.0)
    low.observe(0.05)
    assert low.threshold() == 5.0 and not low.is_spike(0.5)  # the 1-nat floor: noise near 0 is no spike
    assert SpikeGuard("off").threshold() is None
