"""Reliability of runs (issue 17): nothing a user has is lost, nothing from a checkpoint runs, errors name the fix.

One real 2-step prune run (1 rank, ZeRO-3, CPU) writes step_1 and step_2; each test copies it and breaks the
copy as a user or a failing machine would: a fresh run into it, `latest` gone, a corrupted optimizer shard,
a __reduce__ payload in a state or shard file, a second trainer, a changed config, a read-only or full disk.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megadrp import run_format
from tests.helpers.train_runs import REPO, make_workspace, read_metrics, run_env, write_config

SHORT = {"optim": {"max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1},
         "checkpoint": {"save_interval": 1, "keep_last": 3}}


def train(tmp: Path, config: Path, *args: str, timeout: float = 180, **env) -> subprocess.CompletedProcess:
    """`megadrp prune` in one process (no launcher), as a user runs a small job."""
    return subprocess.run([sys.executable, "-m", "megadrp", "prune", "--config", str(config), *args],
                          env=run_env(tmp, **env), cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rel")
    ws = make_workspace(tmp)
    config = write_config(tmp, ws, tmp / "base", **SHORT)
    proc = train(tmp, config)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {"tmp": tmp, "ws": ws, "run": tmp / "base"}


def copy_run(base, name: str, **sections) -> tuple:
    """A copy of the base run under a new run_dir, and a config naming it (sections override SHORT)."""
    run = base["tmp"] / name
    shutil.copytree(base["run"], run)
    merged = {k: dict(v) for k, v in SHORT.items()}
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    return run, write_config(base["tmp"], base["ws"], run, **merged)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Payload:
    """Unpickling this runs code: it writes the marker file (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def refresh_manifest(ckpt: Path) -> None:
    """Rewrite the checksums after tampering, as an attacker would: only the load itself may stop the payload."""
    run_format.write_manifest(ckpt, {n: run_format.file_digest(ckpt / n) for n in run_format.manifest_files(ckpt)})


def test_fresh_run_into_a_used_run_dir_refuses_and_overwrite_allows_it(base):
    run, config = copy_run(base, "fresh_over")
    before = snapshot(run / "checkpoints")
    proc = train(base["tmp"], config)
    assert proc.returncode == 2 and "--resume auto" in proc.stderr and "new run_dir" in proc.stderr, proc.stderr
    assert proc.stderr.startswith("megadrp prune:") and "Traceback" not in proc.stderr
    assert snapshot(run / "checkpoints") == before  # nothing of the earlier run was touched
    proc = train(base["tmp"], config, "--overwrite", "optim.max_steps=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in run_format.list_checkpoints(run)] == ["step_1"]  # the old step_2 went with --overwrite
    assert [r["step"] for r in read_metrics(run)] == [1]


def test_resume_auto_without_latest_skips_a_corrupt_checkpoint(base):
    """`latest` deleted and step_2's optimizer shard corrupted: resume from step_1 (never a fresh start, never
    the corrupt one), saying why; the resumed losses equal the uninterrupted run's."""
    run, config = copy_run(base, "corrupt", optim={"max_steps": 2})
    (run / "checkpoints" / "latest").unlink()
    optim = next((run / "checkpoints" / "step_2").glob("*optim_states.pt"))
    data = bytearray(optim.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # zeroed master weights: same size, wrong bytes
    optim.write_bytes(bytes(data))
    proc = train(base["tmp"], config, "--resume", "auto")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "latest is missing" in proc.stdout
    assert "step_2 is damaged" in proc.stdout and "does not match its checksum" in proc.stdout
    assert "resumed from" in proc.stdout and "step_1 at step 1" in proc.stdout
    ref, got = read_metrics(base["run"]), read_metrics(run)
    assert [r["step"] for r in got] == [1, 2] and got[1]["loss"] == ref[1]["loss"]
    assert not run_format.verify_manifest(run / "checkpoints" / "step_2")  # rewritten whole by the resumed run


def test_code_in_a_checkpoint_never_runs(base, tmp_path, capsys):
    from megadrp.cli import main
    from megadrp.eval import loading
    from megadrp.export import ExportError, export_checkpoint
    from tests.helpers.model_folders import write_corpus

    marker = tmp_path / "pwned"
    # 1. An old-format (pickle) state file with a payload: refused by export, eval and resume, unread.
    legacy, config = copy_run(base, "legacy")
    ckpt = legacy / "checkpoints" / "step_2"
    (ckpt / run_format.STATE_FILE).unlink()
    torch.save({"step": 2, "x": Payload(marker)}, ckpt / run_format.LEGACY_STATE)
    with pytest.raises(ExportError, match="old state format"):
        export_checkpoint(legacy, tmp_path / "out", progress=False)
    with pytest.raises(ExportError, match="convert-legacy"):
        loading.resolve_model_dir(legacy, tmp_path / "scratch")
    corpus = write_corpus(tmp_path / "corpus", {"prose": ["It is a truth universally acknowledged."]})
    assert main(["eval", "--model", str(legacy), "--corpus", str(corpus)]) != 0
    assert "old state format" in capsys.readouterr().err
    proc = train(base["tmp"], config, "--resume", "auto")
    assert proc.returncode == 2 and "old state format" in proc.stderr, proc.stderr[-2000:]
    # 2. A DeepSpeed shard with a payload (manifest rewritten to match): DeepSpeed would unpickle it unrestricted.
    shard, config = copy_run(base, "shard")
    ckpt = shard / "checkpoints" / "step_2"
    model_states = next(ckpt.glob("*model_states.pt"))
    torch.save({"module": None, "x": Payload(marker)}, model_states)
    refresh_manifest(ckpt)
    with pytest.raises(ExportError, match="not plain checkpoint data"):
        export_checkpoint(ckpt, tmp_path / "out", progress=False)
    proc = train(base["tmp"], config, "--resume", str(ckpt), "optim.max_steps=3")
    assert proc.returncode == 2 and "not plain checkpoint data" in proc.stderr, proc.stdout[-2000:] + proc.stderr
    assert not marker.exists()


def test_a_second_trainer_into_a_locked_run_dir_refuses(base):
    from megadrp.trainer.run_lock import LOCK_FILE, RunLock, RunLockError

    run, config = copy_run(base, "locked", optim={"max_steps": 3})
    with RunLock(run):  # this test process is the live holder (same host, live pid)
        proc = train(base["tmp"], config, "--resume", "auto")
        assert proc.returncode == 2 and "in use by another megadrp run" in proc.stderr, proc.stderr[-2000:]
        assert "choose another run_dir" in proc.stderr
        with pytest.raises(RunLockError, match="in use"):
            RunLock(run).acquire()
    assert not (run / LOCK_FILE).exists()  # released on exit
    # A lock of a process that died (same host, dead pid) is stale: taken over with a note.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "x"}))
    notes = []
    RunLock(run, note=notes.append).acquire().release()
    assert "stale lock" in notes[0]
    # Another host's lock cannot be checked from here: refused, saying which file to delete once it is gone.
    (run / LOCK_FILE).write_text(json.dumps({"host": "node-that-died", "pid": 1, "started": "x"}))
    with pytest.raises(RunLockError, match=f"delete {run / LOCK_FILE}"):
        RunLock(run).acquire()


def test_resume_refuses_config_changes_a_changed_global_batch_and_reordered_domains(base):
    from megadrp.config import load_config
    from megadrp.trainer.resume_check import StartError, check_resume

    run, config = copy_run(base, "changed")
    proc = train(base["tmp"], config, "--resume", "auto", "pruning.target.hidden_size=32", "optim.lr=5e-4")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "pruning.target.hidden_size: 48 -> 32" in proc.stderr and "--allow-config-change" in proc.stderr
    assert "optim.lr" not in proc.stderr  # an lr change is not one that alters what the run means
    ckpt = run / "checkpoints" / "step_2"
    state = run_format.read_state(ckpt)
    cfg = load_config(str(config), ["optim.seed=7", "optim.micro_batch_size=1"])
    with pytest.raises(StartError) as err:
        check_resume(state, ckpt, cfg, 1, allow_change=False)
    assert "optim.seed: 1234 -> 7" in str(err.value)
    assert "global batch (micro_batch_size x gradient_accumulation_steps x world size): 2 -> 1" in str(err.value)
    notes = []
    check_resume(state, ckpt, cfg, 1, allow_change=True, note=notes.append)
    assert "optim.seed" in notes[0]
    # Another world size keeping the global batch (micro 2 on 1 rank -> micro 1 on 2): an elastic resume, accepted.
    notes = []
    check_resume(state, ckpt, load_config(str(config), ["optim.micro_batch_size=1"]), 2, allow_change=False,
                 note=notes.append)
    assert "world size: 1 -> 2 (elastic resume)" in notes[-1] and "optim.micro_batch_size" in notes[-1]
    with pytest.raises(StartError, match=r"global batch .*: 2 -> 4"):  # 2 ranks at micro 2: twice the batch
        check_resume(state, ckpt, load_config(str(config)), 2, allow_change=False)
    swapped = load_config(str(config), ["data.domains=[code,prose]"])
    with pytest.raises(StartError, match=r"reorders the domains .*\['prose', 'code'\]"):
        check_resume(state, ckpt, swapped, 1, allow_change=True)


def _in_namespace(tmp: Path, mount: str, config: Path, *args: str, after: str = "") -> subprocess.CompletedProcess:
    """The trainer in a user+mount namespace where ``mount`` (shell) made a real read-only or full file system."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs unprivileged user namespaces (unshare -rm) to make a read-only / full file system")
    train_cmd = " ".join([sys.executable, "-m", "megadrp", "prune", "--config", str(config), *args])
    script = f"{mount} && {train_cmd}; echo rc=$?; {after}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], env=run_env(tmp), cwd=REPO, capture_output=True,
                          text=True, timeout=180)


def test_full_disk_and_read_only_checkpoints_say_so(base):
    tmp, ws = base["tmp"], base["ws"]
    step_bytes = sum(p.stat().st_size for p in (base["run"] / "checkpoints" / "step_1").rglob("*") if p.is_file())
    # Room for one checkpoint and a half: step_2 is refused before writing, step_1 stays the latest.
    run = tmp / "full"
    (run / "checkpoints").mkdir(parents=True)
    config = write_config(tmp, ws, run, **SHORT)
    ck = run / "checkpoints"
    proc = _in_namespace(tmp, f"mount -t tmpfs -o size={int(step_bytes * 1.5)} tmpfs {ck}", config,
                         after=f"cat {ck}/latest; ls -a {ck}")
    assert "rc=4" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "not enough disk space" in proc.stderr and str(ck) in proc.stderr
    assert f"previous checkpoint {ck / 'step_1'} is intact" in proc.stderr
    assert "step_1\n" in proc.stdout and ".tmp_step_2" not in proc.stdout  # latest; no debris left
    # Room for less than one checkpoint: DeepSpeed's own write fails ("basic_ios::clear"); the message says disk.
    # (The first attempt's checkpoints went with its namespace, its metrics stayed: --resume auto, as exit 4 advises,
    # sets them aside rather than appending to them.)
    proc = _in_namespace(tmp, f"mount -t tmpfs -o size={step_bytes // 3} tmpfs {ck}", config, "optim.max_steps=1",
                         "--resume", "auto", after=f"ls -a {ck}")
    assert "rc=4" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no space left on the device" in proc.stderr and "No earlier checkpoint" in proc.stderr
    assert ".tmp_step_1" not in proc.stdout
    # Read-only checkpoints folder: permission named, with the path and the intact previous checkpoint.
    run, config = copy_run(base, "read_only", optim={"max_steps": 3})
    ck = run / "checkpoints"
    proc = _in_namespace(tmp, f"mount --bind {ck} {ck} && mount -o remount,bind,ro {ck}", config, "--resume", "auto")
    assert "rc=4" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "read-only file system" in proc.stderr and f"on {ck}" in proc.stderr
    assert f"previous checkpoint {ck / 'step_2'} is intact" in proc.stderr and "--resume auto" in proc.stderr


def test_preflight_finds_a_short_domain_and_a_model_without_weights(base, tmp_path):
    """Both used to surface as a traceback after the engine was built (minutes at 7B)."""
    import numpy as np

    from megadrp.config import ConfigError, load_config
    from megadrp.data import IndexedDatasetWriter, write_meta
    from megadrp.data.tokenizer import load_tokenizer
    from megadrp.methods import method_for
    from megadrp.trainer.build import preflight
    from megadrp.trainer.resume_check import check_start

    ws = base["ws"]
    prefix = tmp_path / "short"
    for ext in (".bin", ".idx", ".json"):
        shutil.copy(ws["prefix"] + "_prose" + ext, f"{prefix}_prose{ext}")
    with IndexedDatasetWriter(f"{prefix}_code", np.uint16) as w:
        w.add_document([5, 6, 7, 0])  # 4 tokens; seq_length 32 needs 33
    write_meta(f"{prefix}_code", load_tokenizer(ws["model"]).info())
    config = write_config(tmp_path, ws, tmp_path / "short_run", data={"prefix": str(prefix)})
    with pytest.raises(ConfigError, match=r"too few tokens for one training sample of seq_length \+ 1 = 33: code "
                                          r"\(4 tokens in .*short_code.bin\)"):
        cfg = load_config(str(config))
        preflight(cfg, method_for(cfg))
    hollow = tmp_path / "hollow"
    shutil.copytree(ws["model"], hollow, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = load_config(str(write_config(tmp_path, ws, tmp_path / "hollow_run", model={"path": str(hollow)})))
    with pytest.raises(ConfigError, match="has a config.json but no weights"):
        check_start(cfg, preflight(cfg, method_for(cfg)))


def test_export_of_an_unfinished_prune_run_warns(base, tmp_path, caplog):
    from megadrp.export.api import export_checkpoint

    with caplog.at_level("WARNING", logger="megadrp.export.api"):
        export_checkpoint(base["run"] / "checkpoints" / "step_1", tmp_path / "early", dtype="float32", progress=False)
    text = caplog.text
    assert "step 1 of 2 of an unfinished prune run" in text and "expected sparsity" in text and "vs target" in text
    assert (tmp_path / "early" / "config.json").is_file()  # a warning, not a refusal
