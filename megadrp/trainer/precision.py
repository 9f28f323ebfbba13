"""Run precision: the dtype the weights are stored in, and the autocast dtype of the forward pass.

On accelerators ``bf16`` stores bf16 weights and DeepSpeed keeps the fp32 master copy. On CPU, ``bf16`` means
bf16 *autocast* over fp32 weights (the fp32 weights are the master copy; the optimizer and DeepSpeed run in
fp32): the matmuls run in bf16, norms, softmax and the loss stay fp32. ``auto`` on CPU measures one bf16 and
one fp32 projection of the model's own shape at start-up (a few ms) and autocasts only where bf16 is clearly
faster: CPUs with AMX or avx512_bf16 run bf16 GEMMs 4-5x faster than fp32, CPUs without them emulate bf16 and
are slower, and on tiny shapes the casts cost more than the matmul (docs/BENCHMARKS.md, "CPU mixed
precision"). The probe runs on rank 0 and its verdict is broadcast, so every rank runs the same arithmetic.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from megadrp.config import resolve_precision

# bf16 must beat fp32 on the probe matmul by this factor before auto picks it: autocast adds casts in forward
# and backward and leaves the non-matmul ops in fp32, so a matmul that is less than 2x faster does not pay for
# them (tiny model: the probe at 0.79x, the whole step at 1.5-2x fp32's time; docs/BENCHMARKS.md).
AUTO_MAX_RATIO = 0.5
# The probe's default shape, a SmolLM2-sized projection (tokens x hidden @ hidden x FFN); the trainer passes its
# own model's. Its cost is capped at PROBE_MAX_FLOP per matmul (about 10 ms in fp32 on one core).
PROBE_SHAPE = (512, 576, 1536)
PROBE_MAX_FLOP = 1e9


@dataclass(frozen=True)
class RunPrecision:
    storage: str              # 'bf16' | 'fp16' | 'fp32': the weights' dtype and the DeepSpeed JSON's precision
    autocast: Optional[str]   # 'bf16' or None: the forward's autocast dtype
    reason: str               # why, for the start-up line

    def context(self, device_type: str):
        """The autocast context of a forward pass (a no-op context when there is no autocast)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=torch.bfloat16)

    def describe(self) -> str:
        name = self.storage if self.autocast is None else f"{self.autocast} autocast over {self.storage} weights"
        return f"{name} ({self.reason})" if self.reason else name


def probe_shape(tokens: int, hidden: int, ffn: int) -> tuple:
    """The model's FFN up-projection at its micro-batch's token count, tokens cut to keep the probe cheap."""
    cap = max(16, int(PROBE_MAX_FLOP // (2 * hidden * ffn)))
    return (min(tokens, cap), hidden, ffn)


def measure_bf16_ratio(shape=PROBE_SHAPE, repeats: int = 10) -> float:
    """Time of ``F.linear`` under bf16 autocast (the casts of input and fp32 weight included, as in training)
    over the same fp32 ``F.linear`` on this CPU; best of ``repeats``, interleaved so that load from other
    processes hits both alike. Below 1 means bf16 is faster. On tiny shapes the casts dominate and bf16 loses."""
    import torch.nn.functional as F

    t, d, m = shape
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(t, d, generator=gen), torch.randn(m, d, generator=gen)
    best = {False: float("inf"), True: float("inf")}
    with torch.no_grad():
        for i in range(repeats + 1):  # the first round warms up both kernels and is not counted
            for bf16 in (False, True):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    F.linear(x, w)
                if i:
                    best[bf16] = min(best[bf16], time.perf_counter() - t0)
    return best[True] / best[False]


def resolve(requested: str, device_type: str, measure: Callable[[], float] = measure_bf16_ratio) -> RunPrecision:
    """The run precision for ``requested`` ('auto' | 'bf16' | 'fp16' | 'fp32') on ``device_type``.

    ``measure`` returns the bf16 / fp32 matmul time ratio (injected by tests); it is called only for 'auto' on
    CPU. The weights' dtype (``storage``) never depends on the measurement, so the DeepSpeed JSON can be
    checked before it runs.
    """
    storage = resolve_precision(requested, device_type)
    if device_type != "cpu":
        return RunPrecision(storage, None, "auto: bf16 on accelerators" if requested == "auto" else "")
    if requested == "bf16":
        return RunPrecision(storage, "bf16", "CPU: fp32 master weights")
    if requested != "auto":
        return RunPrecision(storage, None, "")
    ratio = measure()
    if ratio <= AUTO_MAX_RATIO:
        return RunPrecision(storage, "bf16", f"auto: a bf16 matmul takes {ratio:.2f}x the fp32 time on this CPU")
    return RunPrecision(storage, None, f"auto: a bf16 matmul takes {ratio:.2f}x the fp32 time on this CPU, "
                                      f"above {AUTO_MAX_RATIO}x")


def resolve_on_ranks(requested: str, device_type: str, shape=PROBE_SHAPE,
                     measure: Optional[Callable[[], float]] = None) -> RunPrecision:
    """:func:`resolve` with the measurement (on ``shape``, see :func:`probe_shape`) taken on rank 0 and
    broadcast: ranks timing different matmuls under different load must still agree on one arithmetic."""
    from megadrp.trainer import dist

    measure = measure or (lambda: measure_bf16_ratio(shape))

    def measured_on_rank0() -> float:
        return dist.all_gather_object(measure() if dist.is_main() else 0.0)[0]

    return resolve(requested, device_type, measured_on_rank0)
