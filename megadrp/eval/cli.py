"""``megadrp eval``: per-domain held-out loss / perplexity / bits per byte of one or more models, JSON + markdown.

Each ``--model`` (and ``--compare``) is a HF folder or a megadrp checkpoint (exported to a temporary
folder first), optionally labelled ``LABEL=PATH``. With ``--corpus`` all models are scored on the same
windows of its held-out split (or, with ``--text``, of whole text files); ``--tasks``
adds (or, without ``--corpus``, gives) lm-eval-harness results,
from lm-eval's registered tasks and local task folders (``--include-path``). ``--speed`` measures each model's
prefill and decode speed and peak memory in a fresh process (megadrp/eval/speed.py), tabled as ratios to the
model labelled ``source`` (else the first). ``--update-card`` writes the
results into the model card of every evaluated ``megadrp export`` folder (docs/EXPORT.md).
Output JSON: ``{"models": {label: {path, shape, num_params, domains?, average?, worst?, skipped?, protocol?,
corpus?, tasks?}}}`` (``corpus``: the identity of the corpus scored, megadrp.data.corpus_manifest).
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


CHECKPOINT_SAFETY = (
    "Checkpoints: megadrp's own state is JSON + safetensors (no pickle). DeepSpeed's shard files are pickles that "
    "DeepSpeed 0.19.8 can only load with torch.load(weights_only=False); megadrp first loads each one with "
    "weights_only=True and refuses any that holds more than plain data, and checks every file against the "
    "checkpoint's checksum manifest. Still, evaluate checkpoints from runs you trust (docs/TRAINING.md, Failures).")


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig()
    p = argparse.ArgumentParser(prog="megadrp eval", description=__doc__.split("\n")[0], epilog=CHECKPOINT_SAFETY,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, metavar="[LABEL=]DIR",
                   help="HF folder(s) or megadrp checkpoint(s) / run dirs")
    p.add_argument("--compare", nargs="+", default=[], metavar="[LABEL=]DIR", help="more models, one column each")
    p.add_argument("--corpus", default=None, help="corpus folder with heldout/DOMAIN.jsonl (optional with --tasks)")
    p.add_argument("--text", nargs="+", default=[], metavar="[LABEL=]FILE",
                   help="score whole text files instead of a corpus, one row each (e.g. text no domain was "
                        "tuned on); the average and worst are over these files")
    p.add_argument("--domains", nargs="+", default=None, help="domains to score (default: all held-out files)")
    p.add_argument("--seq-length", type=int, default=d.seq_length, help="tokens per window")
    p.add_argument("--max-windows", type=int, default=d.max_windows, help="windows per domain (0: all)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per forward pass")
    p.add_argument("--max-bytes", type=int, default=None, help="read at most this many bytes per held-out file")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--output", default=None, help="JSON results file")
    p.add_argument("--markdown", default=None, help="markdown table file")
    p.add_argument("--tasks", default="", help="comma-separated lm-eval-harness tasks (needs lm-eval and its data)")
    p.add_argument("--include-path", nargs="+", default=[], metavar="DIR",
                   help="folders of lm-eval task YAML files, whose tasks --tasks may name (lm-eval's --include_path)")
    p.add_argument("--tasks-limit", type=int, default=None, help="lm-eval: examples per task (quick checks)")
    p.add_argument("--speed", action="store_true",
                   help="also measure prefill and decode speed (batch 1 and a serving batch) and peak memory of "
                        "each model, each in a fresh process")
    p.add_argument("--update-card", action="store_true",
                   help="write the results into the README.md model card of each evaluated megadrp export folder")
    return p


def evaluate_cli_models(models: dict[str, str], texts, args, tasks: list[str]) -> dict:
    """Load each model once, score the domains, run lm-eval tasks on the same loaded model, free it."""
    from megadrp.eval.domain_eval import evaluate_domains
    from megadrp.eval.lm_eval_adapter import run_tasks
    from megadrp.eval.loading import load_hf, resolve_model_dir
    from megadrp.export.card import MATCH_FIELDS

    out = {}
    for label, path in models.items():
        print(f"[eval] {label}: {path}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="megadrp_eval_") as scratch:
            folder = resolve_model_dir(path, scratch)
            model, tok = load_hf(folder, device=args.device)
            # The shape tells a card which column is the export and which its source (megadrp.export.card).
            res = {"path": str(path), "shape": {f: getattr(model.config, f, None) for f in MATCH_FIELDS},
                   "num_params": sum(p.numel() for p in model.parameters()),
                   "non_embedding_params": _non_embedding(model)}
            if texts is not None:
                res.update(evaluate_domains(model, tok, texts, seq_length=args.seq_length,
                                            max_windows=args.max_windows, batch_size=args.batch_size, progress=True))
            if tasks:
                res["tasks"] = run_tasks(model, tok, tasks, batch_size=args.batch_size, limit=args.tasks_limit,
                                         include_path=args.include_path)
                if "error" in res["tasks"]:
                    print(f"[eval] {label}: {res['tasks']['error']}", file=sys.stderr)
            del model
            if args.speed:
                from megadrp.eval.speed import measure_in_subprocess

                print(f"[eval] {label}: measuring speed and memory in a fresh process", file=sys.stderr)
                res["speed"] = measure_in_subprocess(str(folder), args.device)
        out[label] = res
    return out


def _non_embedding(model) -> int:
    """Parameters outside the token embedding and an untied LM head: what pruning changes."""
    embed = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        embed.add(id(head.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in embed)


def _card_folders(models: dict[str, str]) -> list[Path]:
    """The evaluated models that are megadrp export folders (their card can take the results)."""
    return [Path(p) for p in models.values() if (Path(p) / "megadrp_export.json").is_file()]


def _check_request(args, models: dict[str, str], tasks: list[str]) -> str | None:
    """What is wrong with the command line before any model is loaded (None: nothing)."""
    from megadrp.eval.lm_eval_adapter import MISSING, check_include_path, lm_eval_available, unknown_task_message

    if args.corpus and args.text:
        return "give --corpus or --text, not both: their rows would share one average; run eval once for each"
    if args.corpus is None and not args.text and not tasks and not args.speed:
        return ("give --corpus (held-out per-domain scores), --text (files), --tasks (lm-eval tasks) and/or "
                "--speed")
    if args.corpus is None and not args.text and tasks and not lm_eval_available():
        return MISSING.split(";")[0] + "; without --corpus there is nothing else to evaluate"
    if args.update_card and not _card_folders(models):
        return ("--update-card: none of the models is a `megadrp export` folder (with megadrp_export.json); "
                "export the checkpoint first and evaluate the folder")
    for given, kind in ((args.output, "results"), (args.markdown, "markdown")):
        problem = _output_problem(Path(given), kind) if given else None
        if problem:
            return problem
    check_include_path(args.include_path)
    return unknown_task_message(tasks, args.include_path)


def _output_problem(out: Path, kind: str) -> str | None:
    """--output / --markdown may replace only an earlier file of `megadrp eval` (results: a JSON object with
    "models"; markdown: its report's first line), never another file (a model's weights or card, the user's)."""
    flag, example = ("--output", "eval.json") if kind == "results" else ("--markdown", "eval.md")
    if not out.exists():
        return None
    if out.is_dir():
        return f"{flag} {out} is a folder; give a file name, e.g. {out / example}"
    try:
        with open(out, "rb") as fh:
            head = fh.read(1 << 20).decode("utf-8")
        if kind == "results":
            ours = isinstance(json.loads(head).get("models"), dict)
        else:
            ours = head.split("\n", 1)[0] in ("# Held-out evaluation", "# Evaluation")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        ours = False
    if not ours:
        return (f"{flag} {out} exists and is not a {kind} file of megadrp eval: refusing to replace it. Give a new "
                f"file name (an earlier {example} of megadrp eval is replaced)")
    return None


def _text_files(specs: list[str]) -> dict[str, list[str]] | None:
    """``--text``: each file one document of its own row, labelled by LABEL or the file's name."""
    if not specs:
        return None
    out = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or Path(spec).exists():
            label, path = Path(spec).name, spec
        if not Path(path).is_file():
            raise FileNotFoundError(f"--text {spec}: no such file")
        out[label] = [Path(path).read_text(encoding="utf-8", errors="replace")]
    return out


def main(argv: list[str] | None = None) -> int:
    from megadrp.data.corpus_manifest import corpus_identity
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
        problem = _check_request(args, models, tasks)
        if problem:
            print(f"megadrp eval: {problem}", file=sys.stderr)
            return 2
        texts = load_heldout(args.corpus, args.domains, args.max_bytes) if args.corpus else _text_files(args.text)
        results = evaluate_cli_models(models, texts, args, tasks)
        if args.corpus:  # every result names the corpus it was measured on (megadrp.data.corpus_manifest)
            identity = corpus_identity(args.corpus)
            for res in results.values():
                if "domains" in res:
                    res["corpus"] = identity
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
    if args.update_card:
        from megadrp.export.card import update_card_evaluation

        for folder in _card_folders(models):
            print(f"[eval] model card updated: {update_card_evaluation(folder, {'models': results})}", file=sys.stderr)
    print(markdown)
    if texts is None and not args.speed and all("error" in r for r in task_results.values()):
        return 2  # tasks were all there was to evaluate, and none ran
    return 0


if __name__ == "__main__":
    sys.exit(main())
