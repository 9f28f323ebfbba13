"""Process-group set-up for every way megadrp is launched, and the data-parallel group the trainer's own
collectives run over (:class:`DataParallelGroup`).

Under `deepspeed`, `torchrun` or `srun` the launcher sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT;
run in-process (`megadrp prune --nproc 1`) there is no launcher and DeepSpeed would otherwise go looking for
MPI (mpi4py), so we set a single-process environment ourselves.
"""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_single_process_env() -> None:
    """Fill a one-process rendezvous when no launcher did (SLURM's srun sets SLURM_PROCID instead of RANK)."""
    if "RANK" in os.environ:
        return
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
        os.environ.setdefault("MASTER_PORT", "29500")
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """A host batch on ``dev`` without waiting: a plain ``.to(cuda)`` of pageable memory synchronises the stream
    (the host stops queueing work); from pinned memory the copy is queued like any kernel. A no-op on CPU."""
    if t.device == dev:
        return t
    if dev.type != "cuda":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)


def init_distributed() -> None:
    """deepspeed.init_distributed over NCCL on GPUs, gloo on CPU.

    On CPU DeepSpeed would JIT-compile its shared-memory all-reduce op at every start (45-50 s); gloo is
    fast enough for CPU runs, so we mark the op incompatible unless MEGADRP_DS_SHM_COMM=1 asks for it.
    """
    import deepspeed

    dev = device()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    elif os.environ.get("MEGADRP_DS_SHM_COMM", "0") != "1":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if dev.type == "cuda" else "gloo", verbose=False)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_object(obj) -> list:
    """Over the world group (checkpoint RNG states, start-up errors)."""
    return DataParallelGroup().all_gather_object(obj)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the world group; returns a tensor on t's device."""
    return DataParallelGroup().all_reduce_sum(t)


class DataParallelGroup:
    """The ranks that hold replicas of the replicated side state (masks, multipliers, domain weights) and
    split each batch: the group every megadrp collective runs over.

    Today megadrp is data-parallel only (ZeRO shards the weights *within* this group), so the trainer builds
    it over the world group (``process_group=None``, torch's default). One object passed to the tracker, the
    reweighter, the side optimizer and the replica check (rather than each one assuming the world) is what
    lets a tensor- or pipeline-parallel split hand them a sub-group later, as megatron-core's parallel_state
    and torchtitan's DeviceMesh do.
    """

    def __init__(self, process_group=None):
        self.process_group = process_group

    @property
    def rank(self) -> int:
        return dist.get_rank(self.process_group) if dist.is_initialized() else 0

    @property
    def size(self) -> int:
        return dist.get_world_size(self.process_group) if dist.is_initialized() else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier(group=self.process_group)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over the group; returns a tensor on t's device (NCCL moves only CUDA tensors)."""
        if self.size == 1:
            return t
        x = t.to(device()) if dist.get_backend(self.process_group) == "nccl" else t
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.process_group)
        return x.to(t.device)

    def all_reduce_grads_mean(self, params) -> None:
        """Average the gradients of side parameters (masks, multipliers) over the group.

        They live outside the engine, so DeepSpeed does not reduce them; one flat all-reduce keeps every
        rank's copy identical after its own optimizer step.
        """
        params = [p for p in params if p.grad is not None]
        if not params or self.size == 1:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.process_group)
        flat /= self.size
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def all_gather_object(self, obj) -> list:
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj, group=self.process_group)
        return out
