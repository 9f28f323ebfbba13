"""Thin launch entry of megadrp training, usable under every launcher and from the `megadrp` CLI.

    deepspeed --num_gpus 8 megadrp/train.py --config configs/X.yaml [key=value ...] [--resume auto|PATH]
    torchrun --nproc_per_node 8 megadrp/train.py --config configs/X.yaml ...
    srun python megadrp/train.py --config ...             (RANK etc. taken from SLURM_PROCID / SLURM_NTASKS)
    megadrp prune --config configs/X.yaml --nproc 2       (starts the deepspeed launcher, or runs in-process for 1)

Order of work: parse, load + validate the config, pre-flight checks (DeepSpeed JSON vs config and world size,
target vs source, data and tokenizer, the memory plan: megadrp/plan/; where the run starts: no fresh run over an
earlier run's checkpoints, a resume's config and domains against its checkpoint's) -- all before any process
group or model exists -- then the run_dir lock (global rank 0), then train.
Exit codes: 0 done, 2 configuration / input / run_dir error (nothing trained), 3 training diverged
(NaN/inf loss), 4 a checkpoint could not be written (the message says why; the previous one is intact),
75 stopped by SIGTERM/SIGUSR1 after checkpointing the last finished step (megadrp/trainer/stop_signal.py:
requeue the job, it continues with --resume auto).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (deepspeed/torchrun/srun `python megadrp/train.py`): Python put megadrp/ itself first on
    # sys.path, where our subpackages (kernels, config, data, model, ...) would shadow installed top-level
    # packages of the same name (transformers imports the PyPI package `kernels`). Make the repository
    # importable; importing the package then drops megadrp/ from sys.path (megadrp/__init__.py).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import megadrp  # noqa: F401,E402


# True while several stages run in one process (megadrp/recipe/stages.py, run_in_process): the process
# group then outlives each run, since DeepSpeed caches groups made from it (a second deepspeed.initialize after a
# destroy_process_group fails: "Group ... is not registered").
KEEP_PROCESS_GROUP = False


def _parser(prog: str, with_launch: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML recipe (configs/); dotted key=value overrides follow")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 run_dir=runs/x")
    p.add_argument("--resume", default=None, help="'auto' (the newest complete checkpoint of run_dir; a fresh start if "
                                                     "there is none) or a checkpoint path")
    p.add_argument("--init-from", default=None, help="weights-only start: a checkpoint folder or HF folder")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run_dir that holds an earlier run's checkpoints (deletes them)")
    p.add_argument("--branch", action="store_true",
                   help="resume from a checkpoint older than the run_dir's newest: move the later checkpoints and "
                        "their metrics aside into RUN_DIR/abandoned/")
    p.add_argument("--take-over-lock", action="store_true",
                   help="take over the run_dir lock of a run known to be dead (its node is gone); the holder is named")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although model, target, batch arithmetic, seed or DRO method differ from "
                        "the checkpoint")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    if with_launch:
        p.add_argument("--nproc", type=int, default=1, help="processes on this machine (>1 starts a launcher)")
        p.add_argument("--launcher", choices=("deepspeed", "torchrun"), default="deepspeed")
        p.add_argument("--master-port", type=int, default=None)
    return p


def _is_main_env() -> bool:
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def run(argv: list[str], mode: str | None = None) -> int:
    """Train in this process (one rank of a launched job, or a single in-process rank)."""
    args = _parser("megadrp/train.py", with_launch=False).parse_intermixed_args(argv)
    # torch 2.13 warns at every ZeRO-3 collective that DeepSpeed calls a deprecated name: once per step per rank.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from megadrp.config import ConfigError, load_config

    overrides = list(args.overrides)
    if mode:
        overrides.append(f"mode={mode}")
    if args.resume:
        overrides.append(f"checkpoint.resume={args.resume}")
    if args.init_from:
        overrides.append(f"checkpoint.init_from={args.init_from}")
    # Under a launcher the mode arrives as the override mode=X: name it in messages, not "train".
    prefix = f"megadrp {mode or _mode_of(overrides) or 'train'}"
    try:
        cfg = load_config(args.config, overrides)
        prefix = f"megadrp {cfg.mode}"
        from megadrp.methods import method_for
        from megadrp.trainer.build import preflight
        from megadrp.trainer.resume_check import check_start

        method = method_for(cfg)
        if not method.trains:
            raise ConfigError("mode", cfg.mode, f"does not train: run `megadrp {cfg.mode}` instead")
        inputs = preflight(cfg, method)  # the teacher and DRO's reference model included; frozen from here on
        from megadrp.plan.report import startup_check

        # The memory plan (megadrp plan): printed by rank 0; a run that cannot fit its GPUs stops here.
        startup_check(cfg, inputs, log=lambda msg: print(f"[megadrp] {msg}", flush=True) if _is_main_env() else None)
        check_start(cfg, inputs, args.overwrite, args.allow_config_change,
                    note=lambda msg: print(f"[megadrp] {msg}", flush=True) if _is_main_env() else None,
                    branch=args.branch)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        if _is_main_env():
            print(f"{prefix}: {err}", file=sys.stderr)
        return 2
    from megadrp.distill import make_distiller
    from megadrp.distill.source_reference import measure as measure_reference
    from megadrp.trainer import Trainer, TrainingDiverged, dist, stop_signal
    from megadrp.trainer.write_guard import CheckpointWriteError

    stop_signal.install()  # from here on SIGTERM/SIGUSR1 stop at the next step boundary, with a checkpoint
    dist.ensure_single_process_env()
    dist.init_distributed()
    lock = None
    try:
        lock = _lock_run_dir(cfg, args.overwrite, args.take_over_lock, args.branch)
        code = Trainer(cfg, inputs, method.mode(), resume=cfg.checkpoint.resume,
                       distiller=make_distiller, reference=measure_reference).setup().train()
        # Only after a clean finish (a rank that raised must not wait here for peers that never come): every
        # rank leaves together, so none tears its gloo/NCCL connections down while a peer still uses them.
        dist.barrier()
        return code
    except stop_signal.RunInterrupted as err:
        if lock is not None:  # released before any rank exits: srun --kill-on-bad-exit ends the job at the first
            lock.release()
        if dist.is_main():
            print(f"{prefix}: {err}", file=sys.stderr, flush=True)
        dist.barrier()
        return stop_signal.EXIT_REQUEUE
    except TrainingDiverged as err:
        if dist.is_main():
            print(f"{prefix}: training diverged: {err}", file=sys.stderr, flush=True)
        return 3
    except CheckpointWriteError as err:
        if dist.is_main():
            print(f"{prefix}: {err}", file=sys.stderr, flush=True)
        return 4
    except (RuntimeError, ValueError) as err:  # RunLockError, a damaged checkpoint (RunFormatError): no traceback
        if not _is_start_error(err):
            raise
        if dist.is_main():
            print(f"{prefix}: {err}", file=sys.stderr, flush=True)
        return 2
    finally:
        if lock is not None:
            lock.release()
        import torch.distributed as tdist

        if tdist.is_initialized() and not KEEP_PROCESS_GROUP:
            tdist.destroy_process_group()


def _mode_of(overrides: list[str]) -> str | None:
    found = [o.split("=", 1)[1] for o in overrides if o.startswith("mode=")]
    return found[-1] if found else None


def _is_start_error(err: BaseException) -> bool:
    from megadrp.run_format import RunFormatError
    from megadrp.trainer.run_lock import RunLockError

    return isinstance(err, (RunFormatError, RunLockError))


def _lock_run_dir(cfg, overwrite: bool, take_over: bool = False, branch: bool = False):
    """Global rank 0 takes the run_dir lock (and, with --overwrite, clears the earlier run; with --branch or over
    a run that saved nothing, moves the abandoned history aside); every rank learns the outcome, so a refused job
    stops on all ranks at once."""
    from megadrp.trainer import dist
    from megadrp.trainer.resume_check import prepare_history, wipe_for_overwrite
    from megadrp.trainer.run_lock import RunLock, RunLockError

    lock, failure = None, None
    if dist.is_main():
        try:
            lock = RunLock(cfg.run_dir, note=lambda msg: print(f"[megadrp] {msg}", flush=True),
                           take_over=take_over).acquire()
            if overwrite and cfg.checkpoint.resume in (None, "", "none"):
                wipe_for_overwrite(cfg.run_dir)
            prepare_history(cfg, branch, note=lambda msg: print(f"[megadrp] {msg}", flush=True))
        except (RunLockError, OSError) as err:  # OSError: moving the abandoned history aside failed
            failure = str(err)
    failure = dist.all_gather_object(failure)[0]
    if failure is not None:
        raise RunLockError(failure)
    return lock


def launch_command(argv: list[str], nproc: int, launcher: str, master_port: int) -> list[str]:
    """The launcher command line that starts `nproc` ranks of this script on this machine."""
    script = str(Path(__file__).resolve())
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(master_port), script, *argv]
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc),
            "--master_port", str(master_port), script, *argv]


def main_method(mode: str, argv: list[str]) -> int:
    """`megadrp MODE ...` for a training method (megadrp.methods): in this process, or N ranks under a launcher."""
    args, _ = _parser(f"megadrp {mode}", with_launch=True).parse_known_args(argv)
    launch_flags = ("--nproc", "--launcher", "--master-port")
    cleaned, skip = [], False  # argv minus the launch flags (and their values), forwarded to every rank
    for a in argv:
        if skip:
            skip = False
        elif a in launch_flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in launch_flags)):
            cleaned.append(a)
    if args.nproc <= 1:
        return run(cleaned, mode)
    from megadrp.trainer.dist import free_port

    env = dict(os.environ)
    # Neither the deepspeed launcher nor a bare process sets a thread count; N ranks x all cores each thrash.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    cmd = launch_command(cleaned + [f"mode={mode}"], args.nproc, args.launcher, args.master_port or free_port())
    return subprocess.call(cmd, env=env)


def _exit_launched_rank(code: int) -> None:
    """End a launched rank without the interpreter's C++ teardown.

    A rank that finished cleanly (process group destroyed, checkpoints written atomically, metrics and wandb
    closed, the lock released) was seen aborting afterwards with SIGABRT, "terminate called without an active
    exception": a joinable C++ thread of the communication stack destroyed during interpreter finalisation
    (once in a CI run of the 2-rank distillation test; pytorch/pytorch#179291 describes the same class of exit
    crash). Nothing is left to lose by then, so flush and leave. Only after success: a failed or refused run
    exits normally (no process group was made, or the error is already on its way).
    """
    if code != 0:  # a refused start: the normal exit, which also gives rank 0's message time to reach the
        sys.exit(code)  # launcher before a faster rank's exit makes it kill the job
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_launched_rank(run(sys.argv[1:]))
