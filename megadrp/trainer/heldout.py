"""Periodic held-out per-domain evaluation inside a training run (loss and bits per byte per domain).

Every rank runs the same number of forward passes (ZeRO-3 gathers parameters collectively), each on its own
share of the windows; windows padding a rank's share carry weight 0. Windows are the first
``eval_batches x micro_batch x world`` unshuffled ``seq_length + 1`` windows of ``EVAL_PREFIX_DOMAIN``, so
every evaluation of a run sees the same text. Bits per byte need the windows' UTF-8 byte counts, computed
once by decoding with the run's tokenizer (skipped when it cannot be loaded).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch

from megadrp.trainer import dist


def _byte_counter(tokenizer_path: Optional[str]):
    if not tokenizer_path:
        return None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_path)
    except Exception:
        return None
    # Bytes of the predicted tokens (positions 1..T): decoding a window's targets.
    return lambda ids: len(tok.decode(ids.tolist(), skip_special_tokens=False).encode("utf-8"))


class HeldoutEval:
    def __init__(self, datasets: dict, seq_length: int, micro_batch_size: int, num_batches: int,
                 tokenizer_path: Optional[str] = None):
        from megadrp.data import sequential_windows

        self.micro = micro_batch_size
        world, rank = dist.world_size(), dist.rank()
        per_round = micro_batch_size * world
        count_bytes = _byte_counter(tokenizer_path)
        self.domains: Dict[str, dict] = {}
        for name, ds in datasets.items():
            windows = list(sequential_windows(ds, seq_length, max_sequences=num_batches * per_round))
            if not windows:
                continue
            weights = [1.0] * len(windows)
            while len(windows) % per_round:
                windows.append(windows[0])
                weights.append(0.0)
            total_bytes = None
            if count_bytes is not None:
                total_bytes = sum(count_bytes(w[1:]) for w, wt in zip(windows, weights) if wt > 0)
            mine = slice(rank, len(windows), world)
            self.domains[name] = {"tokens": torch.from_numpy(np.stack(windows[mine])),
                                  "weights": torch.tensor(weights[mine], dtype=torch.float64),
                                  "bytes": total_bytes}

    @torch.no_grad()
    def run(self, engine, masks, device) -> dict:
        engine.eval()
        loss_out, bpb_out = {}, {}
        for name, d in self.domains.items():
            sums = torch.zeros(2, dtype=torch.float64)
            for i in range(0, d["tokens"].shape[0], self.micro):
                tokens = d["tokens"][i:i + self.micro].to(device)
                w = d["weights"][i:i + self.micro]
                # fp32 per-token losses from the fused LM head + CE: no [B, T, V] logits (no_grad: no gradients)
                tok_loss = engine(tokens[:, :-1], masks, targets=tokens[:, 1:])
                sums[0] += (tok_loss.sum(1).double().cpu() * w).sum()
                sums[1] += (w * tok_loss.shape[1]).sum()
            sums = dist.all_reduce_sum(sums)
            loss = float(sums[0] / sums[1])
            loss_out[name] = loss
            if d["bytes"]:
                bpb_out[name] = float(sums[0]) / (math.log(2) * d["bytes"])
        engine.train()
        return {"eval_loss": loss_out, "eval_bpb": bpb_out}
