"""Markdown tables of evaluation results: one row per domain (+ average, worst), one column per model."""
from __future__ import annotations

import json

from megadrp.data.corpus_manifest import identity_line

METRICS = {"bits_per_byte": ("bits/byte", "{:.4f}"), "loss": ("loss (nats/token)", "{:.4f}"),
           "perplexity": ("perplexity", "{:.2f}")}


def _fmt(value, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def markdown_table(results: dict[str, dict], metric: str = "bits_per_byte") -> str:
    """One table of ``metric`` for ``{label: evaluate_domains result}``; a single result, or a whole
    ``megadrp eval`` JSON (``{"models": {...}}``), may be passed too."""
    results = results.get("models", results)
    if "domains" in results:
        results = {"model": results}
    title, pattern = METRICS[metric]
    labels = list(results)
    domains: list[str] = []
    for res in results.values():
        domains += [d for d in res["domains"] if d not in domains]
    lines = [f"| domain ({title}) | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for d in domains:
        cells = [_fmt(res["domains"].get(d, {}).get(metric), pattern) for res in results.values()]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines.append("| **average** | " + " | ".join(_fmt(r["average"].get(metric), pattern)
                                                  for r in results.values()) + " |")
    lines.append("| **worst** | " + " | ".join(f"{_fmt(r['worst'].get(metric), pattern)} ({r['worst'].get('domain')})"
                                                for r in results.values()) + " |")
    return "\n".join(lines) + "\n"


def protocol_line(results: dict[str, dict]) -> str:
    """The held-out protocol of ``{label: result}`` in one sentence (docs/EVALUATION.md)."""
    p = next(iter(results.values()), {}).get("protocol", {})
    line = (f"Protocol (docs/EVALUATION.md): windows of {p.get('seq_length')} tokens, at most "
            f"{p.get('max_windows') or 'all'} per domain, documents joined by EOS; bits per byte over the exact "
            "UTF-8 bytes of the predicted tokens.")
    corpora = {json.dumps(r["corpus"], sort_keys=True) for r in results.values() if r.get("corpus")}
    if len(corpora) > 1:  # columns measured on different corpora: the table would compare them silently
        line += (" **WARNING: these columns were measured on different corpora "
                 f"({', '.join(sorted(str(r.get('corpus')) for r in results.values()))}); they are not comparable.**")
    elif corpora:
        line += " " + identity_line(json.loads(corpora.pop()))
    return line + "\n"


def markdown_report(results: dict[str, dict], tasks: dict | None = None) -> str:
    """Tables of bits per byte, loss and perplexity, the protocol, skipped domains and lm-eval results.

    Models evaluated on lm-eval tasks only (``megadrp eval`` without ``--corpus``) have no held-out tables."""
    if "domains" in results:
        results = {"model": results}
    held = {label: res for label, res in results.items() if "domains" in res}
    parts = ["# Held-out evaluation\n", protocol_line(held)] if held else ["# Evaluation\n"]
    for metric in METRICS if held else ():
        parts.append(markdown_table(held, metric))
    for label, res in held.items():
        for d, reason in res.get("skipped", {}).items():
            parts.append(f"- {label}: domain `{d}` skipped: {reason}")
    if tasks:
        parts.append("\n## lm-eval-harness\n")
        parts.append(tasks_table(tasks))
    return "\n".join(parts).rstrip() + "\n"


def tasks_table(tasks: dict[str, dict]) -> str:
    """``{label: {"results": {task: {metric: value}}} | {"error": msg}}`` as a markdown table or messages."""
    lines = []
    for label, res in tasks.items():
        if "error" in res:
            lines.append(f"- {label}: {res['error']}")
            continue
        lines.append(f"| {label}: task | metric | value |\n|---|---|---:|")
        for task, metrics in res.get("results", {}).items():
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and not name.startswith("alias"):
                    lines.append(f"| {task} | {name} | {value:.4f} |")
    return "\n".join(lines) + "\n"
