"""Per-token cross-entropy: the one home of the language-model loss, from logits or fused with the LM head.

``token_cross_entropy(logits, targets)`` is the plain form: fp32 per-token losses [B, T] from logits [B, T, V].
Training (the step loop, DReSS's Taylor scores, the plain-torch DReSS loop), the trainer's periodic held-out
evaluation and ``megadrp eval`` take their nats from it or from the fused form below, which computes the same
numbers (fp32 log-sum-exp) in chunks, so a loss logged by one is the other's on the same tokens.
For large vocabularies the fp32 logits are the largest tensor of a step (8k tokens x 128k vocab: 4 GiB, and as
much again for their gradient). ``linear_cross_entropy(hidden, weight, targets)`` never materialises them: it
walks the tokens in chunks, computes each chunk's logits (in the matmul dtype), its log-sum-exp in fp32, the
per-token losses, and right away the chunk's gradients with respect to the hidden states and the LM-head
weight, then drops the chunk. Peak extra memory is one chunk of logits (about the weight's size, see
chunk_tokens) plus a weight-sized fp32 gradient accumulator, instead of several [N, V] tensors
(docs/BENCHMARKS.md, "Fused linear + cross-entropy").

The gradients are computed in the forward for a *uniform* weighting of the per-token losses (the mean, or the
sum, times any scalar: what the training loss uses); backward scales them by that weight. A non-uniform
weighting (per-token weights) raises instead of returning a wrong gradient: use the logits path for it. The
same design is Liger-Kernel's fused linear cross-entropy (Hsu et al., 2024); this one is plain PyTorch, so it
runs on CPU and under any autocast, and returns the per-token losses the domain tracker needs.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

# Logits elements per chunk, at least: 2^25 fp32 values = 128 MiB (256 tokens of a 128k vocabulary).
CHUNK_ELEMENTS = 2 ** 25


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """fp32 per-token losses with the shape of ``targets`` from logits [..., V] (any dtype)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="none").view(targets.shape)


def chunk_tokens(vocab_size: int, hidden_size: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """Tokens per chunk: a chunk's logits as large as the [V, d] fp32 weight-gradient accumulator (which exists
    anyway) or CHUNK_ELEMENTS, whichever is larger. Each chunk adds into that accumulator once, so larger
    chunks mean fewer passes over it (N / d of them) at a peak of about twice its size."""
    return max(1, chunk_elements // vocab_size, hidden_size)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        device = hidden.device.type
        # The matmul dtype: autocast's where it is on (as F.linear would run), else the inputs'. The weight is
        # cast once, not per chunk (a 128k x 4096 head is 0.5G elements).
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        w = weight.to(dtype)
        n = hidden.shape[0]
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        with torch.autocast(device, enabled=False):
            for start in range(0, n, chunk):
                h, t = hidden[start:start + chunk].to(dtype), targets[start:start + chunk]
                logits = (h @ w.t()).float()  # [c, V]: the matmul in `dtype`, everything after it in fp32
                lse = torch.logsumexp(logits, dim=-1)
                losses[start:start + chunk] = lse - logits.gather(1, t[:, None]).squeeze(1)
                if not (need_h or need_w):
                    continue
                # d loss_i / d logits_i = softmax_i - onehot(t_i), built in place in the logits buffer.
                grad = logits.sub_(lse[:, None]).exp_()
                grad.scatter_add_(1, t[:, None], torch.full_like(lse[:, None], -1.0))
                grad = grad.to(dtype)
                if need_h:
                    grad_h[start:start + chunk] = grad @ w
                if need_w and dtype == torch.float32:
                    grad_w.addmm_(grad.t(), h)  # accumulate in place: no weight-sized temporary per chunk
                elif need_w:
                    grad_w.add_(grad.t() @ h)
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_losses[:1]
        if not torch.equal(grad_losses, scale.expand_as(grad_losses)):
            raise RuntimeError("linear_cross_entropy computes its gradients for a uniform weighting of the "
                               "per-token losses (their mean or sum); for per-token weights compute the logits "
                               "(model forward without targets) and use token_cross_entropy")
        scale = scale.to(torch.float32)
        dh = None if grad_h is None else grad_h * scale.to(grad_h.dtype)
        dw = None if grad_w is None else grad_w * scale.to(grad_w.dtype)
        return dh, dw, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: Optional[int] = None) -> torch.Tensor:
    """fp32 per-token losses of ``F.linear(hidden, weight)`` against ``targets``, without the [N, V] logits.

    hidden [..., d], weight [V, d] (the LM head), targets [...] (token ids) -> losses with the targets' shape.
    Differentiable for a uniform weighting of the losses (``losses.mean()`` or ``.sum()``); see the module
    docstring. ``chunk`` is the tokens per chunk (default: :func:`chunk_tokens`).
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree on the tokens")
    flat = hidden.reshape(-1, hidden.shape[-1])
    losses = _LinearCrossEntropy.apply(flat, weight, targets.reshape(-1), chunk or chunk_tokens(*weight.shape))
    return losses.view(targets.shape)
