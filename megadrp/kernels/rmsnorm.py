"""Masked RMSNorm in one pass per row: variance over the kept dims (z != 0), output * weight * z.

Static shape (no index_select, no host sync): the kept count is summed from z inside the kernel. Backward,
with n = x * rstd and dn = dy * w * z:  dx = rstd * (dn - n * keep * sum(dn * n) / count);
dw = sum_rows dy * n * z and dz = sum_rows dy * w * n, reduced as per-program partials (deterministic).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from megadrp.kernels.backend import interpreting


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, z_ptr, y_ptr, rstd_ptr, D, eps, HAS_Z: tl.constexpr, BLOCK_D: tl.constexpr):
    # one row of x [M, D] -> y [M, D], rstd [M]
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    inb = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=inb, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=inb, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + cols, mask=inb, other=0.0)
        keep = (z != 0.0).to(tl.float32)
        var = tl.sum(x * x * keep, axis=0) / tl.maximum(tl.sum(keep, axis=0), 1.0)
    else:
        var = tl.sum(x * x, axis=0) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    y = x * rstd * w
    if HAS_Z:
        y = y * z
    tl.store(y_ptr + row * D + cols, y.to(y_ptr.dtype.element_ty), mask=inb)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _bwd_kernel(dy_ptr, x_ptr, w_ptr, z_ptr, rstd_ptr, dx_ptr, dw_part_ptr, dz_part_ptr, M, D,
                HAS_Z: tl.constexpr, BLOCK_D: tl.constexpr):
    # rows pid, pid + P, ... of [M, D]; partial dw, dz [P, D] for this program's rows
    pid, nprog = tl.program_id(0), tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    inb = cols < D
    w = tl.load(w_ptr + cols, mask=inb, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + cols, mask=inb, other=0.0)
        keep = (z != 0.0).to(tl.float32)
        count = tl.maximum(tl.sum(keep, axis=0), 1.0)
    else:
        z = tl.full((BLOCK_D,), 1.0, tl.float32)
        keep = inb.to(tl.float32)
        count = D * 1.0
    dw_acc = tl.zeros((BLOCK_D,), tl.float32)
    dz_acc = tl.zeros((BLOCK_D,), tl.float32)
    for row in range(pid, M, nprog):
        base = row * D  # int32 is enough below 2^31 elements per tensor
        x = tl.load(x_ptr + base + cols, mask=inb, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + base + cols, mask=inb, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        n = x * rstd
        dw_acc += dy * n * z
        dz_acc += dy * w * n
        dn = dy * w * z
        dx = rstd * (dn - n * keep * (tl.sum(dn * n, axis=0) / count))
        tl.store(dx_ptr + base + cols, dx.to(dx_ptr.dtype.element_ty), mask=inb)
    tl.store(dw_part_ptr + pid * D + cols, dw_acc, mask=inb)
    if HAS_Z:
        tl.store(dz_part_ptr + pid * D + cols, dz_acc, mask=inb)


def _warps(block_d: int) -> int:
    return 1 if interpreting() else min(16, max(1, block_d // 512))


class MaskedRMSNormFn(torch.autograd.Function):
    """x [M, D], weight [D], z [D] fp32 | None -> y [M, D] in promote(x, weight) dtype."""

    @staticmethod
    def forward(ctx, x, weight, eps, z):
        m, d = x.shape
        block = triton.next_power_of_2(d)
        y = torch.empty(m, d, device=x.device, dtype=torch.promote_types(x.dtype, weight.dtype))
        rstd = torch.empty(m, device=x.device, dtype=torch.float32)
        _fwd_kernel[(m,)](x, weight, weight if z is None else z, y, rstd, d, eps, HAS_Z=z is not None,
                          BLOCK_D=block, num_warps=_warps(block))
        ctx.save_for_backward(x, weight, z, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, z, rstd = ctx.saved_tensors
        m, d = x.shape
        block = triton.next_power_of_2(d)
        sms = 4 if interpreting() else torch.cuda.get_device_properties(x.device).multi_processor_count * 4
        nprog = max(1, min(m, sms))
        dx = torch.empty_like(x)
        dw = torch.empty(nprog, d, device=x.device, dtype=torch.float32)
        dz = torch.empty(nprog, d, device=x.device, dtype=torch.float32) if z is not None else None
        _bwd_kernel[(nprog,)](dy.contiguous(), x, weight, dw if z is None else z, rstd, dx, dw,
                              dw if dz is None else dz, m, d, HAS_Z=z is not None, BLOCK_D=block,
                              num_warps=_warps(block))
        return dx, dw.sum(0).to(weight.dtype), None, None if dz is None else dz.sum(0)


def masked_rmsnorm(x, weight, eps: float, z_hidden: Optional[torch.Tensor] = None):
    """Reference semantics of reference.masked_rmsnorm (statistics in fp32)."""
    d = x.shape[-1]
    z = None if z_hidden is None else z_hidden.float().expand(d).contiguous()
    lead = x.shape[:-1]
    return MaskedRMSNormFn.apply(x.reshape(-1, d).contiguous(), weight.contiguous(), eps, z).reshape(*lead, d)
