"""Elastic resume (megadrp/trainer/elastic.py): a ZeRO-3 prune run checkpointed on 1 rank continues on 2 gloo
ranks with `--resume auto`, and that 2-rank run's checkpoint continues on 1 rank, each to the last step; and
`--init-from` a checkpoint of another world size starts from its trained weights.

micro_batch_size x world size is kept at 4 (micro 4 on 1 rank, micro 2 on 2 ranks), so every run draws the same
sequences and the 1-rank run from scratch is the reference: the resumed runs must match its losses (up to float
summation order across ranks), its multipliers and its sampler cursors exactly. Before elastic resume, the
2 -> 1 direction was a raw "ZeRORuntimeException: ... DP world size of 2 but the current world size is 1".
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers.train_runs import deepspeed_cmd, launch, make_workspace, read_metrics, run_env, write_config  # noqa: E402

STEPS = {"max_steps": 6, "gradient_accumulation_steps": 1, "lr": 1e-3}
CHECKPOINTS = {"save_interval": 2, "keep_last": 3}


def _fork(src: Path, dst: Path, step: int) -> None:
    """A run directory holding only src's checkpoint of `step` (and its metrics up to it): as if the run had
    stopped there."""
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copytree(src / "checkpoints" / f"step_{step}", dst / "checkpoints" / f"step_{step}")
    (dst / "checkpoints" / "latest").write_text(f"step_{step}\n")
    lines = (src / "metrics.jsonl").read_text().splitlines()
    (dst / "metrics.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))


def _run(tmp: Path, ws: dict, run_dir: Path, nproc: int, *extra: str):
    config = write_config(tmp, ws, run_dir, optim=dict(STEPS, micro_batch_size=4 // nproc), checkpoint=CHECKPOINTS)
    proc = launch(deepspeed_cmd(config, *extra, nproc=nproc), run_env(tmp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _sampler(run_dir: Path, step: int) -> dict:
    from megadrp import run_format

    return run_format.read_state(run_dir / "checkpoints" / f"step_{step}")["sampler"]


def _assert_continues(reference: Path, source: Path, resumed: Path, first_resumed_step: int) -> None:
    ref, got = read_metrics(reference), read_metrics(resumed)
    assert [r["step"] for r in got] == list(range(1, 7))
    # The first resumed step's forward uses the loaded weights and masks: what the source run would have seen.
    would = read_metrics(source)[first_resumed_step - 1]["loss"]
    assert got[first_resumed_step - 1]["loss"] == pytest.approx(would, rel=1e-6)
    for a, b in zip(ref, got):
        # Across world sizes, steps compound the float differences of the cross-rank gradient mean (<= 4e-4 here).
        assert b["loss"] == pytest.approx(a["loss"], rel=3e-3), a["step"]
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=3e-3), a["step"]
        for key, value in a["lambdas"].items():
            assert b["lambdas"][key] == pytest.approx(value, rel=1e-3, abs=1e-5), (a["step"], key)
        assert b["domain_weights"] == pytest.approx(a["domain_weights"], abs=1e-3), a["step"]
    # Global data position: every domain's cursor where the reference's is (no sequence skipped or repeated).
    assert _sampler(resumed, 6)["cursors"] == _sampler(reference, 6)["cursors"]
    assert _sampler(resumed, 6)["step"] == _sampler(reference, 6)["step"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """The 1-rank run from scratch: the reference, and the 1-rank checkpoints."""
    tmp = tmp_path_factory.mktemp("elastic")
    ws = make_workspace(tmp)
    _run(tmp, ws, tmp / "one_rank", nproc=1)
    return tmp, ws, tmp / "one_rank"


def test_resume_at_another_world_size_continues_to_the_last_step(one_rank):
    from megadrp.trainer.elastic import saved_world_size

    tmp, ws, one = one_rank
    assert saved_world_size(one / "checkpoints" / "step_2") == 1

    up = tmp / "one_to_two"
    _fork(one, up, 2)
    proc = _run(tmp, ws, up, 2, "--resume", "auto")
    assert "elastic resume" in proc.stdout and "written by 1 ranks, this run has 2" in proc.stdout
    assert (up / "checkpoints" / "step_2" / "universal" / "zero").is_dir()
    assert saved_world_size(up / "checkpoints" / "step_4") == 2
    _assert_continues(one, one, up, 3)

    down = tmp / "two_to_one"
    _fork(up, down, 4)
    proc = _run(tmp, ws, down, 1, "--resume", "auto")
    assert "written by 2 ranks, this run has 1" in proc.stdout
    _assert_continues(one, up, down, 5)


def test_init_from_a_checkpoint_of_another_world_size_loads_its_trained_weights(one_rank):
    """Weights only (cpt), 2 ranks from the 1-rank step_4: the first loss is the consolidated weights' loss on
    the first batch, computed here without DeepSpeed."""
    import torch
    import torch.nn.functional as F

    from megadrp.data import DomainMixtureSampler, load_domain_datasets
    from megadrp.export.consolidate import consolidate
    from megadrp.model import MaskedCausalLM, read_shape

    tmp, ws, one = one_rank
    ckpt = one / "checkpoints" / "step_4"
    run_dir = tmp / "init_from"
    config = write_config(tmp, ws, run_dir, mode="cpt", optim=dict(STEPS, max_steps=1, micro_batch_size=2),
                          checkpoint=CHECKPOINTS)
    proc = launch(deepspeed_cmd(config, "--init-from", str(ckpt), nproc=2), run_env(tmp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shape, family = read_shape(ws["model"])
    model = MaskedCausalLM(shape, family, dtype=torch.float32)
    model.load_state_dict(consolidate(ckpt), strict=False)  # a tied LM head comes back under both names
    datasets = load_domain_datasets(ws["prefix"], ["prose", "code"], tokenizer=ws["model"])
    tokens = DomainMixtureSampler(datasets, 32, 4, seed=1234).next_batch()["tokens"]
    with torch.no_grad():
        logits = model(tokens[:, :-1])
    want = float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)))
    assert read_metrics(run_dir)[0]["lm_loss"] == pytest.approx(want, rel=1e-5)
