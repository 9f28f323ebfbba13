"""Model FLOPs utilisation: training FLOPs per token of a decoder, and peak FLOPs by device name.

FLOPs per token follow PaLM (appendix B): 6 N for the matrices (forward + backward) plus 12 L H hd T for the
attention scores, where N counts every matrix a token passes through (layers and LM head; the input
embedding is a lookup). A masked (prune-mode) model does the dense model's arithmetic, so both modes are
measured against the same count; MFU = flops_per_token * tokens/s / peak.
"""
from __future__ import annotations

from typing import Optional

import torch

# Dense bf16 tensor-core peak (no sparsity), FLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16 = (
    ("H200", 989e12), ("GH200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("A10G", 125e12),
    ("L4", 121e12), ("RTX 4090", 165e12), ("V100", 125e12),
)


def flops_per_token(shape, seq_length: int) -> float:
    """Training FLOPs per token of a dense decoder of ``shape`` (a ModelShape) at ``seq_length``."""
    d, hd = shape.hidden_size, shape.head_dim
    h, g, m, layers = shape.num_attention_heads, shape.num_key_value_heads, shape.intermediate_size, \
        shape.num_hidden_layers
    per_layer = 2 * d * hd * (h + g) + 3 * d * m
    matrices = layers * per_layer + d * shape.vocab_size
    return 6.0 * matrices + 12.0 * layers * h * hd * seq_length


def peak_flops(device: torch.device, configured_tflops: float = 0.0) -> Optional[float]:
    """Peak FLOP/s of one device: the configured value if > 0, else the table (CUDA), else None (n/a)."""
    if configured_tflops and configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16:
        if key in name:
            return value
    return None


def mfu(tokens_per_s: float, flops_tok: float, peak_per_device: Optional[float], num_devices: int = 1):
    """Fraction of peak, or None when the peak is unknown (CPU without logging.peak_tflops)."""
    if not peak_per_device:
        return None
    return tokens_per_s * flops_tok / (peak_per_device * num_devices)
