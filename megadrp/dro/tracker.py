"""Per-domain loss tracking: device-side sums from the training forward pass, one all-reduce per step.

The trainer hands every micro-batch's unreduced token loss to :class:`DomainLossTracker.add`; the sums
stay on the loss's device (no host sync per add) in one ``[2k]`` buffer (k loss sums, then k token
counts), so :meth:`DomainLossTracker.reduce` is a single all-reduce of that buffer over the data-parallel
group. :func:`mean_losses` turns sums into means without ever dividing 0 by 0 (the reference code logged
NaN for domains absent from a step). :func:`broadcast_vector` makes every rank hold rank 0's vector.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist


def _distributed(group) -> bool:
    return group is not None or (dist.is_available() and dist.is_initialized())


def _comm_device(group, fallback: torch.device) -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU ones (and CUDA ones through a copy).
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return fallback


class DomainLossTracker:
    """Accumulates per-domain token-loss sums and token counts; ``reduce`` makes them global and resets."""

    def __init__(self, num_domains: int, group=None, device=None, dtype: torch.dtype = torch.float64):
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.num_domains = num_domains
        self.group = group
        self.dtype = dtype
        # Allocated lazily on the first loss's device when no device is given.
        self._buf: Optional[torch.Tensor] = None
        if device is not None:
            self._buf = torch.zeros(2 * num_domains, dtype=dtype, device=device)

    def _buffer(self, device) -> torch.Tensor:
        if self._buf is None:
            self._buf = torch.zeros(2 * self.num_domains, dtype=self.dtype, device=device)
        return self._buf

    @torch.no_grad()
    def add(self, token_loss: torch.Tensor, domain_ids: torch.Tensor, token_mask: Optional[torch.Tensor] = None):
        """token_loss [B, T] (unreduced CE), domain_ids [B] (long), token_mask [B, T] (1 = counted) or None."""
        if token_loss.dim() != 2 or domain_ids.shape != token_loss.shape[:1]:
            raise ValueError(f"token_loss must be [B, T] and domain_ids [B]; got {tuple(token_loss.shape)} "
                             f"and {tuple(domain_ids.shape)}")
        buf = self._buffer(token_loss.device)
        loss = token_loss.detach().to(device=buf.device, dtype=buf.dtype)
        ids = domain_ids.to(device=buf.device, dtype=torch.long)
        k = self.num_domains
        if token_mask is None:
            seq_sum = loss.sum(dim=1)
            seq_count = torch.full_like(seq_sum, loss.shape[1])
        else:
            mask = token_mask.to(device=buf.device).bool()
            # where(), not multiply: a masked position may hold inf/NaN (e.g. a padded label).
            seq_sum = torch.where(mask, loss, torch.zeros((), dtype=buf.dtype, device=buf.device)).sum(dim=1)
            seq_count = mask.to(buf.dtype).sum(dim=1)
        buf[:k].index_add_(0, ids, seq_sum)
        buf[k:].index_add_(0, ids, seq_count)

    @torch.no_grad()
    def reduce(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Global (loss_sum [k], count [k]) since the last reduce, by ONE all-reduce; then resets.

        Collective: every rank of the group must call it, also ranks that added nothing.
        """
        buf = self._buffer(torch.device("cpu"))
        if _distributed(self.group):
            dev = _comm_device(self.group, buf.device)
            moved = buf.to(dev, copy=True)  # a copy: buf is zeroed below while the result lives on
            dist.all_reduce(moved, op=dist.ReduceOp.SUM, group=self.group)
            out = moved.to(buf.device)
        else:
            out = buf.clone()
        buf.zero_()
        k = self.num_domains
        return out[:k], out[k:]


def mean_losses(loss_sum, count):
    """Per-domain mean loss and a presence mask; absent domains get 0.0 and present = False (never NaN).

    Accepts torch tensors or numpy arrays and returns the same kind. Rules must read ``present``: an
    absent domain is "no observation", not a loss of 0.
    """
    if isinstance(loss_sum, torch.Tensor):
        count = torch.as_tensor(count, dtype=loss_sum.dtype, device=loss_sum.device)
        present = count > 0
        mean = torch.where(present, loss_sum / count.clamp(min=1), torch.zeros_like(loss_sum))
        return mean, present
    loss_sum = np.asarray(loss_sum, dtype=np.float64)
    count = np.asarray(count, dtype=np.float64)
    present = count > 0
    mean = np.where(present, loss_sum / np.maximum(count, 1.0), 0.0)
    return mean, present


def broadcast_vector(values, group=None, src_group_rank: int = 0):
    """Every rank of ``group`` gets the group rank ``src_group_rank``'s 1-D vector (numpy in, numpy out).

    A no-op without torch.distributed. Used so that all ranks end every update with bit-identical weights
    and reweighting state, whatever their floating-point libraries do.
    """
    arr = np.asarray(values, dtype=np.float64)
    if not _distributed(group):
        return arr.copy()
    dev = _comm_device(group, torch.device("cpu"))
    t = torch.from_numpy(arr.copy()).to(dev)
    src = dist.get_global_rank(group, src_group_rank) if group is not None else src_group_rank
    dist.broadcast(t, src=src, group=group)
    return t.cpu().numpy()


def broadcast_weights(weights, group=None):
    """Rank 0's domain weights on every rank of ``group`` (numpy array)."""
    return broadcast_vector(weights, group)
