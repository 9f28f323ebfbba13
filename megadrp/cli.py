"""The ``megadrp`` command: one subcommand per method and per job, each implemented in its own module.

The methods' subcommands (prune, cpt, dress, oneshot, ...) come from the method registry, megadrp.methods: a
training method runs through megadrp/train.py, a method that does not train through its spec's ``main``. The
other jobs are looked up lazily in :data:`COMMANDS`, so that a job never imports what it does not need (the
registry imports torch; ``megadrp export --help`` does not) and a missing optional dependency of one job
(lm-eval, matplotlib) never breaks the others. Each target is a ``main(argv) -> int`` function.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# the jobs that are not methods: name -> (module, function, one-line help)
COMMANDS = {
    "run": ("megadrp.recipe.runner", "main",
            "A recipe end to end: cut, recover, export, evaluate, report, upload; each stage resumable and cached."),
    "export": ("megadrp.export.cli", "main", "Export a prune/cpt checkpoint to a smaller dense Hugging Face folder."),
    "eval": ("megadrp.eval.cli", "main",
             "Per-domain loss, perplexity and bits per byte of a model folder or checkpoint."),
    "preprocess": ("megadrp.data.preprocess", "main",
                   "Tokenise text/JSONL/parquet/HF datasets into Megatron .bin/.idx."),
    "plan": ("megadrp.plan.report", "main",
             "Memory plan of a recipe on N GPUs: parameters, per-GPU memory, whether it fits, time."),
    "report": ("megadrp.eval.report", "main", "Plots and a markdown summary from a run's metrics file."),
    "config": ("megadrp.cli", "config_main", "List every config field with its default and documentation."),
}


def config_main(argv: list[str]) -> int:
    """Print the config reference (``megadrp config``) or a resolved config (``--config X [overrides]``)."""
    import yaml

    from megadrp.config import describe, load_config, to_dict

    parser = argparse.ArgumentParser(prog="megadrp config", description=config_main.__doc__)
    parser.add_argument("--config", help="YAML recipe to resolve and print")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    if args.config or args.overrides:
        print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
        return 0
    for name, default, help_text in describe():
        if name == "mode":  # its choices are the method registry's
            help_text += f" Registered: {', '.join(_methods())}."
        print(f"{name} = {default}\n    {help_text}")
    return 0


def _methods() -> dict:
    from megadrp.methods import METHODS

    return METHODS


def _run_method(spec, argv: list[str]) -> int:
    if spec.trains:
        from megadrp.train import main_method

        return int(main_method(spec.name, argv) or 0)
    return int(spec.main(argv) or 0)


def _run(name: str, argv: list[str]) -> int:
    module_name, func_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        func = getattr(module, func_name)
    except (ModuleNotFoundError, AttributeError) as err:
        missing = getattr(err, "name", "") or ""
        if isinstance(err, ModuleNotFoundError) and not missing.startswith("megadrp"):
            raise
        print(f"megadrp {name}: not yet implemented in this version ({module_name}.{func_name} is missing)",
              file=sys.stderr)
        return 2
    return int(func(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="megadrp",
        description="Structured pruning of LLMs on DeepSpeed ZeRO-3 (DRPruning, DReSS). "
                    "Run 'megadrp SUBCOMMAND --help' for a subcommand's options.")
    methods = {} if argv and argv[0] in COMMANDS else _methods()
    if not argv or argv[0] in ("-h", "--help") or (argv[0] not in COMMANDS and argv[0] not in methods):
        sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
        for spec in methods.values():
            sub.add_parser(spec.name, help=spec.summary, add_help=False)
        for name, (_, _, help_text) in COMMANDS.items():
            sub.add_parser(name, help=help_text, add_help=False)
        parser.parse_args(argv[:1] or ["--help"])  # prints help, or exits 2 naming the bad command
        return 0
    from megadrp.config import ConfigError
    try:
        if argv[0] in methods:
            return _run_method(methods[argv[0]], argv[1:])
        return _run(argv[0], argv[1:])
    except ConfigError as err:
        print(f"megadrp {argv[0]}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
