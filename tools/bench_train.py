"""Training-step benchmark: tokens/s and MFU of `prune` (masked model + masks + Lagrangian + side optimizer)
against `cpt` (the same model, dense) in one process, same shape, same run; optionally several precisions.

    python tools/bench_train.py                                # tiny CPU shape, through DeepSpeed ZeRO-3
    python tools/bench_train.py --shape llama-1b --seq 2048    # on a GPU: bf16, a 0.94B LLaMA shape
    python tools/bench_train.py --shape llama-1b --no-deepspeed  # plain torch step (no deepspeed installed)
    python tools/bench_train.py --shape smollm2-135m --no-deepspeed --precision fp32,bf16,auto  # CPU bf16

With several precisions (comma-separated) each gets its own model, and the timed rounds alternate between them
so that load from other processes hits all alike; the table gives each one's step time over fp32's. On CPU
'bf16' is bf16 autocast over fp32 weights and 'auto' runs the start-up matmul probe (megadrp/trainer/precision.py).

Weights are random (the step cost does not depend on them). Every step is a full training step: forward,
per-token CE, the mode's loss terms, backward, optimizer step(s). Prints a table with the prune/cpt step-time
ratio and writes JSON (default runs/bench/train.json). MFU = flops_per_token x tokens/s / peak
(megadrp/trainer/mfu.py; --peak-tflops for devices missing from its table, CPU included).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from megadrp.kernels.cross_entropy import token_cross_entropy  # noqa: E402

SHAPES = {
    # name: (vocab, d, H, G, m, L); head_dim = d / H
    "tiny": (512, 64, 4, 2, 128, 4),
    "smollm2-135m": (49152, 576, 9, 3, 1536, 30),  # tied embeddings (make_shape)
    "small": (32000, 512, 8, 4, 1408, 8),
    "llama-1b": (32000, 2048, 16, 16, 5504, 16),   # 0.94B with LM head: Sheared-LLaMA-1.3B's widths, 16 layers
    "llama-1b-gqa": (32000, 2048, 16, 8, 5504, 16),
}


def make_shape(name: str):
    from megadrp.model import ModelShape

    v, d, h, g, m, layers = SHAPES[name]
    return ModelShape(vocab_size=v, hidden_size=d, num_attention_heads=h, num_key_value_heads=g, head_dim=d // h,
                      intermediate_size=m, num_hidden_layers=layers, max_position_embeddings=8192,
                      tie_word_embeddings=name.startswith("smollm2"))


def half_target(shape):
    """A target of about half the source's width per family (what the masks' cost does not depend on)."""
    from megadrp.config import TargetShape

    ratio = shape.num_attention_heads // shape.num_key_value_heads
    g = max(1, shape.num_key_value_heads // 2)
    return TargetShape(hidden_size=shape.hidden_size // 2, num_attention_heads=g * ratio, num_key_value_heads=g,
                       intermediate_size=shape.intermediate_size // 2,
                       num_hidden_layers=max(1, shape.num_hidden_layers // 2))


def build_cfg(args, shape):
    from megadrp.config import RunConfig

    cfg = RunConfig()
    cfg.pruning.target = half_target(shape)
    cfg.optim.micro_batch_size, cfg.optim.max_steps, cfg.optim.lr = args.micro_batch, 1000, 1e-5
    cfg.model.activation_checkpointing = args.activation_checkpointing
    return cfg


def ds_config(args, precision: str, shape) -> dict:
    stage = args.zero_stage
    zero = {"stage": stage}
    if stage in ("3", "auto"):
        zero.update(stage3_param_persistence_threshold=0 if args.shape == "tiny" else int(1e6),
                    stage3_prefetch_bucket_size=int(5e8), overlap_comm=True)
    ds = {"train_micro_batch_size_per_gpu": args.micro_batch, "gradient_accumulation_steps": 1,
          "train_batch_size": args.micro_batch, "gradient_clipping": 1.0, "zero_optimization": zero,
          "bf16": {"enabled": precision == "bf16"}, "steps_per_print": 10 ** 9, "wall_clock_breakdown": False}
    if stage == "auto":
        from megadrp.config.zero_stage import resolve_zero_stage
        from megadrp.trainer.dist import device

        args.zero_reason = resolve_zero_stage(ds, shape.num_params(), 1, precision, device().type)
    else:
        zero["stage"] = int(stage)
    args.zero_stage_used = zero["stage"]
    return ds


def make_model(shape, precision, device, args):
    from megadrp.model import MaskedCausalLM

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    model = MaskedCausalLM(shape, "llama", dtype=dtype, activation_checkpointing=args.activation_checkpointing)
    model.init_weights(generator=torch.Generator().manual_seed(0))
    return model.to(device)


class Runner:
    """One model + optimizer; `step(masked)` runs a full training step in prune or cpt mode."""

    def __init__(self, args, shape, run_precision, device):
        from megadrp.methods.prune import PruneMode
        from megadrp.trainer.dist import DataParallelGroup
        from megadrp.trainer.optim import make_weight_optimizer

        self.args, self.device, self.precision, self.shape = args, device, run_precision, shape
        precision = run_precision.storage
        cfg = build_cfg(args, shape)
        model = make_model(shape, precision, device, args)
        optimizer = make_weight_optimizer(model, cfg.optim)
        if args.no_deepspeed:
            self.model, self.optimizer, self.engine = model, optimizer, None
        else:
            from megadrp.trainer import engine as engine_mod

            self.engine = engine_mod.initialize(model, optimizer, ds_config(args, precision, self.shape))
            self.model = self.engine
        self.prune = PruneMode()
        self.prune.setup(SimpleNamespace(cfg=cfg, shape=shape, device=device, engine=self.engine,
                                         group=DataParallelGroup()))
        self.vocab, self.step_no = shape.vocab_size, 0

    def step(self, masked: bool) -> None:
        self.step_no += 1
        tokens = torch.randint(0, self.vocab, (self.args.micro_batch, self.args.seq + 1), device=self.device)
        masks = self.prune.train_masks(self.step_no, 0) if masked else None
        with self.precision.context(self.device.type):
            if self.args.unfused_ce:
                tok_loss = token_cross_entropy(self.model(tokens[:, :-1], masks), tokens[:, 1:])
            else:
                tok_loss = self.model(tokens[:, :-1], masks, targets=tokens[:, 1:])
        loss = tok_loss.mean()
        if masked:
            loss = loss + sum(self.prune.loss_terms(self.step_no, 0).values())
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if masked:
            self.prune.after_step(self.step_no)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(runner, masked: bool, steps: int, warmup: int, device) -> list:
    for _ in range(warmup):
        runner.step(masked)
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        runner.step(masked)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: tiny on CPU, llama-1b on GPU")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default 128 CPU, 2048 GPU)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per step (default 2 CPU, 4 GPU)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode and round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="cpt/prune alternations (medians over all rounds)")
    p.add_argument("--precision", default="auto",
                   help="auto, bf16 or fp32, or several comma-separated (alternated in one run, ratios vs the first)")
    p.add_argument("--unfused-ce", action="store_true", help="logits then CE instead of the fused LM head + CE")
    p.add_argument("--zero-stage", choices=("0", "1", "2", "3", "auto"), default="3",
                   help="auto: the stage megadrp/config/zero_stage.py picks for this shape on this device")
    p.add_argument("--no-deepspeed", action="store_true", help="plain torch step of the same model and masks")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="peak of this device when not in the table")
    p.add_argument("--out", default="runs/bench/train.json")
    args = p.parse_args(argv)

    from megadrp.trainer import dist
    from megadrp.trainer.mfu import flops_per_token, peak_flops

    device = dist.device()
    gpu = device.type == "cuda"
    args.shape = args.shape or ("llama-1b" if gpu else "tiny")
    args.seq = args.seq or (2048 if gpu else 128)
    args.micro_batch = args.micro_batch or (4 if gpu else 2)
    from megadrp.trainer.precision import measure_bf16_ratio, probe_shape, resolve

    names = [n.strip() for n in args.precision.split(",") if n.strip()]
    bad = [n for n in names if n not in ("auto", "bf16", "fp32")]
    if bad or not names:
        p.error(f"--precision {args.precision!r}: give auto, bf16 or fp32 (comma-separated for several)")
    torch.manual_seed(0)
    if not args.no_deepspeed:
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            p.error("deepspeed is not installed here: install its wheel, or measure the plain step with --no-deepspeed")
        dist.ensure_single_process_env()
        dist.init_distributed()
    shape = make_shape(args.shape)
    probe = probe_shape(args.micro_batch * args.seq, shape.hidden_size, shape.intermediate_size)
    precisions = {n: resolve(n, device.type, lambda: measure_bf16_ratio(probe)) for n in names}
    runners = {n: Runner(args, shape, rp, device) for n, rp in precisions.items()}

    times = {n: {"cpt": [], "prune": []} for n in names}
    for _ in range(args.rounds):  # alternate so drift (clocks, caches, other jobs) hits every variant alike
        for n in names:
            for mode in ("cpt", "prune"):
                times[n][mode] += measure(runners[n], mode == "prune", args.steps, args.warmup, device)

    tokens = args.micro_batch * args.seq
    fpt = flops_per_token(shape, args.seq)
    peak = peak_flops(device, args.peak_tflops)
    by_precision = {}
    for n in names:
        results = {}
        for mode, ts in times[n].items():
            med = statistics.median(ts)
            tps = tokens / med
            results[mode] = {"step_s_median": med, "step_s_min": min(ts), "tokens_per_s": tps,
                             "mfu": None if peak is None else tps * fpt / peak, "steps": len(ts)}
        by_precision[n] = {"resolved": precisions[n].describe(), "storage": precisions[n].storage,
                           "autocast": precisions[n].autocast, "results": results,
                           "ratio_prune_over_cpt": results["prune"]["step_s_median"] / results["cpt"]["step_s_median"]}
    first = by_precision[names[0]]
    for n in names:
        by_precision[n]["step_ratio_vs_" + names[0]] = {
            mode: by_precision[n]["results"][mode]["step_s_median"] / first["results"][mode]["step_s_median"]
            for mode in ("cpt", "prune")}
    cpu_name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    device_name = torch.cuda.get_device_name(device) if gpu else cpu_name
    path = "plain torch" if args.no_deepspeed else f"DeepSpeed ZeRO-{args.zero_stage_used}" + (
        f" ({args.zero_reason})" if getattr(args, "zero_reason", "") else "")
    out = {"benchmark": "train_step", "device": device_name, "torch": torch.__version__,
           "deepspeed": None if args.no_deepspeed else __import__("deepspeed").__version__,
           "zero_stage": None if args.no_deepspeed else args.zero_stage_used,
           "zero_reason": getattr(args, "zero_reason", ""), "precision": names[0],
           "shape": args.shape, "params": shape.num_params(), "seq_length": args.seq, "micro_batch": args.micro_batch,
           "activation_checkpointing": args.activation_checkpointing, "fused_ce": not args.unfused_ce,
           "flops_per_token": fpt, "peak_flops": peak, "results": first["results"],
           "ratio_prune_over_cpt": first["ratio_prune_over_cpt"], "precisions": by_precision,
           "command": " ".join(sys.argv)}
    print(f"\ntrain step, {args.shape} ({shape.num_params() / 1e6:.1f}M params), seq {args.seq} x {args.micro_batch}, "
          f"{path}, {'unfused' if args.unfused_ce else 'fused'} CE, {device_name}")
    print(f"| precision | mode | step (median) | tokens/s | MFU | step vs {names[0]} |\n|---|---|---|---|---|---|")
    for n in names:
        for mode, r in by_precision[n]["results"].items():
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            vs = by_precision[n]["step_ratio_vs_" + names[0]][mode]
            print(f"| {n} | {mode:5s} | {1000 * r['step_s_median']:.1f} ms | {r['tokens_per_s']:.0f} | {mfu} | "
                  f"{vs:.3f}x |")
    for n in names:
        print(f"{n}: {by_precision[n]['resolved']}; prune / cpt step time: "
              f"{by_precision[n]['ratio_prune_over_cpt']:.3f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    if not args.no_deepspeed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
