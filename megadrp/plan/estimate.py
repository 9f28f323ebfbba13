"""The memory and time model of one training run, per GPU, from shapes and the DeepSpeed JSON alone (no weights).

Model states follow ZeRO (Rajbhandari et al. 2020, section 3): per parameter, the training-dtype weights and
gradients, the fp32 master copy and Adam's two fp32 moments; stage 1 partitions the optimizer states (master
and moments) over the data-parallel ranks, stage 2 the gradients too, stage 3 the weights as well.
``offload_optimizer`` moves the master copy, the moments and the fp32 gradient partition to host memory,
``offload_param`` the weights. DeepSpeed keeps the fp32 flat partition even when training in fp32 (stage >= 1),
so the master copy is counted there as well, and stage 3 an fp32 gradient buffer of its largest sub-group
(DeepSpeed 0.19 runtime/zero/stage3.py; the CPU measurements in docs/BENCHMARKS.md agree).

Activations per token per layer are the tensors megadrp's decoder saves for backward (counted, then checked
against autograd's saved-tensor hooks, docs/BENCHMARKS.md): the two norms' inputs and outputs, q, k, v before
and after RoPE, the attention output, and the SwiGLU's gate, up, silu(gate) and product, in the training
dtype; attention runs through SDPA/flash, so no T x T score matrix is kept. With activation checkpointing
each layer keeps only its input, and one layer's activations exist at a time during its recompute. The
logits of one micro-batch (the training-dtype output, its fp32 copy for the loss, the saved log-softmax and
its gradient) are a separate line: at a 128k vocabulary they rival the whole stack of checkpointed layers. With
the fused linear + cross-entropy (model.fused_cross_entropy, the default, unless a KD term reads the logits)
the line is one chunk of those instead, plus the LM head's fp32 weight-gradient accumulator.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megadrp.kernels.cross_entropy import chunk_tokens

GIB = 1024 ** 3
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# Per GPU, not in any line above: CUDA context, NCCL buffers, the allocator's fragmentation (measured values
# for the first are ~0.5-1 GiB; PyTorch's caching allocator typically wastes a few per cent).
GPU_RESERVE_GIB = 2.0
FRAGMENTATION = 0.05


@dataclass
class ZeroSetup:
    """What the DeepSpeed JSON says about partitioning and offload."""

    stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    reduce_bucket: float = 5e8  # elements
    prefetch_bucket: float = 5e7
    sub_group: float = 1e9  # stage 3: elements of the largest fp32 gradient buffer
    max_live: float = 1e9  # stage 3: gathered parameter elements kept live (with the default reuse distance)
    contiguous_gradients: bool = True

    @classmethod
    def from_ds_config(cls, ds: dict) -> "ZeroSetup":
        zero = ds.get("zero_optimization", {}) or {}

        def on_cpu(key: str) -> bool:
            return str((zero.get(key) or {}).get("device", "none")).lower() in ("cpu", "nvme")

        def num(key: str, default: float) -> float:
            v = zero.get(key, default)
            return float(v) if isinstance(v, (int, float)) else default  # "auto" -> DeepSpeed's default

        return cls(stage=int(zero.get("stage", 0)), offload_optimizer=on_cpu("offload_optimizer"),
                   offload_param=on_cpu("offload_param"), reduce_bucket=num("reduce_bucket_size", 5e8),
                   prefetch_bucket=num("stage3_prefetch_bucket_size", 5e7), sub_group=num("sub_group_size", 1e9),
                   max_live=num("stage3_max_live_parameters", 1e9),
                   contiguous_gradients=bool(zero.get("contiguous_gradients", True)))


@dataclass
class RunShape:
    """Everything the estimate needs, resolved from a run config (megadrp/plan/resolve.py)."""

    shape: object  # ModelShape of the model trained (the source in prune mode)
    target: Optional[object]  # ModelShape after pruning (prune, dress) or None
    precision: str  # bf16 | fp16 | fp32
    zero: ZeroSetup
    gpus: int
    micro_batch: int
    accumulation: int
    seq_length: int
    activation_checkpointing: bool
    mask_params: int = 0  # log_alpha entries + multipliers (prune mode)
    teacher: Optional[object] = None  # ModelShape of a separate teacher copy (distillation)
    teacher_logits: bool = False  # distillation: a teacher pass's logits (own all-ones pass or a copy)
    masked: bool = False  # prune mode: the forward multiplies by sampled masks
    fused_loss: bool = False  # model.fused_cross_entropy without distillation: no [tokens, V] logits
    max_steps: int = 0


def activation_bytes_per_token_layer(shape, dtype_bytes: int, masked: bool = False) -> int:
    """Bytes one decoder layer saves for backward per token (see the module docstring for the list). Under
    prune-mode masks each mask product also keeps its unmasked input for the mask's gradient: the hidden mask
    four d-vectors, the intermediate mask the m-vector, the head mask the attention output."""
    d, hd, h, g, m = (shape.hidden_size, shape.head_dim, shape.num_attention_heads, shape.num_key_value_heads,
                      shape.intermediate_size)
    attention = 2 * d + (h + 2 * g) * hd + (h + g) * hd + h * hd  # norm in/out, q k v, roped q k, attn out
    mlp = 2 * d + 4 * m  # norm in/out, gate, up, silu(gate), silu(gate) * up
    masks = 4 * d + m + h * hd if masked else 0
    return (attention + mlp + masks) * dtype_bytes


@dataclass
class Estimate:
    params: dict
    per_gpu_gib: dict
    host_gib: dict
    gpus: int
    gpu_memory_gib: Optional[float]
    fits: Optional[bool]
    activations_without_checkpointing_gib: float
    activations_with_checkpointing_gib: float
    tokens_per_step: int
    flops_per_token: float
    time: dict = field(default_factory=dict)
    advice: list = field(default_factory=list)
    device: str = "cuda"

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def estimate(run: RunShape, gpu_memory_gib: Optional[float] = None, mfu: float = 0.4,
             peak_tflops: float = 989.0, reserve_gib: float = GPU_RESERVE_GIB, device: str = "cuda") -> Estimate:
    """The plan of ``run``. ``device="cpu"`` models a CPU run's resident memory instead: buffers allocated
    but never written are not resident there, and the unfused AdamW step makes one fp32 temporary."""
    from megadrp.trainer.mfu import flops_per_token

    s, z, n = run.shape, run.zero, max(1, run.gpus)
    w = DTYPE_BYTES[run.precision]
    p = s.num_params()
    part_opt = n if z.stage >= 1 else 1
    part_grad = n if z.stage >= 2 else 1
    part_w = n if z.stage >= 3 else 1
    weights = 0.0 if z.offload_param else p * w / part_w
    grads = p * w / part_grad
    master = p * 4 / part_opt if (w != 4 or z.stage >= 1) else 0.0
    adam = p * 8 / part_opt
    if z.stage >= 3:  # fp32 gradients of the partition: one buffer per sub-group under optimizer offload,
        # else one buffer of the largest sub-group reused by each (whatever the training dtype)
        fp32_grads = (p / n if z.offload_optimizer else min(p / n, z.sub_group)) * 4
    else:  # the fp32 gradient partition of bf16/fp16 training (DeepSpeed's BF16_Optimizer at stage 0 too)
        fp32_grads = p * 4 / part_opt if w != 4 else 0.0
    host = {"optimizer_offload": 0.0, "param_offload": 0.0}
    if z.offload_optimizer:
        host["optimizer_offload"] = (master + adam + fp32_grads) / GIB
        master = adam = fp32_grads = 0.0
    if z.offload_param:
        host["param_offload"] = p * w / part_w / GIB
    model_states = weights + grads + master + adam + fp32_grads

    masks = run.mask_params * 16  # fp32 value, gradient and two Adam moments, replicated on every rank
    teacher = 0.0
    if run.teacher is not None:
        teacher = run.teacher.num_params() * w / (n if z.stage >= 3 else 1)

    tokens = run.micro_batch * run.seq_length
    layer_act = activation_bytes_per_token_layer(s, w, run.masked) * tokens
    act_full = s.num_hidden_layers * layer_act
    act_ckpt = s.num_hidden_layers * s.hidden_size * w * tokens + layer_act
    activations = act_ckpt if run.activation_checkpointing else act_full
    logit_bytes = w + (4 if w != 4 else 0) + 4 + 4
    if run.fused_loss:  # kernels/cross_entropy.py: one chunk's logits, its fp32 log-sum-exp and gradient, and
        # the fp32 weight-gradient accumulator of the LM head, instead of the whole micro-batch's logits
        chunk = min(tokens, chunk_tokens(s.vocab_size, s.hidden_size))
        # (the chunk in the matmul dtype, its fp32 probabilities and their gradient; nothing is kept for backward)
        logits = chunk * s.vocab_size * (w + 4 + 4) + s.vocab_size * s.hidden_size * 4
    else:
        logits = tokens * s.vocab_size * logit_bytes
    if run.teacher_logits:
        logits += tokens * s.vocab_size * (w + 4 + 4)  # the teacher's logits, fp32 copy, softmax

    # ZeRO working buffers: stage 3 gathers a layer (and prefetches the next) in the training dtype; the
    # embedding and LM head are the largest single gathers. Stage 3 with contiguous gradients allocates its
    # whole reduce bucket up front, even on one rank (5e8 elements by default: 1.9 GiB in fp32); stages 1-2
    # reduce through one across ranks.
    # Gathered parameters stay live up to stage3_max_live_parameters (the default reuse distance keeps them
    # from forward to backward), at least the largest single tensor (embedding / LM head).
    buffers = 0.0
    if z.stage >= 3:
        largest = max(s.layer_params(), s.vocab_size * s.hidden_size)
        buffers += (max(min(z.max_live, p), largest) + min(z.prefetch_bucket, p)) * w
        if z.contiguous_gradients:
            buffers += (z.reduce_bucket if device == "cuda" else min(z.reduce_bucket, p / n)) * w
    elif z.stage >= 1 and n > 1:
        buffers += min(z.reduce_bucket, p) * w
    if device != "cuda" and not z.offload_optimizer:
        buffers += p * 4 / part_opt  # torch AdamW (foreach=False, unfused): sqrt(v) + eps as one temporary

    lines = {"weights": weights, "gradients": grads, "fp32_master": master, "adam": adam,
             "fp32_gradients": fp32_grads, "model_states": model_states, "masks_and_multipliers": masks,
             "teacher": teacher, "activations": activations, "logits": logits, "zero_buffers": buffers}
    total = model_states + masks + teacher + activations + logits + buffers
    per_gpu = {k: v / GIB for k, v in lines.items()}
    per_gpu["total"] = total / GIB
    fits = None
    if gpu_memory_gib is not None and device == "cuda":
        per_gpu["reserve"] = reserve_gib + FRAGMENTATION * gpu_memory_gib
        per_gpu["total"] += per_gpu["reserve"]
        fits = per_gpu["total"] <= gpu_memory_gib

    tgt = run.target.num_params() if run.target is not None else p
    params = {"source": p, "target": tgt, "trained": p, "masks": run.mask_params,
              "teacher": run.teacher.num_params() if run.teacher is not None else 0}
    fpt = flops_per_token(s, run.seq_length)
    if run.teacher is not None or run.teacher_logits:
        fpt += flops_per_token(run.teacher or s, run.seq_length) / 3  # a forward pass is a third of training
    step_tokens = tokens * run.accumulation * n
    step_s = step_tokens * fpt / (n * peak_tflops * 1e12 * mfu) if mfu > 0 and peak_tflops > 0 else None
    time = {"mfu": mfu, "peak_tflops": peak_tflops, "step_s": step_s,
            "total_h": step_s * run.max_steps / 3600 if step_s is not None else None, "steps": run.max_steps}
    est = Estimate(params=params, per_gpu_gib=per_gpu, host_gib={k: v for k, v in host.items()}, gpus=n,
                   gpu_memory_gib=gpu_memory_gib, fits=fits,
                   activations_without_checkpointing_gib=act_full / GIB,
                   activations_with_checkpointing_gib=act_ckpt / GIB, tokens_per_step=step_tokens,
                   flops_per_token=fpt, time=time, device=device)
    if fits is False:
        est.advice = advice(run, est)
    return est


def advice(run: RunShape, est: Estimate) -> list:
    """The knobs that would make a run fit, largest saving first."""
    g, z, out = est.per_gpu_gib, run.zero, []
    if not run.activation_checkpointing and est.activations_without_checkpointing_gib > 1.0:
        out.append(f"model.activation_checkpointing=true (activations {est.activations_without_checkpointing_gib:.1f}"
                   f" -> {est.activations_with_checkpointing_gib:.1f} GiB)")
    if z.stage < 3:
        out.append(f"deepspeed.config=ds_configs/zero3_bf16.json (ZeRO-3 partitions the weights and gradients; "
                   f"model states now {g['model_states']:.1f} GiB per GPU)")
    elif not z.offload_optimizer:
        out.append(f"deepspeed.config=ds_configs/zero3_bf16_offload.json (optimizer states to host memory: "
                   f"-{g['fp32_master'] + g['adam'] + g['fp32_gradients']:.1f} GiB per GPU)")
    if run.micro_batch > 1:
        out.append(f"optim.micro_batch_size={max(1, run.micro_batch // 2)} with "
                   f"optim.gradient_accumulation_steps={run.accumulation * 2} (same global batch, half the "
                   f"activations and logits)")
    out.append("more GPUs (--gpus): model states shrink with the data-parallel size under ZeRO")
    return out
