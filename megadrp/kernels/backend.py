"""Which implementation the masked ops run: the backend switch and the Triton availability checks.

Backend: 'auto' (default) runs Triton on CUDA tensors, and on CPU tensors only under TRITON_INTERPRET=1;
'triton' does the same but raises where Triton cannot run; 'torch' always runs the PyTorch references.
The trainer sets it from the config's model.use_kernels; elsewhere (tests, benchmarks, export) the
MEGADRP_KERNELS environment variable or `set_backend` choose it.
"""
from __future__ import annotations

import contextlib
import os

import torch

_BACKENDS = ("auto", "triton", "torch")
_backend = os.environ.get("MEGADRP_KERNELS", "auto")
if _backend not in _BACKENDS:
    raise ValueError(f"MEGADRP_KERNELS={_backend!r}: choose one of {_BACKENDS}")


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (read at kernel definition, so fixed per process)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def set_backend(name: str) -> None:
    """Select 'auto', 'triton' or 'torch' for every masked op in this process."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"kernel backend {name!r}: choose one of {_BACKENDS}")
    _backend = name


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def backend(name: str):
    """Temporarily run the masked ops on another backend (tests, benchmarks)."""
    old = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def use_triton(t: torch.Tensor) -> bool:
    """Whether the op on tensor t should run the Triton path under the current backend."""
    if _backend == "torch":
        return False
    ok = triton_available() and (t.is_cuda or (interpreting() and t.device.type == "cpu"))
    if not ok and _backend == "triton":
        raise RuntimeError(f"kernel backend 'triton' cannot run on a {t.device.type} tensor: Triton needs CUDA, "
                           "or TRITON_INTERPRET=1 set before megadrp.kernels is imported")
    if ok and t.dtype == torch.bfloat16 and interpreting():
        return False  # the Triton interpreter's bf16 arithmetic gives wrong results: keep the reference
    return ok
