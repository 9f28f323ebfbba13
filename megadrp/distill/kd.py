"""The knowledge-distillation loss: forward KL(teacher || student) per token on temperature-scaled logits.

    KD_t = T^2 * sum_v p_v log(p_v / q_v),   p = softmax(z_teacher / T),  q = softmax(z_student / T)

in fp32 whatever the logits' dtype (as NVIDIA Model Optimizer's LogitsKLLoss). The T^2 factor keeps the
gradient's scale independent of T (Hinton et al., 2015, "Distilling the knowledge in a neural network").

``top_k > 0`` keeps only the teacher's k most likely tokens of each position plus one bucket holding the
remaining probability mass, on both sides (the idea of Model Optimizer's top-k logits loss): the KL is over
k + 1 bins, so a caller may ship or store only k teacher logits per token on large vocabularies. With
k >= V it equals the full KL.

:func:`kd_per_token` returns the per-token values [B, T]; the trainer averages them with the same per-token
weights as the LM term (docs/TRAINING.md, Distillation). Its backward is analytic,
dKD/dz_student = T * q * (1 - p_bin / q_bin) (= T * (q - p) on the full vocabulary), computed in the forward
chunk by chunk so that no [N, V] fp32 autograd graph is kept; :func:`kd_reference` is the plain formula
autograd differentiates, the reference the tests compare against.
"""
from __future__ import annotations

import torch

# Rows per chunk of the forward: bounds the fp32 temporaries to a few [CHUNK, V] tensors.
CHUNK = 1024


def _bins(zs: torch.Tensor, zt: torch.Tensor, top_k: int):
    """Student / teacher log-probabilities of the KL's bins: the full vocabulary, or top-k + the rest."""
    logq, logp = torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)
    if top_k <= 0 or top_k >= zs.shape[-1]:
        return logq, logp, None
    idx = logp.topk(top_k, dim=-1).indices
    rest = torch.ones_like(logp, dtype=torch.bool).scatter_(-1, idx, False)
    neg = torch.finfo(logp.dtype).min
    # The rest bucket as a logsumexp over the tokens outside the top k: no 1 - sum cancellation.
    logq_rest = logq.masked_fill(~rest, neg).logsumexp(-1, keepdim=True)
    logp_rest = logp.masked_fill(~rest, neg).logsumexp(-1, keepdim=True)
    logq_b = torch.cat([logq.gather(-1, idx), logq_rest], -1)
    logp_b = torch.cat([logp.gather(-1, idx), logp_rest], -1)
    return logq_b, logp_b, (idx, rest, logq, logq_rest, logp_rest)


def _kl(logq_b: torch.Tensor, logp_b: torch.Tensor) -> torch.Tensor:
    p = logp_b.exp()
    # 0 * log 0 = 0: a bin the teacher gives no mass contributes nothing.
    return torch.where(p > 0, p * (logp_b - logq_b), torch.zeros_like(p)).sum(-1)


def _chunk_loss_and_grad(zs: torch.Tensor, zt: torch.Tensor, temperature: float, top_k: int):
    zs, zt = zs.float() / temperature, zt.float() / temperature
    logq_b, logp_b, topk = _bins(zs, zt, top_k)
    loss = _kl(logq_b, logp_b) * temperature ** 2
    if topk is None:  # dKL/du = q - p, u = z / T; times T^2 / T
        grad = (logq_b.exp() - logp_b.exp()) * temperature
        return loss, grad
    idx, rest, logq, logq_rest, logp_rest = topk
    q = logq.exp()
    # dKL/du_j = q_j (1 - p_bin(j) / q_bin(j)); ratio per token: the top-k bins then the rest bucket.
    ratio = torch.ones_like(q).scatter_(-1, idx, (logp_b[:, :-1] - logq_b[:, :-1]).exp())
    ratio = torch.where(rest, (logp_rest - logq_rest).exp(), ratio)
    return loss, q * (1 - ratio) * temperature


class _KDPerToken(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, temperature, top_k):
        shape = student.shape
        zs, zt = student.detach().reshape(-1, shape[-1]), teacher.detach().reshape(-1, shape[-1])
        losses, grads = [], []
        for i in range(0, zs.shape[0], CHUNK):
            loss, grad = _chunk_loss_and_grad(zs[i:i + CHUNK], zt[i:i + CHUNK], temperature, top_k)
            losses.append(loss)
            grads.append(grad.to(student.dtype))
        ctx.save_for_backward(torch.cat(grads).view(shape))
        return torch.cat(losses).view(shape[:-1])

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out.unsqueeze(-1).to(grad.dtype), None, None, None


def kd_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                 top_k: int = 0) -> torch.Tensor:
    """Per-token KL(teacher || student) [..., V] -> [...] in fp32; differentiable in ``student_logits`` only."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the two models need the same vocabulary")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _KDPerToken.apply(student_logits, teacher_logits, float(temperature), int(top_k))


def kd_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                 top_k: int = 0) -> torch.Tensor:
    """The plain formula on the whole tensor (autograd through it): the reference of :func:`kd_per_token`."""
    zs = student_logits.float() / temperature
    zt = teacher_logits.detach().float() / temperature
    q, p = torch.softmax(zs, -1), torch.softmax(zt, -1)
    if 0 < top_k < zs.shape[-1]:
        idx = p.topk(top_k, dim=-1).indices
        q = torch.cat([q.gather(-1, idx), 1 - q.gather(-1, idx).sum(-1, keepdim=True)], -1)
        p = torch.cat([p.gather(-1, idx), 1 - p.gather(-1, idx).sum(-1, keepdim=True)], -1)
    return (p * (p.log() - q.log())).sum(-1) * temperature ** 2
