"""The method comparison's tables and reading (tools/experiment.py): seeds aggregated, noise named as noise.

Per method, over its seeds: the mean held-out bits per byte of every domain, the average and the worst
domain, each with the seed range (max - min); the gap of each domain to the source; the same for the cut
models before recovery; and, when the run scored them, the final models on domains no run trained on. The
reading compares every pair of methods on the average and on the worst domain
and calls a difference real only when it exceeds both methods' seed ranges (with two seeds the range is the
only spread there is; "no difference" is the honest answer below it).
"""
from __future__ import annotations

import json
import os
from statistics import mean

METRICS = ("average", "worst")


def target_overrides(target: dict) -> list[str]:
    """The override that replaces the recipe's whole ``pruning.target`` (fields not named: the source's)."""
    return ["pruning.target={" + ", ".join(f"{k}: {v}" for k, v in target.items()) + "}"]


def _records(run_base: str) -> list[dict]:
    out = []
    for phase in ("prune", "cpt"):
        path = os.path.join(run_base, phase, "metrics.jsonl")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                out += [dict(r, phase=phase) for r in map(json.loads, fh) if r.get("kind") == "train"]
    return out


def weights_over_time(run_base: str) -> list[dict]:
    """``[{phase, step, weights}]`` of a method's runs, at each change of the domain weights."""
    out, last = [], None
    for r in _records(run_base):
        w = r.get("domain_weights")
        if w and w != last:
            out.append({"phase": r["phase"], "step": r["step"], "weights": w})
            last = w
    return out


def tokens_seen(run_base: str) -> dict:
    """Training tokens of each phase (the last record's ``tokens_seen``)."""
    out: dict = {}
    for r in _records(run_base):
        out[r["phase"]] = r.get("tokens_seen", 0)
    return out


def weight_motion(history: list[dict]) -> dict:
    """How a run's domain weights moved in each phase (``weights_over_time``): ``{phase: {updates, step,
    straightness}}``. ``step``: the mean over domains of |change of log w| per update; ``straightness``: per
    domain |net change of log w| / the path's length, averaged (1: each weight moves steadily one way, as when it
    follows the model's losses; near 0: back and forth around a level, as when it follows the batches' noise)."""
    import math

    out = {}
    for phase in dict.fromkeys(h["phase"] for h in history):
        ws = [h["weights"] for h in history if h["phase"] == phase]
        if len(ws) < 3:
            continue
        names = list(ws[0])
        logs = [[math.log(max(w[d], 1e-12)) for d in names] for w in ws]
        moves = [[abs(b - a) for a, b in zip(x, y)] for x, y in zip(logs, logs[1:])]
        paths = [sum(m[i] for m in moves) for i in range(len(names))]
        nets = [abs(logs[-1][i] - logs[0][i]) for i in range(len(names))]
        out[phase] = {"updates": len(ws) - 1, "step": mean(mean(m) for m in moves),
                      "straightness": mean(n / p if p > 0 else 1.0 for n, p in zip(nets, paths))}
    return out


def motion_table(runs: dict) -> str:
    """Per method and phase, over seeds: the weights' mean log-change per update and their straightness."""
    rows = ["| method | phase | updates | mean abs. log-change per update | straightness (1: a trend, 0: noise) |",
            "|---|---|---|---|---|"]
    for method, seeds in runs.items():
        per_phase: dict = {}
        for r in seeds.values():
            for phase, m in weight_motion(r.get("weights") or []).items():
                per_phase.setdefault(phase, []).append(m)
        for phase, ms in per_phase.items():
            rows.append(f"| {method} | {phase} | {ms[0]['updates']} | {mean(m['step'] for m in ms):.3f} | "
                        f"{mean(m['straightness'] for m in ms):.2f} |")
    return "\n".join(rows) if len(rows) > 2 else ""


def _value(res: dict, metric: str, domain: str | None = None) -> float:
    if domain is not None:
        return float(res["domains"][domain]["bits_per_byte"])
    return float(res[metric]["bits_per_byte"])


def summarize(runs: dict, domains: list[str], which: str) -> dict:
    """``{method: {domain|average|worst: {mean, range, values}}}`` over seeds, for ``which`` in cut/final."""
    out = {}
    for method, seeds in runs.items():
        rows = {}
        for key in (*domains, *METRICS):
            vals = [_value(r[which], key, key if key in domains else None) for r in seeds.values()]
            rows[key] = {"mean": mean(vals), "range": max(vals) - min(vals), "values": vals, "seeds": list(seeds)}
        rows["worst_domains"] = [r[which]["worst"]["domain"] for r in seeds.values()]
        out[method] = rows
    return out


