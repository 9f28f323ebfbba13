"""``megadrp report RUN_DIR``: plots of a run's metrics and ``report/summary.md`` (final values, tables, links).

Reads ``RUN_DIR/metrics.jsonl`` (train and eval records; mask fields only in prune runs) and, when present,
``RUN_DIR/eval.json`` or ``--eval-json`` (written by ``megadrp eval``), whose comparison tables (quality, and
speed when measured) are copied into the summary.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megadrp import run_format
from megadrp.eval.run_metrics import MetricsLog, find_metrics, read_metrics


def _num(v, pattern: str = "{:.4g}") -> str:
    if v is None:
        return "—"
    if isinstance(v, int) and not isinstance(v, bool) and pattern == "{:.4g}":
        return f"{v:,}"  # counts (steps, tokens, parameters) read best in full
    return pattern.format(v) if isinstance(v, (int, float)) else str(v)


def _domain_table(log: MetricsLog) -> list[str]:
    weights, train_loss = log.last("domain_weights") or {}, log.last("domain_loss") or {}
    eval_loss, eval_bpb = log.last("eval_loss", "eval") or {}, log.last("eval_bpb", "eval") or {}
    domains = list(dict.fromkeys([*weights, *train_loss, *eval_loss, *eval_bpb]))
    if not domains:
        return []
    lines = ["## Domains (final values)\n", "| domain | weight | train loss | held-out loss | held-out bits/byte |",
             "|---|---:|---:|---:|---:|"]
    for d in domains:
        lines.append(f"| {d} | {_num(weights.get(d), '{:.4f}')} | {_num(train_loss.get(d), '{:.4f}')} | "
                     f"{_num(eval_loss.get(d), '{:.4f}')} | {_num(eval_bpb.get(d), '{:.4f}')} |")
    return lines + [""]


def _sparsity_table(log: MetricsLog) -> list[str]:
    expected, target = log.last("expected_sparsity") or {}, log.last("target_sparsity") or {}
    if not expected and not target:
        return []
    lines = ["## Mask families (final values)\n", "| family | expected sparsity | target sparsity |", "|---|---:|---:|"]
    for fam in dict.fromkeys([*expected, *target]):
        lines.append(f"| {fam} | {_num(expected.get(fam), '{:.4f}')} | {_num(target.get(fam), '{:.4f}')} |")
    lambdas = log.last("lambdas") or {}
    if lambdas:
        lines += ["", "Lagrange multipliers: " + ", ".join(f"`{k}` = {_num(v)}" for k, v in lambdas.items())]
    return lines + [""]


def _eval_json_section(path: Path) -> list[str]:
    from megadrp.eval_results import markdown_table, speed_table

    try:
        data = json.loads(path.read_text())
        results = data.get("models", data)
        speed = speed_table(results)
        return ["## Held-out evaluation (`eval.json`)\n", markdown_table(results, "bits_per_byte"),
                markdown_table(results, "loss")] + (["## Speed and memory\n", speed] if speed else [])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        return [f"## Held-out evaluation\n\n`{path.name}` could not be read as `megadrp eval` output ({err}).\n"]


def summary_markdown(run_dir: Path, log: MetricsLog, plots: dict[str, Path], out_dir: Path,
                     eval_json: Path | None = None) -> str:
    """The summary page: final scalars, per-domain and per-family tables, eval.json's table, plot links."""
    final = log.train[-1] if log.train else {}
    rows = [("final step", final.get("step")), ("tokens seen", log.last("tokens_seen")),
            ("loss", log.last("loss")), ("lm loss", log.last("lm_loss")), ("lagrangian", log.last("lagrangian")),
            ("learning rate", log.last("lr")), ("tokens/s (last)", log.last("tokens_per_s")),
            ("MFU (last)", log.last("mfu")), ("expected params", log.last("expected_params")),
            ("train records", len(log.train)), ("eval records", len(log.eval))]
    lines = [f"# Run report: `{run_dir}`\n", "| quantity | final value |", "|---|---:|"]
    lines += [f"| {name} | {_num(v)} |" for name, v in rows if v is not None]
    if log.bad_lines:
        lines.append(f"\n{log.bad_lines} unreadable line(s) of metrics.jsonl were skipped "
                     "(e.g. a run killed mid-write).")
    lines.append("")
    lines += _domain_table(log) + _sparsity_table(log)
    eval_json = Path(eval_json) if eval_json else run_dir / "eval.json"
    if eval_json.is_file():
        lines += _eval_json_section(eval_json)
    if plots:
        lines.append("## Plots\n")
        for title, path in plots.items():
            rel = Path(path).relative_to(out_dir) if Path(path).is_relative_to(out_dir) else path
            lines.append(f"### {title}\n\n![{title}]({rel})\n")
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dir, out_dir=None, eval_json=None) -> Path:
    """Write the plots and ``summary.md`` into ``out_dir`` (default RUN_DIR/report); returns summary.md's path."""
    from megadrp.eval.run_metrics import write_plots

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "report"
    log = read_metrics(find_metrics(run_dir))
    if not log.train and not log.eval:
        raise ValueError(f"{run_dir / run_format.METRICS_FILE} holds no train or eval record")
    plots = write_plots(log, out_dir)
    summary = out_dir / "summary.md"
    summary.write_text(summary_markdown(run_dir, log, plots, out_dir, eval_json))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="megadrp report", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="run directory holding metrics.jsonl")
    p.add_argument("--output", default=None, help="output folder (default: RUN_DIR/report)")
    p.add_argument("--eval-json", default=None, help="`megadrp eval` results to include (default: RUN_DIR/eval.json)")
    args = p.parse_args(argv)
    try:
        summary = write_report(args.run_dir, args.output, args.eval_json)
    except (FileNotFoundError, ValueError) as err:
        print(f"megadrp report: {err}", file=sys.stderr)
        return 2
    print(f"[report] {summary} and {len(list(summary.parent.glob('*.png')))} plots in {summary.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
