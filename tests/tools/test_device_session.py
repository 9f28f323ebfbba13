"""The GPU session's scripts rehearsed on the CPU: tools/device/device_session.sh, gpu_check.sh and experiment_gpu.sh.

They run on a borrowed GPU machine a few minutes at a time, where a broken script wastes the whole loan, and they
had never run before this test. In a copy of the repository, `receive` must move the carried part out of the
tree; `run check experiment` (QUICK=1: tiny shapes, the CPU, a tiny model passed through EXPERIMENT_ARGS_FILE)
must run both tasks under the deadline and bring back at most 8 plain files directly under $OUT, the device tool's
limit: the check's summary, the comparison's results, and one archive of the logs and per-run evaluations
without any weights. Only the model conversion and the wheel install (the GPU image's Python) are not exercised.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.helpers.pipeline_runs import TARGET, pipeline_config, pipeline_corpus

REPO = Path(__file__).resolve().parents[2]


def _copy_repo(dst: Path) -> Path:
    # what the device tool sends: tracked files and untracked ones git does not ignore
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def test_device_session_rehearsal_on_cpu(tmp_path):
    from tests.helpers.tiny_models import make_tiny_hf_model

    repo = _copy_repo(tmp_path / "repo")
    stage, out = tmp_path / "stage", tmp_path / "out"
    env = {**os.environ, "STAGE": str(stage), "OUT": str(out), "PYTHON": sys.executable, "WANDB_MODE": "disabled"}
    part1 = repo / ".devcarry" / "part1"
    part1.mkdir(parents=True)
    (part1 / "model.gguf.0").write_bytes(b"GGUF" * 256)
    subprocess.run(["bash", "tools/device/device_session.sh", "receive"], cwd=repo, env=env, check=True)
    assert (stage / "model.gguf.0").read_bytes() == b"GGUF" * 256 and not any(part1.iterdir())

    model = make_tiny_hf_model(tmp_path, "llama", num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                               intermediate_size=128, num_hidden_layers=4, seed=0)
    target = "pruning.target={" + ", ".join(f"{k}: {v}" for k, v in TARGET.items()) + "}"
    args = ["--model", str(model), "--corpus", str(pipeline_corpus(tmp_path / "corpus")),
            "--bin-dir", str(tmp_path / "bin"),
            "--config", str(pipeline_config(tmp_path / "exp.yaml", 2)), "--methods", "uniform", "oneshot",
            "--steps", "2", "--cpt-steps", "1", "--device", "cpu", "--parallel", "2", "--eval-windows", "2",
            "--eval-seq-length", "32",
            "data.seq_length=32", "optim.micro_batch_size=2", "dress.calibration_batches=2", target]
    (tmp_path / "args.txt").write_text("\n".join(args) + "\n")
    env.update(QUICK="1", DEADLINE_S="500", CHECK_S="120", SECOND_ARM_MIN_S="100000", BENCH_MODEL=str(model),
               EXPERIMENT_ARGS_FILE=str(tmp_path / "args.txt"))
    proc = subprocess.run(["bash", "tools/device/device_session.sh", "run", "check", "experiment"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    files = sorted(p.name for p in out.iterdir())
    assert all((out / f).is_file() for f in files) and len(files) <= 8, files
    assert {"gpu_summary.json", "experiment_gpu_results.md", "experiment_gpu_results.json",
            "logs.tar.gz"} <= set(files), files
    summary = json.loads((out / "gpu_summary.json").read_text())
    # the check's trainer rows ran on the tiny model: ZeRO "auto" is stage 1 on one rank
    assert summary["train_smollm2"]["rows"][0]["zero_stage"] == 1, summary
    results = json.loads((out / "experiment_gpu_results.json").read_text())
    assert {m: sorted(s) for m, s in results["runs"].items()} == {"uniform": ["1", "2"], "oneshot": ["1", "2"]}
    assert results["status"] == "complete"
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "runs/experiment_gpu/uniform/seed2/eval.json" in names
    assert "runs/experiment_gpu/logs/oneshot_seed2.log" in names  # one worker process per run
    # the experiment published its results straight into $OUT (a call killed at the tool's limit keeps them)
    assert not list((repo / "runs" / "device_session" / "experiment").glob("experiment_gpu_results.*"))
    # sized before it started, from the committed timings; two runs at once; the estimate beside the measured
    log_text = (repo / "runs" / "device_session" / "experiment" / "experiment.log").read_text()
    assert "plan: 4 runs, 2 at once" in log_text and "of the " in log_text
    assert results["timing"]["runs at once"] == 2 and "ended at" in results["timing"]["uniform seed 2"]
    assert "runs/device_session/experiment/status.txt" in names and "runs/device_session/session.log" in names
    assert not [n for n in names if n.endswith((".safetensors", ".pt"))]
    log = (repo / "runs" / "device_session" / "session.log").read_text()
    assert "gpu_check.sh: exit 0" in log and "experiment_gpu.sh: exit 0" in log
    status = (repo / "runs" / "device_session" / "experiment" / "status.txt").read_text()
    assert "extreme target (0.29x), five methods: exit 0" in status and "0.60x target: not run" in status


def test_a_call_on_a_staged_machine_skips_the_staging(tmp_path):
    """The comparison's own call (call 3 of docs/BENCHMARKS.md's runbook) carries nothing: on the machine call 2
    staged (the marker in $STAGE, the converted weights in the tree's .cache) it installs, joins and converts
    nothing, and makes the corpus and bins newer than this call's fresh copy of the tree."""
    repo = _copy_repo(tmp_path / "repo")
    stage, out = tmp_path / "stage", tmp_path / "out"
    stage.mkdir()
    (stage / "staged").write_text("")
    cache = repo / ".cache"
    for f in ("models/smollm2-135m/model.safetensors", "corpus/manifest.json", "corpus_unseen/manifest.json",
              "bin/smollm2-135m/train_code.idx"):
        (cache / f).parent.mkdir(parents=True, exist_ok=True)
        (cache / f).write_text("x")
        os.utime(cache / f, (1_000_000, 1_000_000))
    env = {**os.environ, "STAGE": str(stage), "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "tools/device/device_session.sh", "run"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (repo / "runs" / "device_session" / "session.log").read_text()
    assert "staged by an earlier call" in log and "install the carried wheels" not in log
    assert (cache / "corpus_unseen" / "manifest.json").stat().st_mtime > \
        (repo / "configs" / "unseen_sources.yaml").stat().st_mtime
    assert (out / "logs.tar.gz").is_file()