def compare(summary: dict, a: str, b: str, metric: str) -> tuple[int, str]:
    """(-1 if A is better, 1 if B is, 0 if the difference is within the larger seed range; the verdict).

    The verdict is the unpaired rule (the mean difference against the larger seed range). When both methods
    ran the same seeds (the same data order and calibration draws), the per-seed differences are added as
    evidence, not as the verdict: a method lower on every seed by less than the range is still "no difference".
    """
    ma, mb = summary[a][metric], summary[b][metric]
    diff = ma["mean"] - mb["mean"]
    if min(len(ma["values"]), len(mb["values"])) < 2:  # one seed has no range: any difference would "count"
        return 0, f"{a} vs {b}: {diff:+.3f} bits/byte on one seed, no seed range to judge it by: no verdict"
    noise = max(ma["range"], mb["range"])
    paired = ""
    if ma["seeds"] == mb["seeds"] and len(ma["values"]) >= 2:
        d = [x - y for x, y in zip(ma["values"], mb["values"])]
        paired = (f"; per seed {a} - {b}: {', '.join(f'{x:+.3f}' for x in d)} ({sum(x < 0 for x in d)}/{len(d)} "
                  f"lower)")
    if abs(diff) <= noise:
        return 0, f"{a} vs {b}: no difference ({diff:+.3f} bits/byte, within the seed range {noise:.3f}{paired})"
    better, worse = (a, b) if diff < 0 else (b, a)
    verdict = f"{better} better than {worse} by {abs(diff):.3f} bits/byte (seed range {noise:.3f}{paired})"
    return (-1 if diff < 0 else 1), verdict


def reading(summary: dict) -> list[str]:
    """One line per pair of methods and metric: which is better, or no difference within the seed range."""
    methods = list(summary)
    return [f"- {metric}: {compare(summary, a, b, metric)[1]}"
            for metric in METRICS for i, a in enumerate(methods) for b in methods[i + 1:]]


# (claim, the summary it is read from, metric, the method the paper says wins, the one it says loses)
CLAIMS = (
    ("DRPruning: a better worst domain than Sheared-LLaMA's rule", "final", "worst", "drpruning", "sheared"),
    ("DRPruning: a better worst domain than uniform mixing", "final", "worst", "drpruning", "uniform"),
    ("DRPruning: a better average than Sheared-LLaMA's rule", "final", "average", "drpruning", "sheared"),
    ("DRPruning: a better average than uniform mixing", "final", "average", "drpruning", "uniform"),
    ("DRPruning: more robust on domains no run trained on than Sheared-LLaMA's rule (average)", "unseen", "average",
     "drpruning", "sheared"),
    ("DRPruning: more robust on domains no run trained on than uniform mixing (average)", "unseen", "average",
     "drpruning", "uniform"),
    ("DRPruning: a better worst unseen domain than uniform mixing", "unseen", "worst", "drpruning", "uniform"),
    ("DRPruning's DRO in recovery, same one-shot cut: a better worst domain than uniform mixing", "final", "worst",
     "oneshot", "oneshot_uniform"),
    ("DRPruning's DRO in recovery, same one-shot cut: a better worst domain than Sheared-LLaMA's rule", "final",
     "worst", "oneshot", "oneshot_sheared"),
    ("DRPruning's DRO in recovery, same one-shot cut: a better average than uniform mixing", "final", "average",
     "oneshot", "oneshot_uniform"),
    ("DRPruning's DRO in recovery, same one-shot cut: more robust on unseen domains than uniform mixing (average)",
     "unseen", "average", "oneshot", "oneshot_uniform"),
    ("DRPruning's DRO in recovery, same one-shot cut: more robust on unseen domains than Sheared-LLaMA's rule "
     "(average)", "unseen", "average", "oneshot", "oneshot_sheared"),
    ("DReSS: regularise-then-cut beats the direct cut (before recovery)", "cut", "average", "dress", "oneshot"),
    ("DReSS: regularise-then-cut beats the direct cut (after the same recovery)", "final", "average", "dress",
     "oneshot"),
)


def claims(summaries: dict) -> list[str]:
    """The papers' claims that this run's methods can test, each read as supported, no difference or contrary."""
    lines = []
    for text, which, metric, winner, loser in CLAIMS:
        summary = summaries.get(which, {})
        if winner not in summary or loser not in summary:
            continue
        sign, verdict = compare(summary, winner, loser, metric)
        word = {-1: "supported", 0: "not shown", 1: "contrary"}[sign]
        lines.append(f"- {text}: **{word}** ({verdict})")
    return lines


