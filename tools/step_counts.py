"""Operators launched and host synchronisations of a piece of training, counted on any device (CPU included).

On a GPU a small model's step is bound by the host: every operator is a kernel launch of a few microseconds,
and every read of a device value on the host (``.item()``, ``float(t)``, ``bool(t)``, ``.cpu()``, ``.tolist()``)
or blocking host-to-device copy (``.to(device)`` of pageable memory, ``torch.tensor(..., device=)``) waits
until the device has finished everything queued, so the host stops running ahead of it. Both are properties
of the Python code, not of the device, so they can be counted on the CPU and a regression caught there:

- ``ops``: aten operators the profiler records (``top_level``: those called from Python, one per dispatcher
  entry; ``all``: with the operators they call, backward included), and ``device_calls``: the torch calls made
  from Python on device tensors that launch work (forward and optimizer code; views, metadata and host-side
  arithmetic excluded): the closest CPU count of a GPU's kernel launches outside autograd's backward (close,
  not equal: SDPA and the Triton kernels take other paths on the CPU).
- ``syncs``: the calls above on device tensors (``_SyncMode`` tells them from host ones on the CPU too), by the
  code that made them (``megadrp``, ``deepspeed``, ``torch`` or other: the innermost frame of the stack in one
  of those packages), with the first place of each kind for a reader.

    with StepCounter(device) as c:
        trainer.run_step()
    c.summary()  # {"ops": {...}, "syncs": {...}, "sync_sites": {...}}
"""
from __future__ import annotations

import collections
import traceback
import warnings

import torch
from torch.overrides import TorchFunctionMode

# Tensor methods that read a value on the host: on a GPU each one waits for the device.
HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"}
OWNERS = ("megadrp", "deepspeed", "torch")
# Calls that launch no kernel: attribute access, metadata, views.
NO_KERNEL = {"__get__", "__set__", "numel", "dim", "size", "stride", "view", "view_as", "narrow", "detach",
             "reshape", "expand", "expand_as", "split", "chunk", "unbind", "t", "transpose", "permute", "unsqueeze",
             "squeeze", "flatten", "is_complex", "is_floating_point", "__getitem__", "data_ptr", "element_size",
             "requires_grad_", "is_pinned", "__len__", "storage_offset", "untyped_storage", "is_contiguous",
             "__hash__", "register_hook", "__format__", "__repr__", "__reduce_ex__"}
# torch.optim keeps its step counts as host tensors (not capturable), so reading them waits for nothing
HOST_STATE_SITES = ("torch/optim/optimizer.py",)


def _owner(stack) -> tuple:
    """(package, 'file:line') of the innermost frame inside megadrp, deepspeed or torch (``stack`` without this
    file's frames)."""
    for frame in reversed(stack):
        path = frame.filename.replace("\\", "/")
        for name in OWNERS:
            if f"/{name}/" in path:
                short = path[path.rindex(f"/{name}/") + 1:]
                return name, f"{short}:{frame.lineno}"
    return "other", f"{stack[-1].filename}:{stack[-1].lineno}" if stack else "?"


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)


def _device_arg(args, kwargs):
    for a in list(args[1:]) + [kwargs.get("device")]:
        if isinstance(a, torch.device):
            return a
        if isinstance(a, str) and a:
            try:
                return torch.device(a)
            except RuntimeError:
                continue
    return None


class _SyncMode(TorchFunctionMode):
    """Tells host tensors from device tensors on any device, so the CPU run counts what a GPU run would wait on.

    Host tensors: made inside the counted code by a factory without a device argument (``torch.rand(n)``,
    ``torch.from_numpy``), read back by ``.cpu()``, or computed from host tensors only. Every other tensor
    (parameters, anything computed from them, anything made with ``device=``) is a device tensor. Counted: a
    host read of a device tensor, and a copy of a host tensor to the device that is not ``non_blocking``.
    """

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.counts = collections.Counter()
        self.sites = {}
        self.device_calls = collections.Counter()  # torch calls from Python that run on the device, by name
        self.device_calls_by_owner = collections.Counter()

    def _record(self, kind: str) -> None:
        owner, site = _owner(traceback.extract_stack()[:-2])
        if site.startswith(HOST_STATE_SITES):
            return
        self.counts[owner] += 1
        self.sites.setdefault(f"{owner} {kind}", site)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        on_host = [getattr(t, "_host", False) for t in inputs]
        dev = _device_arg(args, kwargs)
        if name in HOST_READS and inputs and not on_host[0]:
            self._record(name)
        elif name in ("to", "cuda", "copy_") and inputs and on_host[-1] and not kwargs.get("non_blocking"):
            if (dev is not None and dev.type == self.device.type) or name == "copy_" and not on_host[0]:
                self._record(f"{name}(host to device)")
        out = func(*args, **kwargs)
        if name not in HOST_READS and name not in NO_KERNEL and (inputs and not all(on_host) or
                                                                 not inputs and dev is not None):
            self.device_calls[name] += 1
            self.device_calls_by_owner[_owner(traceback.extract_stack()[:-1])[0]] += 1
        if name in ("cpu", "numpy", "tolist"):
            host = True
        elif name in ("to", "cuda") and dev is not None:
            host = dev.type == "cpu" and self.device.type != "cpu"
        elif not inputs:  # a factory: on the host unless told the device
            host = dev is None or dev.type == "cpu" and self.device.type != "cpu"
        else:
            host = all(on_host) if name not in ("to", "cuda") else on_host[0]
        if host:
            for t in _tensors(out):
                try:
                    t._host = True
                except (AttributeError, RuntimeError):
                    pass
        return out


class StepCounter:
    """Counts aten operators (profiler) and host syncs (a torch-function mode) of the code run inside it."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.sync_mode = _SyncMode(self.device)
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def __enter__(self) -> "StepCounter":
        self._warnings = warnings.catch_warnings()  # deprecation warnings would name this file's frame
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self.profiler.__enter__()
        self.sync_mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.sync_mode.__exit__(*exc)
        self.profiler.__exit__(*exc)
        self._warnings.__exit__(*exc)

    def summary(self) -> dict:
        events = [e for e in self.profiler.events() if e.name.startswith("aten::")]
        top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
        counts = self.sync_mode.counts
        calls = self.sync_mode.device_calls
        return {"ops": {"top_level": len(top), "all": len(events), "device_calls": sum(calls.values())},
                "device_calls_by_name": dict(calls.most_common()),
                "device_calls_by_owner": dict(self.sync_mode.device_calls_by_owner.most_common()),
                "syncs": {"total": sum(counts.values()), **{k: counts.get(k, 0) for k in OWNERS + ("other",)}},
                "sync_sites": dict(sorted(self.sync_mode.sites.items()))}
