"""Two gloo ranks with different local losses: one all-reduce gives global sums, and both end with the same weights."""
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megadrp.config.schema import DroConfig
from megadrp.dro import DomainLossTracker, broadcast_weights, make_reweighter

DOMAINS = ["web", "code", "books"]
STEPS = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_batch(rank: int, step: int):
    g = torch.Generator().manual_seed(1000 * rank + step)
    loss = torch.rand(4, 8, generator=g) * (1 + rank) + 2.0 + 5.0 / step  # ranks see different losses
    ids = torch.randint(0, 3 if rank == 0 else 2, (4,), generator=g)  # books only on rank 0
    return loss, ids


def _worker(rank: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        group = dist.new_group([0, 1])
        tracker = DomainLossTracker(3, group=group)
        rw = make_reweighter(DroConfig(update_interval=5), DOMAINS, [5, 3, 2], STEPS, target_sparsity=0.5, group=group)
        sums, weights = [], []
        for step in range(1, STEPS + 1):
            tracker.add(*_local_batch(rank, step), None)
            loss_sum, count = tracker.reduce()
            sums.append(torch.cat([loss_sum, count]).numpy())
            rw.observe(step, loss_sum, count, sparsity=0.5 * min(1.0, step / 12))
            w = rw.maybe_update(step)
            if w is not None:
                weights.append(w)
        mine = np.full(3, float(rank))
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), sums=np.array(sums), weights=np.array(weights),
                 ref=rw.ref, broadcast=broadcast_weights(mine, group))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    # the reduce is the global sum of both ranks' local batches
    want = []
    for step in range(1, STEPS + 1):
        tr = DomainLossTracker(3)
        for rank in (0, 1):
            tr.add(*_local_batch(rank, step), None)
        want.append(torch.cat(tr.reduce()).numpy())
    np.testing.assert_allclose(r0["sums"], np.array(want), rtol=1e-12)
    np.testing.assert_array_equal(r0["sums"], r1["sums"])
    np.testing.assert_array_equal(r0["weights"], r1["weights"])
    np.testing.assert_array_equal(r0["ref"], r1["ref"])
    assert len(r0["weights"]) == STEPS // 5 and np.any(r0["weights"][-1] != r0["weights"][0])
    np.testing.assert_array_equal(r1["broadcast"], np.zeros(3))  # rank 0's vector reached rank 1
    # and they are the weights one process computes from the same global numbers
    single = make_reweighter(DroConfig(update_interval=5, fit_in_background=False), DOMAINS, [5, 3, 2], STEPS,
                             target_sparsity=0.5)
    seq = []
    for step, vec in enumerate(want, start=1):
        single.observe(step, vec[:3], vec[3:], sparsity=0.5 * min(1.0, step / 12))
        w = single.maybe_update(step)
        if w is not None:
            seq.append(w)
    np.testing.assert_allclose(np.array(seq), r0["weights"], rtol=1e-12, atol=1e-15)
