"""A run's ``metrics.jsonl`` (format in docs/ARCHITECTURE.md): read into train and eval records, and plotted.

A run killed mid-write leaves a truncated last line, and cpt runs have no mask fields: both are normal,
so bad lines are counted and skipped, and every field is optional. Plots are PNGs (matplotlib, Agg
backend, imported only when drawing): one figure per quantity, written only if it was logged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from megadrp import run_format


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
    path = Path(run_dir) / run_format.METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: `megadrp report` reads the metrics file a prune/cpt run writes")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    return plt


def _lines(out: Path, name: str, title: str, ylabel: str, series: dict, styles: dict | None = None,
           logy: bool = False) -> Path | None:
    """One line per entry of ``series`` ({label: (steps, values)}); None when there is nothing to draw."""
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, (steps, values) in sorted(series.items()):
        ax.plot(steps, values, label=label, marker="o" if len(steps) < 15 else None, markersize=3,
                **(styles or {}).get(label, {}))
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, ncol=2 if len(series) > 6 else 1)
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _sparsity(log: MetricsLog) -> tuple[dict, dict]:
    """Expected (solid) and target (dashed, same colour) sparsity per mask family."""
    series, styles = {}, {}
    expected, target = log.dict_series("expected_sparsity"), log.dict_series("target_sparsity")
    for i, family in enumerate(sorted(set(expected) | set(target))):
        colour = f"C{i}"
        if family in expected:
            series[f"{family} expected"] = expected[family]
            styles[f"{family} expected"] = {"color": colour}
        if family in target:
            series[f"{family} target"] = target[family]
            styles[f"{family} target"] = {"color": colour, "linestyle": "--"}
    return series, styles


def write_plots(log: MetricsLog, out_dir) -> dict[str, Path]:
    """Write every plot the log has data for into ``out_dir``; returns {title: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sparsity, sparsity_styles = _sparsity(log)
    losses = {k: log.series(k) for k in ("loss", "lm_loss", "lagrangian")}
    specs = [
        ("domain_weights", "Domain weights", "weight", log.dict_series("domain_weights"), None, False),
        ("domain_loss", "Per-domain training loss", "loss (nats/token)", log.dict_series("domain_loss"), None, False),
        ("loss", "Training loss", "value", losses, None, False),
        ("sparsity", "Expected vs target sparsity per mask family", "sparsity", sparsity, sparsity_styles, False),
        ("kd_loss", "Distillation loss KL(teacher || student)", "nats/token", {"kd_loss": log.series("kd_loss")},
         None, False),
        ("lambdas", "Lagrange multipliers", "value", log.dict_series("lambdas"), None, False),
        ("throughput", "Throughput", "tokens/s", {"tokens/s": log.series("tokens_per_s")}, None, False),
        ("eval_loss", "Held-out loss per domain", "loss (nats/token)", log.dict_series("eval_loss", "eval"), None,
         False),
        ("eval_bpb", "Held-out bits per byte per domain", "bits/byte", log.dict_series("eval_bpb", "eval"), None,
         False),
    ]
    written = {}
    for name, title, ylabel, series, styles, logy in specs:
        path = _lines(out, name, title, ylabel, series, styles, logy)
        if path is not None:
            written[title] = path
    return written
