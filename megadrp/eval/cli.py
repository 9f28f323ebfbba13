"""``megadrp eval``: per-domain held-out loss / perplexity / bits per byte of one or more models, JSON + markdown.

Each ``--model`` (and ``--compare``) is a HF folder or a megadrp checkpoint (exported to a temporary
folder first), optionally labelled ``LABEL=PATH``. All models are scored on the same windows of the
held-out split; ``--tasks`` adds lm-eval-harness results when lm-eval and its data are available.
Output JSON: ``{"models": {label: {path, domains, average, worst, skipped, protocol, tasks?}}}``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from megadrp.config.schema import EvalConfig


def _labelled(specs: list[str]) -> dict[str, str]:
    """``LABEL=PATH`` or ``PATH`` (labelled by its folder name, or the whole path when names clash)."""
    pairs = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        pairs.append((label, path) if sep and not Path(spec).exists() else (None, spec))
    names = [Path(p).name for label, p in pairs if label is None]
    out = {}
    for label, path in pairs:
        if label is None:
            label = Path(path).name if names.count(Path(path).name) == 1 else path
        if label in out:
            raise SystemExit(f"megadrp eval: two models share the label {label!r}; name them LABEL=PATH")
        out[label] = path
    return out


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig()
    p = argparse.ArgumentParser(prog="megadrp eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, metavar="[LABEL=]DIR",
                   help="HF folder(s) or megadrp checkpoint(s) / run dirs")
    p.add_argument("--compare", nargs="+", default=[], metavar="[LABEL=]DIR", help="more models, one column each")
    p.add_argument("--corpus", required=True, help="corpus folder with heldout/DOMAIN.jsonl")
    p.add_argument("--domains", nargs="+", default=None, help="domains to score (default: all held-out files)")
    p.add_argument("--seq-length", type=int, default=d.seq_length, help="tokens per window")
    p.add_argument("--max-windows", type=int, default=d.max_windows, help="windows per domain (0: all)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per forward pass")
    p.add_argument("--max-bytes", type=int, default=None, help="read at most this many bytes per held-out file")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--output", default=None, help="JSON results file")
    p.add_argument("--markdown", default=None, help="markdown table file")
    p.add_argument("--tasks", default="", help="comma-separated lm-eval-harness tasks (needs lm-eval and its data)")
    p.add_argument("--tasks-limit", type=int, default=None, help="lm-eval: examples per task (quick checks)")
    return p


def evaluate_cli_models(models: dict[str, str], texts, args, tasks: list[str]) -> dict:
    """Load each model once, score the domains, run lm-eval tasks on the same loaded model, free it."""
    from megadrp.eval.domain_eval import evaluate_domains
    from megadrp.eval.lm_eval_adapter import run_tasks
    from megadrp.eval.loading import load_hf, resolve_model_dir

    out = {}
    for label, path in models.items():
        print(f"[eval] {label}: {path}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="megadrp_eval_") as scratch:
            model, tok = load_hf(resolve_model_dir(path, scratch), device=args.device)
            res = evaluate_domains(model, tok, texts, seq_length=args.seq_length, max_windows=args.max_windows,
                                   batch_size=args.batch_size, progress=True)
            res = {"path": str(path), **res}
            if tasks:
                res["tasks"] = run_tasks(model, tok, tasks, batch_size=args.batch_size, limit=args.tasks_limit)
                if "error" in res["tasks"]:
                    print(f"[eval] {label}: {res['tasks']['error']}", file=sys.stderr)
            del model
        out[label] = res
    return out


def main(argv: list[str] | None = None) -> int:
    from megadrp.eval.windows import load_heldout
    from megadrp.eval_results import markdown_report

    args = build_parser().parse_args(argv)
    for name in ("seq_length", "batch_size"):
        if getattr(args, name) < (2 if name == "seq_length" else 1):
            print(f"megadrp eval: --{name.replace('_', '-')} is too small ({getattr(args, name)})", file=sys.stderr)
            return 2
    models = _labelled(args.model + args.compare)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        texts = load_heldout(args.corpus, args.domains, args.max_bytes)
        results = evaluate_cli_models(models, texts, args, tasks)
    except (FileNotFoundError, RuntimeError, ValueError, TypeError) as err:
        print(f"megadrp eval: {err}", file=sys.stderr)
        return 2
    task_results = {label: r["tasks"] for label, r in results.items() if "tasks" in r}
    markdown = markdown_report(results, task_results or None)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"models": results}, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
