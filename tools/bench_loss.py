"""LM-head + loss benchmark: peak memory and time of one micro-batch's head, per-token CE and backward, fused
(megadrp/kernels/cross_entropy.py, chunked, no [N, V] logits) against logits-then-CE, same shapes, one run.

    python tools/bench_loss.py                                   # CPU: 128k vocab, d 512, 2048 tokens
    python tools/bench_loss.py --tokens 8192 --hidden 2048 --dtype bf16   # on a GPU: Llama-3-1B's head

Only the head and the loss differ between the two paths (the decoder below them is the same), so the
benchmark runs exactly that: hidden states [N, d] and the head weight [V, d], both requiring gradients,
forward to fp32 per-token losses, mean, backward. Peak memory: on CUDA the allocator's peak above the inputs;
on CPU each variant runs in a fresh subprocess and reports its peak resident set (ru_maxrss) above the resident
set after the inputs were allocated. Time: median of --reps, the variants alternated. Prints a table and
writes JSON (default runs/bench/loss.json).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from megadrp.kernels.cross_entropy import linear_cross_entropy, token_cross_entropy  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VARIANTS = ("unfused", "fused")


def inputs(args, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = DTYPES[args.dtype]
    h = torch.randn(args.tokens, args.hidden, generator=g).to(device, dtype).requires_grad_()
    w = (0.02 * torch.randn(args.vocab, args.hidden, generator=g)).to(device, dtype).requires_grad_()
    t = torch.randint(0, args.vocab, (args.tokens,), generator=g).to(device)
    return h, w, t


def step(variant: str, h, w, t) -> None:
    if variant == "fused":
        losses = linear_cross_entropy(h, w, t)
    else:
        losses = token_cross_entropy(F.linear(h, w), t)
    losses.mean().backward()
    h.grad = w.grad = None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def peak_cpu_child(args, variant: str) -> int:
    """Run in a fresh process: the peak resident set above the inputs of one step (bytes)."""
    h, w, t = inputs(args, torch.device("cpu"))
    base = _rss_bytes()
    step(variant, h, w, t)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base


def peak_memory(args, variant: str, device) -> int:
    if device.type == "cuda":
        h, w, t = inputs(args, device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(variant, h, w, t)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    cmd = [sys.executable, __file__, "--child", variant, "--tokens", str(args.tokens), "--hidden", str(args.hidden),
           "--vocab", str(args.vocab), "--dtype", args.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


def times(args, device) -> dict:
    h, w, t = inputs(args, device)
    out = {v: [] for v in VARIANTS}
    for v in VARIANTS:
        step(v, h, w, t)  # warm-up
    for _ in range(args.reps):
        for v in VARIANTS:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(v, h, w, t)
            if device.type == "cuda":
                torch.cuda.synchronize()
            out[v].append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocab", type=int, default=128256, help="default: Llama-3's vocabulary")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default="runs/bench/loss.json")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(peak_cpu_child(args, args.child))
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    logits_bytes = args.tokens * args.vocab * 4
    peaks = {v: peak_memory(args, v, device) for v in VARIANTS}
    ts = times(args, device)
    res = {v: {"peak_bytes": peaks[v], "step_s_median": statistics.median(ts[v]), "step_s": ts[v]} for v in VARIANTS}
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    out = {"benchmark": "lm_head_loss", "device": dev, "torch": torch.__version__, "tokens": args.tokens,
           "hidden": args.hidden, "vocab": args.vocab, "dtype": args.dtype, "fp32_logits_bytes": logits_bytes,
           "results": res, "peak_saved_bytes": peaks["unfused"] - peaks["fused"],
           "peak_ratio_fused_over_unfused": peaks["fused"] / peaks["unfused"],
           "time_ratio_fused_over_unfused": res["fused"]["step_s_median"] / res["unfused"]["step_s_median"],
           "command": " ".join(sys.argv)}
    gib = 2 ** 30
    print(f"\nLM head + CE fwd+bwd, {args.tokens} tokens x vocab {args.vocab}, d {args.hidden}, {args.dtype}, {dev}; "
          f"fp32 logits {logits_bytes / gib:.2f} GiB")
    print("| path | peak above inputs | step (median) |\n|---|---|---|")
    for v in VARIANTS:
        print(f"| {v} | {res[v]['peak_bytes'] / gib:.2f} GiB | {1000 * res[v]['step_s_median']:.1f} ms |")
    print(f"fused / unfused: peak {out['peak_ratio_fused_over_unfused']:.3f}x (saves "
          f"{out['peak_saved_bytes'] / gib:.2f} GiB), time {out['time_ratio_fused_over_unfused']:.3f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
