"""tools/bench_train.py runs both of its paths (DeepSpeed ZeRO-3 in one process, plain torch) on the tiny CPU
shape and writes a JSON whose numbers are consistent with each other."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.train_runs import REPO, run_env


@pytest.mark.parametrize("extra", [["--no-deepspeed", "--precision", "fp32,bf16"], ["--precision", "fp32"]],
                         ids=["torch", "deepspeed"])
def test_bench_train_writes_consistent_json(tmp_path, extra):
    out = tmp_path / "train.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench_train.py"), "--steps", "2", "--warmup", "1",
                           "--rounds", "1", "--seq", "32", "--out", str(out), *extra],
                          env=run_env(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "prune / cpt step time" in proc.stdout
    res = json.loads(out.read_text())
    assert res["shape"] == "tiny" and res["precision"] == "fp32"
    assert (res["deepspeed"] is None) == ("--no-deepspeed" in extra)
    if "fp32,bf16" in extra:  # two precisions alternated in one run, the second as a ratio of the first
        bf16 = res["precisions"]["bf16"]
        assert (bf16["storage"], bf16["autocast"]) == ("fp32", "bf16")
        assert bf16["step_ratio_vs_fp32"]["prune"] == pytest.approx(
            bf16["results"]["prune"]["step_s_median"] / res["results"]["prune"]["step_s_median"])
    for mode in ("cpt", "prune"):
        r = res["results"][mode]
        assert r["steps"] == 2 and r["step_s_median"] > 0 and r["mfu"] is None  # no peak known on CPU
        assert r["tokens_per_s"] == pytest.approx(2 * 32 / r["step_s_median"])
    assert res["ratio_prune_over_cpt"] == pytest.approx(
        res["results"]["prune"]["step_s_median"] / res["results"]["cpt"]["step_s_median"])
