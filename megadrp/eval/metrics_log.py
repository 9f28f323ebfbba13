"""Read a run's ``metrics.jsonl`` (format in ARCHITECTURE.md) into train and eval records, tolerating gaps.

A run killed mid-write leaves a truncated last line, and cpt runs have no mask fields: both are normal,
so bad lines are counted and skipped, and every field is optional.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class MetricsLog:
    train: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    bad_lines: int = 0

    def series(self, key: str, records: str = "train") -> tuple[list[int], list[float]]:
        """(steps, values) of a scalar field over the records that have it."""
        rows = [r for r in getattr(self, records) if isinstance(r.get(key), (int, float)) and "step" in r]
        return [r["step"] for r in rows], [float(r[key]) for r in rows]

    def dict_series(self, key: str, records: str = "train") -> dict[str, tuple[list[int], list[float]]]:
        """{name: (steps, values)} of a dict-valued field (domain_weights, expected_sparsity, eval_bpb, ...)."""
        out: dict[str, tuple[list[int], list[float]]] = {}
        for r in getattr(self, records):
            values = r.get(key)
            if not isinstance(values, dict) or "step" not in r:
                continue
            for name, v in values.items():
                if isinstance(v, (int, float)):
                    steps, vals = out.setdefault(name, ([], []))
                    steps.append(r["step"])
                    vals.append(float(v))
        return out

    def last(self, key: str, records: str = "train"):
        """The latest value of ``key`` among the records that have it, or None."""
        for r in reversed(getattr(self, records)):
            if r.get(key) is not None:
                return r[key]
        return None


def read_metrics(path) -> MetricsLog:
    """Parse ``path``; unknown kinds are ignored, unparsable lines counted in ``bad_lines``."""
    log = MetricsLog()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.bad_lines += 1
                continue
            kind = rec.get("kind") if isinstance(rec, dict) else None
            if kind == "train":
                log.train.append(rec)
            elif kind == "eval":
                log.eval.append(rec)
    return log


def find_metrics(run_dir) -> Path:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: `megadrp report` reads the metrics file a prune/cpt run writes")
    return path
