"""The run's stateful parts, registered once and saved and restored together (as torchtitan's trainer does).

A part is anything with ``state_dict()`` and ``load_state_dict(state)``. The trainer registers its own (the
method, the sampler, the reweighting rule) under the keys the state file has always used (docs/ARCHITECTURE.md,
"Checkpoint contents"), and a method registers its parts the same way (prune: masks, multipliers, their
optimizer, the sparsity controller), so saving and restoring never list the parts by hand. A part registered
``optional`` may be missing from an older checkpoint (it then keeps its fresh state); any other missing part is
an error naming it.
"""
from __future__ import annotations

from typing import Any


class StateRegistry:
    def __init__(self):
        self._parts: dict[str, tuple[Any, bool]] = {}

    def register(self, key: str, part: Any, optional: bool = False) -> Any:
        if key in self._parts:
            raise ValueError(f"state key {key!r} is registered twice")
        self._parts[key] = (part, optional)
        return part

    def keys(self) -> list[str]:
        return list(self._parts)

    def state_dict(self) -> dict:
        return {key: part.state_dict() for key, (part, _) in self._parts.items()}

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k, (_, optional) in self._parts.items() if not optional and state.get(k) is None]
        if missing:
            raise KeyError(f"the checkpoint's state has no {missing} (it has {sorted(state)}): not written by this "
                           "method, or by an older megadrp")
        for key, (part, _) in self._parts.items():
            if state.get(key) is not None:
                part.load_state_dict(state[key])
