"""Compare the planner's per-rank estimate with the peak memory of a real run (one process), for docs/BENCHMARKS.md.

    python tools/plan_vs_measured.py --config configs/demo_smollm2.yaml model.path=... data.prefix=... [k=v ...]
    python tools/plan_vs_measured.py --tiny DIR [k=v ...]      (the tests' tiny llama and data, built in DIR)

Runs the trainer in this process (world size 1) and reports, in GiB: the plan's total (no GPU reserve) and its
lines, and the measured peak: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak resident set
(``getrusage`` max RSS) minus the resident set just before the model is built (interpreter, torch, DeepSpeed,
the process group). CPU RSS also holds allocator slack and freed-but-kept pages, so it is an upper bound of
what the tensors needed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 ** 3


def _tiny_config(folder: Path) -> str:
    from tests.helpers.train_runs import make_workspace, write_config

    folder.mkdir(parents=True, exist_ok=True)
    ws = make_workspace(folder)
    return str(write_config(folder, ws, folder / "run", optim={"max_steps": 3, "micro_batch_size": 4,
                                                              "gradient_accumulation_steps": 1, "lr": 1e-3},
                            checkpoint={"save_interval": 100}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config")
    ap.add_argument("--tiny", type=Path, help="build the tests' tiny workspace here and use its config")
    ap.add_argument("--predict-only", action="store_true", help="print the plan's numbers without running")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch

    from megadrp.config import load_config
    from megadrp.distill import make_distiller
    from megadrp.distill.source_reference import measure
    from megadrp.methods import method_for
    from megadrp.plan import estimate, run_shape
    from megadrp.trainer import Trainer, dist
    from megadrp.trainer.build import preflight

    config = _tiny_config(args.tiny) if args.tiny else args.config
    cfg = load_config(config, list(args.overrides) + ["logging.wandb_mode=disabled", "checkpoint.save_interval=100000"])
    method = method_for(cfg)
    plan = preflight(cfg, method, world_size=1)
    run = run_shape(cfg, 1, precision=plan.precision, ds_config=plan.ds_config)
    est = estimate(run, None, device="cuda" if torch.cuda.is_available() else "cpu")
    if args.predict_only:
        print(json.dumps({k: round(v, 3) for k, v in est.per_gpu_gib.items()}))
        return 0
    dist.ensure_single_process_env()
    dist.init_distributed()
    cuda = torch.cuda.is_available()
    base = _rss_gib()
    trainer = Trainer(cfg, plan, method.mode(), distiller=make_distiller, reference=measure).setup()
    trainer.train()
    if cuda:
        measured = torch.cuda.max_memory_allocated() / 1024 ** 3
    else:
        measured = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2 - base  # ru_maxrss is KiB
    g = est.per_gpu_gib
    out = {"model": cfg.model.path, "mode": cfg.mode, "precision": plan.precision, "micro_batch": run.micro_batch,
           "seq_length": run.seq_length, "activation_checkpointing": run.activation_checkpointing,
           "params": est.params["source"], "predicted_gib": round(g["total"], 3),
           "predicted_lines_gib": {k: round(v, 3) for k, v in g.items() if v},
           "measured_gib": round(measured, 3), "measured_over_predicted": round(measured / g["total"], 3),
           "device": "cuda" if cuda else "cpu"}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
