"""Two gloo ranks (two processes) draw bit-identical masks for the same (seed, step, micro_step)."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megadrp.config import TargetShape
from megadrp.masks import MaskSet
from megadrp.model import get_family


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(1000 + rank)  # different global RNG per rank: sampling must not depend on it
    ms = MaskSet(get_family("llama").debug_shape,
                 TargetShape(hidden_size=48, num_key_value_heads=1, intermediate_size=96, num_hidden_layers=3), seed=7)
    with torch.no_grad():  # unsaturated log_alpha, so that samples vary between draws
        for p in ms.log_alpha.values():
            p.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    draws = {key: ms.sample(7, *key) for key in [(5, 0), (5, 1), (6, 0)]}
    flat = torch.cat([torch.cat([z.flatten() for z in d.values()]) for d in draws.values()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save({"gathered": gathered, "draws": draws}, os.path.join(out_dir, "masks.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_draw_identical_masks(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    res = torch.load(tmp_path / "masks.pt", weights_only=False)
    assert torch.equal(res["gathered"][0], res["gathered"][1])
    d = res["draws"]
    for f in d[(5, 0)]:
        assert not torch.equal(d[(5, 0)][f], d[(6, 0)][f]), f  # a new step draws new masks
        assert not torch.equal(d[(5, 0)][f], d[(5, 1)][f]), f  # and so does a new micro-batch
