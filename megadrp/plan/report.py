"""``megadrp plan``: the memory plan of a recipe on N GPUs, as a table or JSON; and the trainer's start-up check.

    megadrp plan --config configs/llama3.1_70b_to_8b.yaml --gpus 8 [--gpu-memory-gib 80] [--json] [key=value ...]

The trainer prints the same plan at start-up (rank 0) and refuses, on GPUs, a run whose estimate exceeds the
device's memory, naming the knob to change; on CPU the plan is printed only (host memory is shared with
everything else on the machine, and the estimate's GPU reserve does not apply there).
"""
from __future__ import annotations

import argparse
import json
import sys

from megadrp.plan.estimate import Estimate, estimate

_LINES = ("weights", "gradients", "fp32_master", "adam", "fp32_gradients", "model_states", "masks_and_multipliers",
          "teacher", "activations", "logits", "zero_buffers", "reserve", "total")


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def render(est: Estimate, run) -> str:
    """The human-readable plan."""
    p, g, z = est.params, est.per_gpu_gib, run.zero
    offload = "+".join(k for k, on in (("optimizer", z.offload_optimizer), ("params", z.offload_param)) if on)
    out = [f"params: source {_count(p['source'])}, target {_count(p['target'])}, masks {p['masks']:,}"
           + (f", teacher {_count(p['teacher'])}" if p["teacher"] else ""),
           f"setup: {est.gpus} {'GPUs' if est.device == 'cuda' else 'CPU ranks'}, {run.precision}, "
           f"ZeRO stage {z.stage}"
           + (f", offload {offload} to CPU" if offload else "")
           + f", micro {run.micro_batch} x seq {run.seq_length}, activation checkpointing "
           + ("on" if run.activation_checkpointing else "off"),
           f"per {'GPU' if est.device == 'cuda' else 'rank, resident'} (GiB):"]
    for key in _LINES:
        if key in g and (g[key] > 0 or key in ("model_states", "total")):
            indent = "    " if key in ("weights", "gradients", "fp32_master", "adam", "fp32_gradients") else "  "
            out.append(f"{indent}{key:<22}{g[key]:9.2f}")
    out.append(f"  activations without / with checkpointing: {est.activations_without_checkpointing_gib:.2f} / "
               f"{est.activations_with_checkpointing_gib:.2f} GiB")
    host = sum(est.host_gib.values())
    if host:
        out.append(f"host memory per GPU (offload): {host:.2f} GiB, per 8-GPU node {8 * host:.1f} GiB")
    t = est.time
    line = f"tokens per step {est.tokens_per_step:,}"
    if t.get("step_s"):
        line += (f"; at MFU {t['mfu']:.0%} of {t['peak_tflops']:.0f} TFLOP/s: {t['step_s']:.2f} s/step, "
                 f"{t['total_h']:.1f} h for {t['steps']} steps")
    out.append(line)
    if est.fits is not None:
        out.append(f"fits {est.gpu_memory_gib:g} GiB per GPU: {'yes' if est.fits else 'NO'}")
    for hint in est.advice:
        out.append(f"  to fit: {hint}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    from megadrp.config import load_config
    from megadrp.plan.resolve import run_shape

    ap = argparse.ArgumentParser(prog="megadrp plan", description="Memory plan of a recipe: parameters, per-GPU "
                                 "memory, whether it fits, tokens per step and time at a stated MFU.")
    ap.add_argument("--config", required=True, help="YAML recipe (configs/)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    ap.add_argument("--gpus", type=int, required=True, help="data-parallel GPUs (all nodes together)")
    ap.add_argument("--gpu-memory-gib", type=float, default=None, help="memory of one GPU; decides 'fits'")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation (default 0.4)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 peak of one GPU (default: H100 989)")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = ap.parse_args(argv)
    if args.gpus < 1:
        ap.error("--gpus must be >= 1")
    cfg = load_config(args.config, args.overrides)
    run = run_shape(cfg, args.gpus, gpu_memory_gib=args.gpu_memory_gib)
    est = estimate(run, args.gpu_memory_gib, mfu=args.mfu, peak_tflops=args.peak_tflops)
    print(json.dumps(est.to_dict(), indent=2) if args.json else render(est, run))
    return 0 if est.fits is not False else 1


def startup_check(cfg, inputs, log=print, gpu_memory_gib=None) -> Estimate:
    """Print the plan of this run (``inputs``: its pre-flight RunInputs); raise ConfigError when it cannot fit the
    GPUs it runs on (their memory from CUDA unless given; on CPU nothing is refused)."""
    import torch

    from megadrp.config import ConfigError
    from megadrp.plan.resolve import run_shape

    run = run_shape(cfg, inputs.world_size, inputs=inputs)  # what pre-flight resolved, not the config again
    memory = gpu_memory_gib
    if memory is None and torch.cuda.is_available():
        memory = torch.cuda.get_device_properties(0).total_memory / 1024 ** 3
    device = "cuda" if memory is not None else "cpu"
    # No time estimate on CPU unless logging.peak_tflops states a peak (the GPU default means nothing there).
    peak = cfg.logging.peak_tflops or (989.0 if device == "cuda" else 0.0)
    est = estimate(run, memory, peak_tflops=peak, device=device)
    log("memory plan (megadrp plan):\n" + render(est, run))
    if est.fits is False:
        raise ConfigError("deepspeed.config", cfg.deepspeed.config,
                          f"this run needs ~{est.per_gpu_gib['total']:.1f} GiB per GPU but the GPUs have "
                          f"{memory:.1f} GiB; change: " + "; or ".join(est.advice))
    return est


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
