"""Training-step benchmark of the real trainer: the steps `megadrp prune` and `megadrp cpt` run (the same Trainer,
mode, masks, DRO, DeepSpeed engine and logging), for several variants of the run in one process, so that their
ratios come from one run on one machine.

    python tools/bench_train.py --model .cache/models/smollm2-135m --seq 2048 --micro-batch 8 \\
        --variant zero1=deepspeed.config=ds_configs/auto.json --variant zero0=zero_stage=0
    python tools/bench_train.py --model .cache/models/smollm2-135m --shape hidden_size=2048,intermediate_size=5504,\\
num_attention_heads=16,num_key_value_heads=16,num_hidden_layers=16,head_dim=128,tie_word_embeddings=false
    python tools/bench_train.py --model M --count-ops       # CPU: operators and host syncs per step

The model is --model (a Hugging Face folder), or with --shape a model of its family and tokenizer with those
config fields and random weights (written once under --work). The data are random token ids in the recipe's
domains (the step's cost does not depend on them). Each row is one (variant, mode): a fresh run directory, a
Trainer built as train.py builds it, --warmup steps, then --steps timed steps through ``Trainer.run_step`` (step,
read-back at log / DRO-update steps, log line), in --chunks chunks each closed by a device synchronisation; the
row's step time is the median of the chunk means. A variant is NAME=OVERRIDE[,OVERRIDE...] (dotted config
overrides; ``zero_stage=N`` writes the recipe's DeepSpeed JSON with that stage). Prune rows use a target of about
half the source in every family (all four mask families active) unless the recipe has one.

Writes JSON after every row (--out; a run cut short by --deadline keeps the rows it finished) and prints a table:
step time, tokens/s, MFU (megadrp/trainer/mfu.py; n/a on CPU), peak device memory, prune / cpt per variant and
each variant over the first. --count-ops adds one counted step per row (tools/step_counts.py).
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

DOMAINS = ["code", "legal", "manuals", "literature", "math", "multilingual"]


def synthetic_model(source: str, fields: str, work: Path) -> str:
    """A folder with the source's family and tokenizer, its config changed by FIELD=VALUE pairs, random weights."""
    from megadrp.data.tokenizer_files import copy_model_files
    from megadrp.export.writer import hf_config, save_weights
    from megadrp.model import MaskedCausalLM, read_shape

    shape, family = read_shape(source)
    changes = {}
    for pair in filter(None, fields.split(",")):
        key, value = pair.split("=", 1)
        changes[key] = {"true": True, "false": False}.get(value.lower(), value)
        if isinstance(changes[key], str):
            changes[key] = type(getattr(shape, key))(value)
    shape = shape.replace(**changes)
    folder = work / ("model_" + "_".join(f"{k}{v}" for k, v in sorted(changes.items())))
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = MaskedCausalLM(shape, family, dtype=torch.bfloat16).init_weights(
            generator=torch.Generator(dev).manual_seed(0))
    save_weights(family.internal_to_hf(model.state_dict(), shape.tie_word_embeddings), folder, "bfloat16", "20GB",
                 progress=False)
    del model
    hf_config(shape, family, "bfloat16").save_pretrained(folder)
    copy_model_files([source], folder)
    return str(folder)