def table(summary: dict, domains: list[str], source: dict | None = None) -> str:
    """Markdown: mean ± half the seed range per domain, the average and the worst domain."""
    head = "| model | " + " | ".join(domains) + " | average | worst |"
    rows = [head, "|" + "---|" * (len(domains) + 3)]
    if source is not None:
        cells = [f"{_value(source, '', d):.3f}" for d in domains]
        rows.append("| source (unpruned) | " + " | ".join(cells) + f" | {_value(source, 'average'):.3f} | "
                    f"{_value(source, 'worst'):.3f} ({source['worst']['domain']}) |")
    for method, r in summary.items():
        cells = [f"{r[k]['mean']:.3f} ± {r[k]['range'] / 2:.3f}" for k in (*domains, *METRICS)]
        worst = "/".join(sorted(set(r["worst_domains"])))
        rows.append(f"| {method} | " + " | ".join(cells[:-1]) + f" | {cells[-1]} ({worst}) |")
    return "\n".join(rows)


def gap_table(summary: dict, domains: list[str], source: dict) -> str:
    """Markdown: each domain's mean bits per byte minus the source's (how far each domain is left behind)."""
    rows = ["| model | " + " | ".join(domains) + " | largest gap |", "|" + "---|" * (len(domains) + 2)]
    for method, r in summary.items():
        gaps = {d: r[d]["mean"] - _value(source, "", d) for d in domains}
        top = max(gaps, key=gaps.get)
        rows.append(f"| {method} | " + " | ".join(f"{g:+.3f}" for g in gaps.values()) +
                    f" | {gaps[top]:+.3f} ({top}) |")
    return "\n".join(rows)


def write_results(run_dir: str, source: dict, runs: dict, domains: list[str], setup: str,
                  unseen: tuple[dict, list[str]] | None = None, status: str | None = None,
                  timing: dict | None = None) -> str:
    """RUN_DIR/results.md (tables and reading) and results.json (every number); returns the markdown.

    ``unseen``: (the source's result, the domains) of the corpus no run trained on, whose per-run results are
    ``runs[method][seed]["unseen"]``. ``status``: a first line saying the run is partial, and why. ``timing``:
    the plan's estimate beside what the runs took (tools/experiment.py --parallel), a section of its own."""
    final, cut = summarize(runs, domains, "final"), summarize(runs, domains, "cut")
    tokens = {m: {s: r["tokens"] for s, r in seeds.items()} for m, seeds in runs.items()}
    sections = [
        *([status] if status else []),
        "Held-out bits per byte (lower is better), mean over seeds ± half the seed range.",
        "## After recovery\n\n" + table(final, domains, source),
        "## Gap to the source after recovery\n\n" + gap_table(final, domains, source),
        "## The cut models before recovery\n\n" + table(cut, domains, source),
    ]
    summary = {"final": final, "cut": cut}
    if unseen:
        unseen_source, unseen_domains = unseen
        summary["unseen"] = summarize(runs, unseen_domains, "unseen")
        sections += [
            "## Domains no run trained on (final models)\n\n" + table(summary["unseen"], unseen_domains, unseen_source),
            "## Gap to the source on domains no run trained on\n\n" +
            gap_table(summary["unseen"], unseen_domains, unseen_source)]
    tested = claims(summary)
    if tested:
        sections.append("## The papers' claims (a difference within the seed range is not shown)\n\n" +
                        "\n".join(tested))
    sections += ["## Reading (after recovery)\n\n" + "\n".join(reading(final)),
                 "## Reading (before recovery)\n\n" + "\n".join(reading(cut))]
    if unseen:
        sections.append("## Reading (domains no run trained on)\n\n" + "\n".join(reading(summary["unseen"])))
    motion = motion_table(runs)
    if motion:
        sections.append("## Domain weights: following the model or the sampling\n\n" + motion)
    seconds = {m: {s: r["seconds"] for s, r in seeds.items() if "seconds" in r} for m, seeds in runs.items()}
    sections.append("## Training tokens per run\n\n" + "\n".join(f"- {m}: {t}" for m, t in tokens.items()))
    if any(seconds.values()):
        sections.append("## Wall seconds per run (training and export; 0 when cached)\n\n" +
                        "\n".join(f"- {m}: {t}" for m, t in seconds.items() if t))
    if timing:
        sections.append("## Timing: estimated before the start, measured\n\n" + "\n".join(
            f"- {k}: {v}" for k, v in timing.items()))
    sections.append(setup)
    md = "\n\n".join(sections) + "\n"
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "results.md"), "w", encoding="utf-8") as fh:
        fh.write(md)
    with open(os.path.join(run_dir, "results.json"), "w", encoding="utf-8") as fh:
        json.dump({"setup": setup, "status": status or "complete", "source": source,
                   "unseen_source": unseen[0] if unseen else None,
                   "summary": summary, "runs": runs, "timing": timing}, fh, indent=1)
    return md
