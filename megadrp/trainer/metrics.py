"""Rank-0 logging: the one-line step report, RUN_DIR/metrics.jsonl (format in ARCHITECTURE.md) and wandb.

wandb is imported lazily and runs offline unless logging.wandb_mode says otherwise; its run id is kept in
the checkpoint so a resumed run continues the same wandb run. On resume the metrics file is cut back to the
checkpoint's step, so that the file of a killed-and-resumed run equals that of an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Optional

from megadrp import run_format


class MetricsFile:
    def __init__(self, run_dir, enabled: bool):
        self.path = Path(run_dir) / run_format.METRICS_FILE
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (written by the run that was killed), atomically."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line torn by the kill
                continue
            if rec.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_name(f".{run_format.METRICS_FILE}.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _fmt_map(d: dict, fmt: str = "{:.3f}") -> str:
    return " ".join(f"{k}={fmt.format(v)}" for k, v in d.items())


def step_line(rec: dict, max_steps: int, mode_part: str = "") -> str:
    mfu = "n/a" if rec.get("mfu") is None else f"{100 * rec['mfu']:.1f}%"
    parts = [f"step {rec['step']}/{max_steps}", f"loss {rec['loss']:.4f}", f"lm {rec['lm_loss']:.4f}"]
    if "kd_loss" in rec:  # distillation on
        parts.append(f"kd {rec['kd_loss']:.4f}")
    parts += [f"lr {rec['lr']:.2e}", f"{rec['tokens_per_s']:.0f} tok/s", f"mfu {mfu}"]
    if mode_part:
        parts.append(mode_part)
    parts.append(f"w {_fmt_map(rec.get('domain_weights', {}))}")
    if "elapsed_s" in rec:
        parts.append(f"{clock(rec['elapsed_s'])} elapsed, eta {clock(rec['eta_s'])}")
    return " | ".join(parts)


def clock(seconds: float) -> str:
    """``M:SS``, or ``H:MM:SS`` from an hour on."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class Wandb:
    """A thin, lazily imported wandb run (rank 0 only); mode 'disabled' never imports wandb."""

    def __init__(self, logging_cfg, run_dir, run_id: Optional[str], config: dict, enabled: bool):
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.run = None
        if not enabled or logging_cfg.wandb_mode == "disabled":
            return
        import wandb

        self.run = wandb.init(project=logging_cfg.wandb_project, dir=str(run_dir), id=self.run_id, resume="allow",
                              mode=logging_cfg.wandb_mode, config=config, name=Path(run_dir).name)

    def log(self, record: dict) -> None:
        if self.run is None:
            return
        flat = {}
        for k, v in record.items():
            if isinstance(v, dict):
                flat.update({f"{k}/{kk}": vv for kk, vv in v.items() if isinstance(vv, (int, float))})
            elif isinstance(v, (int, float)) and k != "step":
                flat[f"{record['kind']}/{k}"] = v
        self.run.log(flat, step=record["step"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