def random_corpus(model: str, domains: list, tokens: int, work: Path) -> str:
    """Per-domain training binaries of random token ids, made with the model's tokenizer (its vocabulary)."""
    from megadrp.data import IndexedDatasetWriter, write_meta
    from megadrp.data.tokenizer import load_tokenizer

    tok = load_tokenizer(model)
    prefix = work / "data" / f"train_v{tok.vocab_size}_{tokens}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    dtype = np.uint16 if tok.vocab_size < 2 ** 16 else np.int32
    for d in domains:
        with IndexedDatasetWriter(f"{prefix}_{d}", dtype) as w:
            for _ in range(8):
                w.add_document([int(x) for x in rng.integers(2, tok.vocab_size, tokens // 8)] + [tok.eod_id])
        write_meta(f"{prefix}_{d}", tok.info())
    return str(prefix)


def half_target(shape) -> str:
    g = max(1, shape.num_key_value_heads // 2)
    t = {"hidden_size": shape.hidden_size // 2, "num_key_value_heads": g,
         "num_attention_heads": g * (shape.num_attention_heads // shape.num_key_value_heads),
         "intermediate_size": shape.intermediate_size // 2, "num_hidden_layers": max(1, shape.num_hidden_layers // 2)}
    return "pruning.target={" + ", ".join(f"{k}: {v}" for k, v in t.items()) + "}"


def ds_json_with_stage(config_path: str, stage: int, work: Path) -> str:
    from megadrp.config.deepspeed_check import resolve_ds_config_path

    ds = json.loads(Path(resolve_ds_config_path(config_path)).read_text())
    ds.setdefault("zero_optimization", {})["stage"] = stage
    path = work / f"ds_stage{stage}.json"
    path.write_text(json.dumps(ds, indent=1))
    return str(path)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_row(args, base: list, variant: list, mode: str, work: Path, deadline: float) -> dict:
    from megadrp.config import load_config
    from megadrp.methods import method_for
    from megadrp.trainer import Trainer, dist
    from megadrp.trainer import mfu as mfu_mod
    from megadrp.trainer.build import preflight

    run_dir = Path(tempfile.mkdtemp(prefix=f"{mode}_", dir=work))
    cfg = load_config(args.config, base + variant + [f"mode={mode}", f"run_dir={run_dir}"])
    method = method_for(cfg)
    plan = preflight(cfg, method)
    trainer = Trainer(cfg, plan, method.mode()).setup()
    device = trainer.device
    try:
        for _ in range(args.warmup):
            trainer.run_step()
        row = {"zero_stage": trainer.engine.zero_optimization_stage(), "precision": trainer.precision.describe(),
               "zero_reason": plan.zero_reason}
        if args.count_ops:
            from step_counts import StepCounter

            _sync(device)
            with StepCounter(device) as counter:  # a step whose numbers stay on the device (no log, no update)
                trainer.run_step()
            row["counts"] = counter.summary()
            row["counts"]["settled"] = trainer._must_settle(trainer.step)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        per_chunk = max(1, args.steps // args.chunks)
        means = []
        for _ in range(args.chunks):
            if time.time() > deadline:
                break
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(per_chunk):
                trainer.run_step()
            trainer.settle()
            _sync(device)
            means.append((time.perf_counter() - t0) / per_chunk)
        step_s = statistics.median(means) if means else float("nan")
        tokens = cfg.optim.gradient_accumulation_steps * cfg.optim.micro_batch_size * cfg.data.seq_length * \
            dist.world_size()
        row.update({"step_s": step_s, "step_s_chunks": means, "steps": per_chunk * len(means),
                    "tokens_per_step": tokens, "tokens_per_s": tokens / step_s,
                    "mfu": mfu_mod.mfu(tokens / step_s, trainer.flops_per_token, trainer.peak, dist.world_size()),
                    "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda"
                    else None, "flops_per_token": trainer.flops_per_token, "params": trainer.shape.num_params()})
        return row
    finally:
        trainer.wandb.finish()
        if hasattr(trainer.engine, "destroy"):
            trainer.engine.destroy()
        del trainer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def report(out: dict) -> None:
    rows = [r for r in out["rows"] if "step_s" in r]
    print(f"\ntrainer step, {out['model']} ({out['params'] / 1e6:.1f}M params), seq {out['seq']} x micro "
          f"{out['micro_batch']}, {out['device']}")
    print("| variant | mode | ZeRO | step | tokens/s | MFU | peak GiB | host syncs / device calls per step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        mem = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        c = r.get("counts")
        counts = "-" if not c else \
            f"{c['syncs']['total']} (megadrp {c['syncs']['megadrp']}) / {c['ops']['device_calls']}"
        print(f"| {r['variant']} | {r['mode']} | {r['zero_stage']} | {1000 * r['step_s']:.1f} ms | "
              f"{r['tokens_per_s']:.0f} | {mfu} | {mem} | {counts} |")
    for name, ratio in out["ratios"]["prune_over_cpt"].items():
        print(f"{name}: prune / cpt step time {ratio:.3f}x")
    for name, by_mode in out["ratios"]["vs_first_variant"].items():
        print(f"{name} / {out['variants'][0]}: " + ", ".join(f"{m} {v:.3f}x" for m, v in by_mode.items()))


def ratios(rows: list, variants: list) -> dict:
    t = {(r["variant"], r["mode"]): r["step_s"] for r in rows if "step_s" in r}
    prune_cpt = {v: t[v, "prune"] / t[v, "cpt"] for v in variants if (v, "prune") in t and (v, "cpt") in t}
    first = variants[0]
    vs_first = {v: {m: t[v, m] / t[first, m] for m in ("cpt", "prune") if (v, m) in t and (first, m) in t}
                for v in variants[1:]}
    return {"prune_over_cpt": prune_cpt, "vs_first_variant": {v: r for v, r in vs_first.items() if r}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face folder (its tokenizer is used for the data)")
    p.add_argument("--shape", default="", help="FIELD=VALUE,...: a random-weight model of --model's family and "
                                               "tokenizer with these config fields")
    p.add_argument("--config", default=None, help="run recipe (YAML); default: megadrp's defaults")
    p.add_argument("--modes", default="cpt,prune")
    p.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDE[,OVERRIDE...] (repeatable)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--steps", type=int, default=6, help="timed steps per row")
    p.add_argument("--chunks", type=int, default=2, help="timed chunks per row (median of their step means)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--count-ops", action="store_true", help="count operators and host syncs of one step per row")
    p.add_argument("--deadline", type=float, default=0.0, help="epoch seconds: rows that would end later are skipped")
    p.add_argument("--min-row-s", type=float, default=15.0, help="a row needs this many seconds before the deadline")
    p.add_argument("--work", default="runs/bench/train_work", help="synthetic model, data and run directories")
    p.add_argument("--out", default="runs/bench/train.json")
    p.add_argument("overrides", nargs="*", help="dotted config overrides for every row")
    args = p.parse_args(argv)

    from megadrp.model import read_shape
    from megadrp.trainer import dist
    from megadrp.trainer.mfu import peak_flops

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    deadline = args.deadline or float("inf")
    model = synthetic_model(args.model, args.shape, work) if args.shape else args.model
    shape, _ = read_shape(model)
    steps_total = args.warmup + args.steps + 2 * args.chunks + 2
    data = random_corpus(model, DOMAINS, 2 * steps_total * args.micro_batch * args.accumulation * (args.seq + 1),
                         work)
    base = [f"model.path={model}", f"data.prefix={data}", "data.domains=[" + ", ".join(DOMAINS) + "]",
            f"data.seq_length={args.seq}", f"optim.micro_batch_size={args.micro_batch}",
            f"optim.gradient_accumulation_steps={args.accumulation}", f"optim.max_steps={steps_total + 1000}",
            "data.eval_prefix=", "logging.wandb_mode=disabled", "logging.eval_interval=0",
            "checkpoint.save_interval=1000000", half_target(shape)] + list(args.overrides)
    variants, names = [], []
    for spec in args.variant or ["default="]:
        name, _, rest = spec.partition("=")
        ovr = [o for o in rest.split(",") if o] if rest else []
        if ovr and ovr[0].startswith("zero_stage="):
            from megadrp.config import load_config

            recipe = load_config(args.config, base).deepspeed.config
            ovr[0] = f"deepspeed.config={ds_json_with_stage(recipe, int(ovr[0].split('=')[1]), work)}"
        names.append(name)
        variants.append(ovr)

    dist.ensure_single_process_env()
    dist.init_distributed()
    device = dist.device()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    import deepspeed

    out = {"benchmark": "trainer_step", "device": dev_name, "torch": torch.__version__,
           "deepspeed": deepspeed.__version__, "model": model, "shape": shape.to_dict(), "params": shape.num_params(),
           "seq": args.seq, "micro_batch": args.micro_batch, "accumulation": args.accumulation,
           "peak_flops": peak_flops(device), "variants": names, "variant_overrides": dict(zip(names, variants)),
           "rows": [], "ratios": {}, "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for name, ovr in zip(names, variants):
        for mode in args.modes.split(","):
            if time.time() + args.min_row_s > deadline:
                out["rows"].append({"variant": name, "mode": mode, "skipped": "deadline"})
                continue
            print(f"== {name} {mode}", flush=True)
            try:
                row = run_row(args, base, ovr, mode, work, deadline)
            except Exception as err:  # one failed variant (e.g. compile on this machine) must not lose the rest
                row = {"error": f"{type(err).__name__}: {err}"[:2000]}
                print(f"{name} {mode} failed: {row['error']}", flush=True)
            out["rows"].append({"variant": name, "mode": mode, **row})
            out["ratios"] = ratios(out["rows"], names)
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    report(out)
    print(f"wrote {args.out}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0 if all("step_s" in r or r.get("skipped") for r in out["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
