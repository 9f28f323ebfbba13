"""The ``megadrp`` command: one subcommand per job, each implemented in its own module.

Subcommands are looked up lazily so that ``megadrp --help`` is instant and a missing optional
dependency of one job (lm-eval, matplotlib) never breaks the others. Each target is a
``main(argv) -> int`` function.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, function, one-line help)
COMMANDS = {
    "run": ("megadrp.recipe.runner", "main",
            "A recipe end to end: cut, recover, export, evaluate, report, upload; each stage resumable and cached."),
    "prune": ("megadrp.train", "main_prune", "Prune a model with learned masks + domain reweighting (DRPruning)."),
    "cpt": ("megadrp.train", "main_cpt", "Continued pretraining of an exported (dense) model with domain reweighting."),
    "dress": ("megadrp.train", "main_dress", "DReSS: select units, regularise them away, prune, finetune."),
    "oneshot": ("megadrp.methods.oneshot", "main",
                "One-shot pruning (Minitron-style activation importance), no training: a dense HF folder."),
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
        print(f"{name} = {default}\n    {help_text}")
    return 0


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
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv[:1] or ["--help"])  # prints help, or exits 2 naming the bad command
        return 0
    from megadrp.config import ConfigError
    try:
        return _run(argv[0], argv[1:])
    except ConfigError as err:
        print(f"megadrp {argv[0]}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
