"""Data changed under a run (issue 30): a checkpoint records what each domain's binaries were (sizes and a
sampled checksum, megadrp.data.fingerprint), and a resume onto other binaries is refused, naming the domain and
the change (`--allow-config-change` continues anyway, saying so).

Before: PREFIX_code.bin/.idx replaced in place between two runs of a job, and `--resume auto` applied the saved
sampler positions to the new data with exit 0.
"""
from __future__ import annotations

import shutil

import numpy as np

from megadrp import run_format
from megadrp.data.fingerprint import BLOCK, fingerprint
from tests.helpers.train_runs import read_metrics
from tests.trainer.test_train_reliability import base, copy_run, train  # noqa: F401 - base: the module's 2-step run


def test_resume_onto_replaced_binaries_is_refused_naming_the_domain(base, tmp_path):  # noqa: F811
    ws = base["ws"]
    prefix = tmp_path / "data" / "train"
    prefix.parent.mkdir()
    for d in ("prose", "code"):  # a private copy of the run's binaries, identical to what it trained on
        for ext in (".bin", ".idx", ".json"):
            shutil.copy(f"{ws['prefix']}_{d}{ext}", f"{prefix}_{d}{ext}")
    run, config = copy_run(base, "data_change", optim={"max_steps": 3}, data={"prefix": str(prefix)})
    saved = run_format.read_state(run / "checkpoints" / "step_2")["data"]
    assert saved["code"] == fingerprint(f"{prefix}_code") and saved["code"]["bin_bytes"] > 0
    # 1. Regenerated with other documents: other sizes.
    for ext in (".bin", ".idx"):
        shutil.copy(f"{ws['prefix']}_prose{ext}", f"{prefix}_code{ext}")
    proc = train(base["tmp"], config, "--resume", "auto")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"training data of domain 'code' ({prefix}_code.bin/.idx) changed since the checkpoint: .bin" in proc.stderr
    assert "'prose'" not in proc.stderr and "--init-from" in proc.stderr and "--allow-config-change" in proc.stderr
    # 2. Same sizes, other tokens (a sampled block differs).
    for ext in (".bin", ".idx"):
        shutil.copy(f"{ws['prefix']}_code{ext}", f"{prefix}_code{ext}")
    tokens = np.fromfile(f"{prefix}_code.bin", dtype=np.uint16)  # two tokens of the first sampled block swapped
    i = next(k for k in range(1, BLOCK // 2) if tokens[k] != tokens[0])
    tokens[[0, i]] = tokens[[i, 0]]
    tokens.tofile(f"{prefix}_code.bin")
    proc = train(base["tmp"], config, "--resume", "auto")
    assert proc.returncode == 2 and "same sizes, different content" in proc.stderr, proc.stderr[-2000:]
    # 3. The user's explicit word: continue on the new data, said so.
    proc = train(base["tmp"], config, "--resume", "auto", "--allow-config-change")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "continuing" in proc.stdout and "on changed data" in proc.stdout
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
