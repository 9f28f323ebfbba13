"""Periodic held-out per-domain evaluation inside a training run, under `megadrp eval`'s protocol.

The windows are those of docs/EVALUATION.md laid over the tokenised held-out split (``EVAL_PREFIX_DOMAIN``):
non-overlapping windows of ``seq_length + 1`` tokens in file order, the first token of each context only,
so a run's eval loss and bits per byte are what ``megadrp eval --seq-length seq_length+1`` reports for the
same model on the same token stream. Scoring is megadrp.eval's own (``score_windows``); the bytes of a
window are eval's character-based count, computed from the ids and the run's (byte-level BPE) tokenizer
(``ids_bytes``: EOS covers none); bits per byte are skipped when the tokenizer cannot be loaded.

Every rank runs the same number of forward passes (ZeRO-3 gathers parameters collectively), each on its own
share of the first ``eval_batches x micro_batch x world`` windows; the sums are all-reduced over the group.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch

from megadrp.eval.domain_eval import score_windows
from megadrp.eval.windows import ids_bytes, stream_windows, token_byte_strings
from megadrp.trainer.dist import DataParallelGroup


def _byte_table(tokenizer_path: Optional[str]):
    """(bytes of every token id, EOS id) of the run's tokenizer, or None: bits per byte are then skipped
    (no tokenizer, or not a byte-level BPE one); the loss needs neither."""
    if not tokenizer_path:
        return None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        return token_byte_strings(tokenizer), tokenizer.eos_token_id
    except Exception:
        return None


class HeldoutEval:
    def __init__(self, datasets: dict, seq_length: int, micro_batch_size: int, num_batches: int,
                 tokenizer_path: Optional[str] = None, group: Optional[DataParallelGroup] = None):
        self.micro = micro_batch_size
        self.group = group or DataParallelGroup()
        world, rank = self.group.size, self.group.rank
        wanted = num_batches * micro_batch_size * world
        width = seq_length + 1
        table = _byte_table(tokenizer_path)
        self.domains: Dict[str, dict] = {}
        for name, ds in datasets.items():
            full = min(ds.num_tokens // width, wanted)  # whole windows only: every batch has one shape
            if full == 0:
                continue
            # One token past the last window: the last token's bytes reach to where the next one starts.
            stream = np.asarray(ds.tokens[:full * width + 1], dtype=np.int64)
            nbytes = None if table is None else torch.from_numpy(ids_bytes(table[0], stream, table[1]))
            windows = stream_windows(torch.from_numpy(stream[:full * width]), nbytes, width)
            mine = windows[rank::world]
            # The rank with the most windows sets the number of forward passes every rank must run.
            self.domains[name] = {"windows": mine, "batches": math.ceil(math.ceil(full / world) / self.micro),
                                  "pad": windows[0].ids[None], "bytes": table is not None}

    @torch.no_grad()
    def run(self, engine, masks, device) -> dict:
        engine.eval()
        loss_out, bpb_out = {}, {}
        forward = lambda ids: engine(ids, masks)  # noqa: E731
        for name, d in self.domains.items():
            nats, tokens, nbytes = score_windows(forward, d["windows"], self.micro, device)
            for _ in range(d["batches"] - math.ceil(len(d["windows"]) / self.micro)):
                forward(d["pad"].to(device))  # not counted: only so that every rank runs as many forwards
            sums = self.group.all_reduce_sum(torch.tensor([nats, tokens, nbytes], dtype=torch.float64))
            loss_out[name] = float(sums[0] / sums[1])
            if d["bytes"] and sums[2] > 0:
                bpb_out[name] = float(sums[0]) / (math.log(2) * float(sums[2]))
        engine.train()
        return {"eval_loss": loss_out, "eval_bpb": bpb_out}
