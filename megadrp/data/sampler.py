"""The domain-mixture sampler: micro-batches drawn from k domains under weights that may change every step.

Every rank draws the same *global* micro-batch plan from a generator seeded by (seed, step): which domain
each of the ``micro_batch_size * world_size`` slots comes from. Rank r takes slots ``[r*B, (r+1)*B)``. A slot's
sequence is the domain's next unread sequence in slot order, so all ranks keep identical per-domain cursors
(counts of sequences consumed), never read the same sequence, and the mixture is the same everywhere. The
state is those cursors, the step and the weights: a few numbers, and restoring them reproduces the next
batches exactly.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from megadrp.data.domains import natural_weights
from megadrp.data.indexed import IndexedDataset
from megadrp.data.packing import PackedDomain

log = logging.getLogger(__name__)
STATE_VERSION = 1


class DomainMixtureSampler:
    """Yields ``{"tokens": LongTensor[B, T+1], "domain_ids": LongTensor[B]}`` per micro-batch.

    ``datasets``: ``{name: IndexedDataset}`` (order = domain ids) or a list in domain order. ``weights`` start
    at the natural token ratio unless given; :meth:`set_weights` changes them for the following batches.
    """

    def __init__(self, datasets: Mapping[str, IndexedDataset] | Sequence[IndexedDataset], seq_length: int,
                 micro_batch_size: int, seed: int = 1234, rank: int = 0, world_size: int = 1, weights=None):
        if isinstance(datasets, Mapping):
            self.domains = list(datasets)
            ds_list = list(datasets.values())
        else:
            ds_list = list(datasets)
            self.domains = [f"domain{i}" for i in range(len(ds_list))]
        if not ds_list:
            raise ValueError("DomainMixtureSampler needs at least one domain")
        if not (0 <= rank < world_size):
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if seq_length < 1 or micro_batch_size < 1:
            raise ValueError(f"seq_length ({seq_length}) and micro_batch_size ({micro_batch_size}) must be >= 1")
        self.seq_length, self.micro_batch_size = int(seq_length), int(micro_batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self._packed = [PackedDomain(ds, seq_length, seed, i, name)
                        for i, (name, ds) in enumerate(zip(self.domains, ds_list))]
        self.step = 0
        self.cursors = np.zeros(len(ds_list), dtype=np.int64)
        self.weights = natural_weights(dict(zip(self.domains, ds_list)))
        if weights is not None:
            self.set_weights(weights)

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.world_size

    def set_weights(self, weights) -> None:
        """New mixture (list, array, tensor or ``{domain: w}``), renormalised to sum to 1."""
        if isinstance(weights, Mapping):
            unknown = set(weights) - set(self.domains)
            if unknown:
                raise ValueError(f"weights name unknown domains {sorted(unknown)}; domains are {self.domains}")
            weights = [float(weights.get(d, 0.0)) for d in self.domains]
        if isinstance(weights, torch.Tensor):
            weights = weights.detach().cpu().double().numpy()
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (self.num_domains,):
            raise ValueError(f"expected {self.num_domains} weights (domains {self.domains}), got {w.shape[0]}")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"domain weights must be finite, >= 0 and not all 0, got {w.tolist()}")
        self.weights = w / w.sum()

    def plan(self, step: int) -> np.ndarray:
        """Domain id of every global slot at ``step`` (identical on all ranks)."""
        rng = np.random.default_rng([self.seed, int(step), 0x5A3B1E])
        return rng.choice(self.num_domains, size=self.global_batch_size, p=self.weights)

    def next_batch(self) -> dict:
        plan = self.plan(self.step)
        # Sequence of each slot: the domain's cursor plus the slot's rank among earlier slots of its domain.
        ordinal = np.zeros_like(plan)
        for d in range(self.num_domains):
            hits = plan == d
            ordinal[hits] = np.arange(int(hits.sum()))
        seq_index = self.cursors[plan] + ordinal
        lo = self.rank * self.micro_batch_size
        mine = slice(lo, lo + self.micro_batch_size)
        tokens = np.stack([self._packed[d].get(k) for d, k in zip(plan[mine], seq_index[mine])])
        new_cursors = self.cursors + np.bincount(plan, minlength=self.num_domains)
        for d, packed in enumerate(self._packed):
            old_epoch, new_epoch = packed.epoch_of(self.cursors[d]), packed.epoch_of(max(new_cursors[d] - 1, 0))
            if new_epoch > old_epoch:
                log.warning("domain %r exhausted after %d sequences per epoch: starting epoch %d (reshuffled)",
                            packed.name, packed.sequences_per_epoch, new_epoch)
        self.cursors = new_cursors
        self.step += 1
        return {"tokens": torch.from_numpy(tokens), "domain_ids": torch.from_numpy(plan[mine].astype(np.int64))}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return self.next_batch()

    def epochs(self) -> dict:
        """Current epoch of each domain (0 until a domain wraps)."""
        return {p.name: p.epoch_of(c) for p, c in zip(self._packed, self.cursors)}

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "step": int(self.step), "seed": self.seed, "seq_length": self.seq_length,
                "domains": list(self.domains), "cursors": [int(c) for c in self.cursors],
                "weights": [float(w) for w in self.weights]}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"sampler state version {state.get('version')} is not {STATE_VERSION}")
        for key, mine in (("domains", self.domains), ("seq_length", self.seq_length), ("seed", self.seed)):
            if state[key] != mine:
                raise ValueError(f"sampler state was saved with {key}={state[key]!r} but this run has {mine!r}; "
                                 f"resume with the same data.domains / data.seq_length / optim.seed")
        self.step = int(state["step"])
        self.cursors = np.asarray(state["cursors"], dtype=np.int64)
        self.weights = np.asarray(state["weights"], dtype=np.float64)


#: Seed offset of DReSS's and the one-shot cut's calibration draws (the training sampler uses optim.seed itself).
CALIBRATION_SEED_OFFSET = 7919


def calibration_batches(datasets, seq_length: int, micro_batch_size: int, count: int, seed: int, weights=None,
                        rank: int = 0, world_size: int = 1) -> tuple[list[torch.Tensor], dict[str, int]]:
    """``count`` batches of tokens [B, T+1] for scoring a model before training (massive-activation dims, DReSS's
    and the one-shot cut's unit importance), from a private sampler: the training sampler's order is untouched.
    ``weights`` None: the natural ratio. Rank 0 of 1 (the default) gives every rank the same tokens, so every rank
    scores alike. Also returns the sequences each domain gave."""
    sampler = DomainMixtureSampler(datasets, seq_length, micro_batch_size, seed=seed, rank=rank,
                                   world_size=world_size, weights=weights)
    batches, rows = [], dict.fromkeys(sampler.domains, 0)
    for _ in range(count):
        batch = sampler.next_batch()
        batches.append(batch["tokens"])
        for d in batch["domain_ids"].tolist():
            rows[sampler.domains[d]] += 1
    return batches, rows
