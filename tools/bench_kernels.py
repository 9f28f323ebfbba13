"""Benchmark of megadrp's masked ops: fwd+bwd time of (a) the Triton masked ops (megadrp.kernels.ops),
(b) eager PyTorch masking (megadrp.kernels.reference), (c) the unmasked dense ops (cuBLAS, SDPA), per op, for
LLaMA-2-7B and SmolLM2-135M layer shapes in bf16; plus the hard-mask path at kept fractions 1/.75/.5/.25.

    python tools/bench_kernels.py [--out runs/bench/kernels.json] [--reps 25]

Prints a table of (a)/(c) and (b)/(a) and writes JSON. Without CUDA it runs tiny fp32 shapes on the CPU
(labelled cpu-tiny; (a) is then the reference path) so that the script itself can be smoke-tested.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: megadrp and experiments/

from experiments import hard_mask_ops as hard  # noqa: E402
from megadrp.kernels import ops, reference  # noqa: E402

SHAPES = {  # d, H, G, head_dim, m, batch, seq
    "llama2-7b": dict(d=4096, H=32, G=32, hd=128, m=11008, B=4, T=2048),
    "smollm2-135m": dict(d=576, H=9, G=3, hd=64, m=1536, B=4, T=2048),
}
CPU_SHAPES = {"cpu-tiny": dict(d=64, H=4, G=2, hd=16, m=96, B=2, T=32)}


def timer(fn, reps: int, warmup: int, cuda: bool) -> float:
    """Median milliseconds of fn() over reps, after warmup calls. On a GPU: CUDA events around each call and
    no sync between calls (as triton.testing.do_bench), so the host may run ahead as it does in training."""
    for _ in range(warmup):
        fn()
    if not cuda:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in ev:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in ev)


def graph_timer(fn, reps: int, warmup: int):
    """Median ms of a CUDA-graph replay of fn: device time with the host launch overhead taken out (the
    cost the kernels themselves add); None where capture fails."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return timer(graph.replay, reps, warmup, True)
    except Exception as e:  # noqa: BLE001 (a benchmark records what it could not time)
        print(f"  graph capture failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
        return None


def fwd_bwd(op, inputs):
    """A closure running op(*inputs) and its backward to every input that requires grad."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    dy = {}

    def run():
        y = op(*inputs)
        if "dy" not in dy:
            dy["dy"] = torch.randn_like(y)
        torch.autograd.grad(y, leaves, dy["dy"])
    return run


def with_impl(impl, fn):
    def op(*a):
        ops.set_gemm_impl(impl)
        try:
            return fn(*a)
        finally:
            ops.set_gemm_impl("fold")
    return op


def cases(s, dev, dt):
    """(op name, {variant: (callable, inputs)}) for one model's layer shapes."""
    M, d, H, G, hd, m = s["B"] * s["T"], s["d"], s["H"], s["G"], s["hd"], s["m"]

    def r(*shape, grad=True, scale=1.0):
        return (torch.randn(*shape, device=dev, dtype=dt) * scale).requires_grad_(grad)

    def z(n):  # a soft mask in (0.1, 1): fp32 and learned, as in training
        return (torch.rand(n, device=dev) * 0.9 + 0.1).requires_grad_()

    out = []
    x_o, w_o, zh, zo = r(M, H * hd), r(d, H * hd, scale=0.02), z(G), z(d)
    z_in_o = lambda: zh.repeat_interleave(H // G * hd)  # noqa: E731
    out.append(("masked GEMM o_proj", {
        "a": (lambda x, w, zh_, zo_: ops.masked_linear(x, w, None, z_in_o(), zo_), [x_o, w_o, zh, zo]),
        "a_fused": (with_impl("fused", lambda x, w, zh_, zo_: ops.masked_linear(x, w, None, z_in_o(), zo_)),
                    [x_o, w_o, zh, zo]),
        "b": (lambda x, w, zh_, zo_: reference.masked_linear(x, w, None, z_in_o(), zo_), [x_o, w_o, zh, zo]),
        "c": (lambda x, w: F.linear(x, w), [x_o, w_o])}))
    x_d, w_d = r(M, m), r(d, m, scale=0.02)
    out.append(("masked GEMM down_proj", {
        "a": (lambda x, w, zo_: ops.masked_linear(x, w, None, None, zo_), [x_d, w_d, zo]),
        "a_fused": (with_impl("fused", lambda x, w, zo_: ops.masked_linear(x, w, None, None, zo_)), [x_d, w_d, zo]),
        "b": (lambda x, w, zo_: reference.masked_linear(x, w, None, None, zo_), [x_d, w_d, zo]),
        "c": (lambda x, w: F.linear(x, w), [x_d, w_d])}))
    x, wg, wu, zi = r(M, d), r(m, d, scale=0.02), r(m, d, scale=0.02), z(m)
    out.append(("SwiGLU", {
        "a": (ops.masked_swiglu, [x, wg, wu, zi]),
        "a_fused": (with_impl("fused", ops.masked_swiglu), [x, wg, wu, zi]),
        "b": (reference.masked_swiglu, [x, wg, wu, zi]),
        "c": (lambda x_, g_, u_: F.silu(F.linear(x_, g_)) * F.linear(x_, u_), [x, wg, wu])}))
    nw, zd = r(d), z(d)
    with torch.no_grad():
        zd[: d // 4] = 0.0
    dense_norm = (lambda x_, w_: F.rms_norm(x_, (d,), w_, 1e-6)) if hasattr(F, "rms_norm") else \
        (lambda x_, w_: reference.masked_rmsnorm(x_, w_, 1e-6))
    out.append(("RMSNorm", {
        "a": (lambda x_, w_, z_: ops.masked_rmsnorm(x_, w_, 1e-6, z_), [x, nw, zd]),
        "b": (lambda x_, w_, z_: reference.masked_rmsnorm(x_, w_, 1e-6, z_), [x, nw, zd]),
        "c": (dense_norm, [x, nw])}))
    B, T = s["B"], s["T"]
    q, k, v = r(B, H, T, hd), r(B, G, T, hd), r(B, G, T, hd)

    def attn_o(lin):
        def f(q_, k_, v_, w, zh_, zo_):
            ctx = ops.attention(q_, k_, v_).transpose(1, 2).reshape(B * T, H * hd)
            return lin(ctx, w, None, z_in_o(), zo_)
        return f
    out.append(("attention + o_proj", {
        "a": (attn_o(ops.masked_linear), [q, k, v, w_o, zh, zo]),
        "b": (attn_o(reference.masked_linear), [q, k, v, w_o, zh, zo]),
        "c": (lambda q_, k_, v_, w: F.linear(ops.attention(q_, k_, v_).transpose(1, 2).reshape(B * T, H * hd), w),
              [q, k, v, w_o])}))
    return out


def hard_cases(s, dev, dt):
    """FFN (SwiGLU + down_proj) and attention block at kept fractions: hard path vs the soft path."""
    M, d, H, G, hd, m = s["B"] * s["T"], s["d"], s["H"], s["G"], s["hd"], s["m"]
    B, T = s["B"], s["T"]
    r = lambda *sh: (torch.randn(*sh, device=dev, dtype=dt) * 0.02).requires_grad_()  # noqa: E731
    x, h3 = r(M, d), r(B, T, d)
    wg, wu, wd = r(m, d), r(m, d), r(d, m)
    wq, wk, wv, wo = r(H * hd, d), r(G * hd, d), r(G * hd, d), r(d, H * hd)
    zo = torch.rand(d, device=dev) * 0.9 + 0.1
    res = []
    for frac in (1.0, 0.75, 0.5, 0.25):
        zi = torch.rand(m, device=dev) * 0.9 + 0.1
        zi[torch.randperm(m, device=dev)[: m - round(frac * m)]] = 0.0
        zh = torch.rand(G, device=dev) * 0.9 + 0.1
        zh[torch.randperm(G, device=dev)[: G - max(1, round(frac * G))]] = 0.0
        ffn_hard = fwd_bwd(lambda *a, zi=zi: hard.hard_masked_mlp(*a, zi, zo), [x, wg, wu, wd])
        ffn_soft = fwd_bwd(lambda x_, g_, u_, d_, zi=zi: ops.masked_linear(ops.masked_swiglu(x_, g_, u_, zi), d_, None,
                                                                      z_out=zo), [x, wg, wu, wd])
        attn_hard = fwd_bwd(lambda *a, zh=zh: hard.hard_masked_attention(*a, zh, H, hd, z_out=zo), [h3, wq, wk, wv, wo])
        res.append((frac, ffn_hard, ffn_soft, attn_hard))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench/kernels.json")
    p.add_argument("--reps", type=int, default=25)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--models", nargs="*", default=None, help="subset of " + ", ".join(SHAPES))
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    dev, dt = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    shapes = {k: SHAPES[k] for k in (a.models or SHAPES)} if cuda else CPU_SHAPES
    device_name = torch.cuda.get_device_name() if cuda else "cpu-tiny (no GPU: reference path, fp32)"
    torch.manual_seed(0)
    rows, hard_rows = [], []

    def measure(fn):
        """(eager-launch ms, CUDA-graph ms or None) of one fwd+bwd closure."""
        return timer(fn, a.reps, a.warmup, cuda), graph_timer(fn, a.reps, a.warmup) if cuda else None

    for model, s in shapes.items():
        for op, variants in cases(s, dev, dt):
            t = {k: measure(fwd_bwd(f, ins)) for k, (f, ins) in variants.items()}
            ms, gms = {k: v[0] for k, v in t.items()}, {k: v[1] for k, v in t.items()}
            row = dict(model=model, op=op, ms=ms, graph_ms=gms, a_over_c=ms["a"] / ms["c"], b_over_a=ms["b"] / ms["a"])
            if all(v is not None for v in gms.values()):
                row.update(graph_a_over_c=gms["a"] / gms["c"], graph_b_over_a=gms["b"] / gms["a"])
                if "a_fused" in gms:
                    row["graph_a_fused_over_c"] = gms["a_fused"] / gms["c"]
            rows.append(row)
            print(f"{model:13s} {op:22s} " + " ".join(f"{k}={v[0]:.3f}/{v[1] or 0:.3f}ms" for k, v in t.items()),
                  flush=True)
        for frac, ffn_hard, ffn_soft, attn_hard in hard_cases(s, dev, dt):
            t = {k: measure(f) for k, f in dict(ffn_hard=ffn_hard, ffn_soft=ffn_soft, attn_hard=attn_hard).items()}
            hard_rows.append(dict(model=model, kept=frac, ms={k: v[0] for k, v in t.items()},
                                  graph_ms={k: v[1] for k, v in t.items()}))
            print(f"{model:13s} hard kept={frac:.2f} " + " ".join(f"{k}={v[0]:.3f}/{v[1] or 0:.3f}ms"
                                                                    for k, v in t.items()), flush=True)
        if cuda:
            torch.cuda.empty_cache()

    def f3(v):
        return "-" if v is None else f"{v:.3f}"
    print(f"\n## {device_name}, torch {torch.__version__}, dtype {dt}, fwd+bwd median of {a.reps}")
    print("eager = host launches each kernel (no sync between reps); graph = CUDA-graph replay (device cost only)")
    print("| model | op | (a) ms eager/graph | (b) ms eager/graph | (c) ms eager/graph | (a)/(c) eager | (a)/(c) graph "
          "| (b)/(a) eager | (b)/(a) graph | fused-GEMM (a')/(c) graph |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r_ in rows:
        ms, g = r_["ms"], r_["graph_ms"]
        print(f"| {r_['model']} | {r_['op']} | {ms['a']:.3f}/{f3(g['a'])} | {ms['b']:.3f}/{f3(g['b'])} | "
              f"{ms['c']:.3f}/{f3(g['c'])} | {r_['a_over_c']:.3f} | {f3(r_.get('graph_a_over_c'))} | "
              f"{r_['b_over_a']:.2f} | {f3(r_.get('graph_b_over_a'))} | {f3(r_.get('graph_a_fused_over_c'))} |")
    print("\n| model | kept | FFN hard ms (eager/graph) | FFN hard / hard@1.0 | FFN soft ms | attn block hard ms "
          "(eager/graph) | attn / attn@1.0 |")
    print("|---|---|---|---|---|---|---|")
    base = {}
    for h in hard_rows:
        key = "graph_ms" if all(v is not None for v in h["graph_ms"].values()) else "ms"
        if h["kept"] == 1.0:
            base[h["model"]] = h[key]
        b0, t = base[h["model"]], h[key]
        h["ffn_vs_full"], h["attn_vs_full"] = t["ffn_hard"] / b0["ffn_hard"], t["attn_hard"] / b0["attn_hard"]
        print(f"| {h['model']} | {h['kept']:.2f} | {h['ms']['ffn_hard']:.3f}/{f3(h['graph_ms']['ffn_hard'])} | "
              f"{h['ffn_vs_full']:.2f} | {h['ms']['ffn_soft']:.3f} | "
              f"{h['ms']['attn_hard']:.3f}/{f3(h['graph_ms']['attn_hard'])} | {h['attn_vs_full']:.2f} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import triton  # noqa: F401 (version for the record)
    out.write_text(json.dumps(dict(device=device_name, torch=torch.__version__, triton=triton.__version__,
                                   dtype=str(dt), reps=a.reps, shapes=shapes, ops=rows, hard=hard_rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
