"""Nested Python state as JSON + a dict of tensors, so that storing and reading it needs no pickle.

Why: a torch.save'd state is a pickle, and loading a pickle from a checkpoint someone handed you runs whatever
code it holds (docs/TRAINING.md, "Failures"). ``encode`` turns a state into a JSON-able tree whose tensors are
replaced by references into a flat ``{name: tensor}`` dict (stored as safetensors by megadrp.run_format);
``decode`` reverses it. What the trainer's state holds round-trips exactly: tensors (any dtype), bool, int,
float (JSON writes repr; NaN/inf as the JSON extension), str, None, lists, tuples (tagged, e.g. Python's RNG
state), dicts with non-string keys (tagged, e.g. a torch optimizer's per-parameter state), numpy arrays
(tagged, small ones only: numpy's RNG state) and numpy scalars (as Python numbers). Anything else is refused
at save time, naming where in the state it sits.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def encode(state: Any) -> tuple:
    """(JSON-able tree, {name: tensor}) of ``state``."""
    tensors: dict = {}
    return _encode(state, tensors, "state"), tensors


def _encode(obj: Any, tensors: dict, where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()  # clone: safetensors refuses shared storage
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")]
                              for k, v in obj.items()]}
    raise TypeError(f"megadrp state {where} is a {type(obj).__name__}, which the run format cannot store "
                    f"without pickle; keep state to tensors, numbers, strings, lists, tuples and dicts")


def decode(obj: Any, tensors: dict) -> Any:
    """The object ``encode`` gave (``tensors``: the name -> tensor dict read back from safetensors)."""
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    if "__tuple__" in obj:
        return tuple(decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {decode(k, tensors): decode(v, tensors) for k, v in obj["__items__"]}
    return {k: decode(v, tensors) for k, v in obj.items()}
