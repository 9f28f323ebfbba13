"""The loss-spike guard: divergence that never reaches NaN still stops the run (or skips the step).

At lr 1e3 the tiny model's loss went 6.2, 2.2e7, 1.9e7, 1.1e7, 1.5e6 and the run finished with exit 0 and
checkpoints (issue 30): finite numbers pass the NaN guard. This guard compares each step's LM loss (the mean
token CE over every rank, before the mode's terms and distillation, identical on every rank) with a running
statistic, the median of the last `optim.spike_window` accepted steps: a spike is a loss above
`optim.spike_factor` (default 5) x max(median, 1 nat). The median ignores an earlier lone outlier; the 1-nat floor
keeps noise around a very low loss from counting as a spike. Why 5: a model at a loss of 2.5 (SmolLM2-135M on
text) that spikes past 12.5 predicts worse than a uniform guess over its 49,152 tokens (ln 49152 = 10.8), while
the noise of a healthy run, and the jump of an early masked step, stays well below it.

`optim.spike_guard`:
- `stop` (default): the run ends like a NaN loss, exit 3, nothing of that state checkpointed, the last good
  checkpoint named.
- `skip`: the step does not move the weights: every micro-batch's loss is all-reduced before its backward, and
  from the first one that spikes the step's remaining losses are zeroed and the weights' learning rate is 0 for
  that step (the batch's tokens are consumed; DRO does not observe the step; Adam's moments decay one step and
  take the gradients of micro-batches before the spike; a mode's own side optimizer, e.g. prune's masks, still
  takes its step on zero loss gradients). One small all-reduce per micro-batch.
- `off`.
The history is part of the checkpoint, so a resumed run decides as the uninterrupted one would.
"""
from __future__ import annotations

import statistics
from typing import Optional


class SpikeGuard:
    def __init__(self, action: str = "stop", factor: float = 5.0, window: int = 20):
        self.action, self.factor, self.window = action, float(factor), int(window)
        self.history: list = []

    def threshold(self) -> Optional[float]:
        """The loss above which a step spikes, or None (guard off, or no accepted step yet)."""
        if self.action == "off" or not self.history:
            return None
        return self.factor * max(statistics.median(self.history), 1.0)

    def is_spike(self, loss: float) -> bool:
        limit = self.threshold()
        return limit is not None and loss > limit

    def observe(self, loss: float) -> None:
        """An accepted step's LM loss joins the statistic."""
        self.history = (self.history + [float(loss)])[-self.window:]

    def describe(self, step: int, loss: float) -> str:
        median = statistics.median(self.history)
        return (f"loss spike at step {step}: LM loss {loss:.4g} is {loss / max(median, 1.0):.3g}x the median of the "
                f"last {len(self.history)} steps ({median:.4g}; the guard's limit is optim.spike_factor = "
                f"{self.factor:g}x)")

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = [float(x) for x in (state or {}).get("history", [])][-self.window:]
