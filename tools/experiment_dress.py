"""DReSS vs direct pruning on the real SmolLM2-135M and the six-domain corpus, same target shape and token budget.

    python tools/experiment_dress.py --model .cache/models/smollm2-135m --corpus .cache/corpus \
        --reg-steps 20 --ft-steps 20 --out runs/experiment_dress.json

Both arms select the same units (same criterion, same calibration batches), then:
- direct: cut the source model, finetune for reg_steps + ft_steps steps (the whole budget on the small model);
- dress:  regularise the selected slices for reg_steps steps (LM loss + geometric penalty), cut, finetune
          for ft_steps steps.
Per-domain bits per byte (megadrp.eval's pinned protocol on CORPUS/heldout) of the source, of each arm right
after the cut ("cut"), and after finetuning ("ft"); DReSS's regularised dense model too ("reg"). Prints a
markdown table and writes JSON. One process, plain PyTorch (experiments.dress_loop): the same DressRegularizer
the DeepSpeed trainer's dress mode uses. ``--device cuda --dtype bfloat16`` for a GPU run.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.dress_loop import train_steps  # noqa: E402
from megadrp.config.schema import TargetShape  # noqa: E402
from megadrp.dress.cut import pruned_copy  # noqa: E402
from megadrp.dress.regularizer import DressRegularizer  # noqa: E402
from megadrp.dress.scoring import score_units  # noqa: E402
from megadrp.dress.select import select_units  # noqa: E402
from megadrp.eval.domain_eval import evaluate_domains  # noqa: E402
from megadrp.eval.windows import load_heldout, read_documents  # noqa: E402
from megadrp.model import load_pretrained  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=".cache/models/smollm2-135m")
    p.add_argument("--corpus", default=".cache/corpus")
    p.add_argument("--out", default="runs/experiment_dress.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--num-attention-heads", type=int, default=6)
    p.add_argument("--num-key-value-heads", type=int, default=2)
    p.add_argument("--intermediate-size", type=int, default=1024)
    p.add_argument("--num-hidden-layers", type=int, default=26)
    p.add_argument("--criterion", default="activation", choices=("activation", "taylor", "magnitude"))
    p.add_argument("--penalty", default="l2", choices=("l2", "l1", "group_l2"))
    p.add_argument("--apply", default="proximal", choices=("loss", "proximal"))
    p.add_argument("--penalty-init", type=float, default=1e-3)
    p.add_argument("--penalty-final", type=float, default=1.0)
    p.add_argument("--reg-steps", type=int, default=20)
    p.add_argument("--ft-steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--calibration-batches", type=int, default=4)
    p.add_argument("--train-bytes", type=int, default=2_000_000, help="UTF-8 bytes of training text read per domain")
    p.add_argument("--eval-seq-length", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def token_streams(tokenizer, corpus: Path, domains, max_bytes: int) -> dict[str, torch.Tensor]:
    """Per domain, the training documents tokenised and joined with EOS into one long 1-D stream."""
    eos = tokenizer.eos_token_id
    out = {}
    for d in domains:
        docs = read_documents(corpus / "train" / f"{d}.jsonl", max_bytes=max_bytes)
        ids = []
        for doc in docs:
            ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos])
        out[d] = torch.tensor(ids, dtype=torch.long)
    return out


def batches(streams: dict, batch_size: int, seq_length: int, seed: int):
    """Endless [B, T+1] batches, domains drawn uniformly per row, windows at random offsets (seeded)."""
    rng = random.Random(seed)
    names = sorted(streams)
    while True:
        rows = []
        for _ in range(batch_size):
            s = streams[rng.choice(names)]
            start = rng.randrange(0, len(s) - seq_length - 1)
            rows.append(s[start:start + seq_length + 1])
        yield torch.stack(rows)


def on(device, gen):
    for b in gen:
        yield b.to(device)


def bpb(model, tokenizer, heldout, args) -> dict:
    r = evaluate_domains(model, tokenizer, heldout, seq_length=args.eval_seq_length, max_windows=args.eval_windows,
                         batch_size=2, device=args.device)
    out = {d: v["bits_per_byte"] for d, v in r["domains"].items()}
    out["average"] = r["average"]["bits_per_byte"]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    t_start = time.time()
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    corpus = Path(args.corpus)
    heldout = load_heldout(corpus, max_bytes=200_000)
    domains = list(heldout)
    streams = token_streams(tokenizer, corpus, domains, args.train_bytes)
    source = load_pretrained(args.model, dtype=dtype).to(args.device)
    target = TargetShape(hidden_size=args.hidden_size, num_attention_heads=args.num_attention_heads,
                         num_key_value_heads=args.num_key_value_heads, intermediate_size=args.intermediate_size,
                         num_hidden_layers=args.num_hidden_layers)
    log = lambda rec: print("  ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()  # noqa: E731
                                   if k in ("step", "lm_loss", "dress_coef", "dress_norm_all")}, flush=True)

    results = {"config": vars(args), "domains": domains, "bpb": {}, "logs": {}}
    print("source model ...", flush=True)
    results["bpb"]["source"] = bpb(source, tokenizer, heldout, args)

    calib_gen = batches(streams, args.batch_size, args.seq_length, args.seed + 1)
    calib = [next(calib_gen).to(args.device) for _ in range(args.calibration_batches)]
    t0 = time.time()
    masks = select_units(score_units(source, calib, args.criterion), source.shape, target)
    results["selection_s"] = time.time() - t0
    results["removed"] = {k: int((v == 0).sum()) for k, v in masks.items()}

    print("direct: cut + finetune ...", flush=True)
    direct = pruned_copy(source, masks).to(args.device, dtype)
    results["achieved_shape"] = direct.shape.to_dict()
    results["bpb"]["direct cut"] = bpb(direct, tokenizer, heldout, args)
    direct_batches = on(args.device, batches(streams, args.batch_size, args.seq_length, 100))
    results["logs"]["direct ft"] = train_steps(direct, direct_batches, args.reg_steps + args.ft_steps, args.lr,
                                               log=log, log_interval=5)
    results["bpb"]["direct ft"] = bpb(direct, tokenizer, heldout, args)
    del direct

    print("dress: regularise + cut + finetune ...", flush=True)
    dense = copy.deepcopy(source)
    reg = DressRegularizer(dense, masks, args.penalty, args.penalty_init, args.penalty_final, args.reg_steps,
                           apply=args.apply).attach()
    reg_batches = on(args.device, batches(streams, args.batch_size, args.seq_length, 100))
    results["logs"]["dress reg"] = train_steps(dense, reg_batches, args.reg_steps, args.lr, reg,
                                               log=log, log_interval=5)
    reg.detach()
    results["bpb"]["dress reg (dense)"] = bpb(dense, tokenizer, heldout, args)
    small = pruned_copy(dense, masks).to(args.device, dtype)
    del dense
    results["bpb"]["dress cut"] = bpb(small, tokenizer, heldout, args)
    # the finetuning data continue where regularisation stopped: both arms see the same token stream
    ft_gen = batches(streams, args.batch_size, args.seq_length, 100)
    for _ in range(args.reg_steps):
        next(ft_gen)
    results["logs"]["dress ft"] = train_steps(small, on(args.device, ft_gen), args.ft_steps, args.lr, log=log,
                                              log_interval=5)
    results["bpb"]["dress ft"] = bpb(small, tokenizer, heldout, args)
    results["wall_s"] = time.time() - t_start
    results["machine"] = f"{os.uname().machine}, {os.cpu_count()} cores, torch {torch.__version__}, {args.device}"

    cols = domains + ["average"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in results["bpb"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    results["table"] = "\n".join(lines)
    print(results["table"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
