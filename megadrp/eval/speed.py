"""Inference speed and memory of a Hugging Face folder, as a user of stock transformers would see them.

Measured in a fresh process per model (``python -m megadrp.eval.speed DIR``, run by ``megadrp eval --speed``), so
that peak memory is that model's own (on CPU the process's peak resident set, which includes the Python and torch
runtime; on CUDA ``torch.cuda.max_memory_allocated``) and no model's allocations or threads disturb the next one:

- prefill: tokens per second of one forward pass over ``batch x tokens`` fresh tokens (the KV cache filled, as
  ``generate`` does before its first token);
- decode at batch 1 (latency: one stream) and at a serving batch (throughput): after a short prompt, greedy next
  tokens one at a time through the KV cache; tokens per second over all streams and milliseconds per step.

Inputs are fixed random token ids (seeded), so every model sees the same work. Each timing is the median of
``repeats`` runs after one warm-up run. Numbers compare models measured in the same run on the same machine
(``machine()`` names it); across machines or runs only their ratios mean much.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

# Sized for a small model on a few CPU cores (about half a minute per model); a GPU gets more work per call.
CPU_SETTINGS = {"prefill_batch": 2, "prefill_tokens": 128, "prompt_tokens": 16, "decode_tokens": 16,
                "serving_batch": 4, "repeats": 3}
GPU_SETTINGS = {"prefill_batch": 8, "prefill_tokens": 512, "prompt_tokens": 64, "decode_tokens": 64,
                "serving_batch": 32, "repeats": 5}


def machine(device) -> dict:
    """What the numbers were measured on: CPU model, cores and threads, GPU, torch and transformers versions."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
    if torch.device(device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels, lazy initialisation
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _decode(model, ids, steps: int):
    """Greedy decoding of ``steps`` tokens after the prompt ``ids``; returns the time of the steps alone."""
    import torch

    with torch.inference_mode():
        out = model(ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _sync(ids.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _sync(ids.device)
        return time.perf_counter() - t0


def measure(model, settings: dict) -> dict:
    """Prefill and decode speed of a loaded model (eval mode, on its device) under ``settings``."""
    import torch

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    s = settings

    def ids(batch: int, tokens: int):
        return torch.randint(0, vocab, (batch, tokens), generator=gen).to(device)

    prefill_ids = ids(s["prefill_batch"], s["prefill_tokens"])

    def prefill():
        with torch.inference_mode():
            model(prefill_ids, use_cache=True)

    seconds = _median_seconds(prefill, device, s["repeats"])
    out = {"prefill": {"batch": s["prefill_batch"], "tokens": s["prefill_tokens"],
                       "tokens_per_s": s["prefill_batch"] * s["prefill_tokens"] / seconds}, "decode": []}
    for batch in (1, s["serving_batch"]):
        prompt = ids(batch, s["prompt_tokens"])
        _decode(model, prompt, 2)  # warm-up
        runs = [_decode(model, prompt, s["decode_tokens"]) for _ in range(s["repeats"])]
        step = statistics.median(runs) / s["decode_tokens"]
        out["decode"].append({"batch": batch, "prompt_tokens": s["prompt_tokens"], "new_tokens": s["decode_tokens"],
                              "tokens_per_s": batch / step, "ms_per_token": 1000 * step})
    return out


def _peak_rss_mb() -> float | None:
    """This process's peak resident set (VmHWM), in MiB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure_folder(path: str, device: str | None = None, settings: dict | None = None) -> dict:
    """Load ``path`` as `megadrp eval` does and measure it (call in a fresh process for a clean peak memory)."""
    import torch

    from megadrp.eval.loading import default_device, load_hf

    dev = default_device(device)
    settings = settings or (GPU_SETTINGS if dev.type == "cuda" else CPU_SETTINGS)
    model, _ = load_hf(path, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    out = measure(model, settings)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    out.update(device=dev.type, dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
               weights_mb=weights / 2**20, machine=machine(dev))
    if dev.type == "cuda":
        out["peak_memory_mb"], out["peak_memory_kind"] = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda allocated"
    else:
        out["peak_memory_mb"], out["peak_memory_kind"] = _peak_rss_mb(), "process peak RSS"
    return out


def measure_in_subprocess(path: str, device: str | None = None, timeout: float = 1800) -> dict:
    """``measure_folder`` in a fresh Python process; raises RuntimeError with its error output on failure."""
    import subprocess

    cmd = [sys.executable, "-m", "megadrp.eval.speed", str(path)] + (["--device", device] if device else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"speed measurement of {path} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megadrp.eval.speed", description=__doc__.split("\n")[0])
    p.add_argument("model", help="Hugging Face model folder")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = p.parse_args(argv)
    print(json.dumps(measure_folder(args.model, args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
