"""Markdown tables of evaluation results: one row per domain (+ average, worst), one column per model; and the
speed table (one row per model, ratios to the source)."""
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
    speed = speed_table(results)
    if speed:
        parts.append("\n## Speed and memory\n")
        parts.append(speed)
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


def _baseline(results: dict[str, dict]) -> str:
    """The label speed ratios are to: ``source`` when there is one, else the first model."""
    return "source" if "source" in results else next(iter(results))


def speed_table(results: dict[str, dict]) -> str:
    """``megadrp eval --speed`` results as one row per model, each number with its ratio to the source; "" when no
    model was measured. Speed ratios > 1 are faster, memory ratios < 1 smaller."""
    results = results.get("models", results)
    measured = {label: r["speed"] for label, r in results.items() if isinstance(r, dict) and r.get("speed")}
    if not measured:
        return ""
    base = measured.get(_baseline(measured)) or next(iter(measured.values()))
    first = next(iter(measured.values()))
    pre, bn = first["prefill"], first["decode"][1]

    def cell(value, ref, pattern):
        if value is None:
            return "—"
        ratio = f" ({value / ref:.2f}x)" if ref else ""
        return pattern.format(value) + ratio

    lines = [f"| model | non-embedding params | prefill tokens/s ({pre['batch']} x {pre['tokens']}) | "
             f"decode tokens/s (batch 1) | ms/token (batch 1) | decode tokens/s (batch {bn['batch']}) | "
             f"peak memory MiB | weights MiB |", "|---|" + "---:|" * 7]
    for label, sp in measured.items():
        ne, ne_ref = results[label].get("non_embedding_params"), results.get(_baseline(measured), {}).get(
            "non_embedding_params")
        cells = [cell(ne / 1e6 if ne else None, ne_ref / 1e6 if ne_ref and ne else None,
                      "{:.1f}M" if (ne or 0) >= 1e5 else "{:.4f}M"),
                 cell(sp["prefill"]["tokens_per_s"], base["prefill"]["tokens_per_s"], "{:.0f}"),
                 cell(sp["decode"][0]["tokens_per_s"], base["decode"][0]["tokens_per_s"], "{:.1f}"),
                 cell(sp["decode"][0]["ms_per_token"], base["decode"][0]["ms_per_token"], "{:.1f}"),
                 cell(sp["decode"][1]["tokens_per_s"], base["decode"][1]["tokens_per_s"], "{:.1f}"),
                 cell(sp.get("peak_memory_mb"), base.get("peak_memory_mb"), "{:.0f}"),
                 cell(sp["weights_mb"], base["weights_mb"], "{:.0f}" if sp["weights_mb"] >= 10 else "{:.2f}")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + machine_line(first) + "\n"


def machine_line(speed: dict) -> str:
    """One sentence naming where and how the speed was measured."""
    m, d1 = speed.get("machine", {}), speed["decode"][0]
    where = f"GPU {m['gpu']}" if m.get("gpu") else f"CPU {m.get('cpu')} ({m.get('cores')} cores, " \
        f"{m.get('torch_threads')} torch threads)"
    return (f"Measured on {where}, {speed.get('dtype')}, torch {m.get('torch')}, transformers "
            f"{m.get('transformers')}, stock `AutoModelForCausalLM` with its KV cache; decode: {d1['prompt_tokens']}-"
            f"token prompt, {d1['new_tokens']} greedy tokens; medians of repeated runs, each model in a fresh process "
            f"(peak memory: {speed.get('peak_memory_kind')}). Ratios are to the "
            "source measured in the same run; a ratio above 1 is faster (speed) or larger (memory, parameters).")
