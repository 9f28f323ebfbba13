"""``megadrp export CKPT_OR_RUN_DIR --output DIR``: a checkpoint to a dense Hugging Face folder (and the Hub).

``megadrp export HF_FOLDER --gguf f16 q8_0`` writes GGUF files of an existing (exported) folder into it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megadrp.config.schema import ExportConfig

_DEFAULTS = ExportConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megadrp export", description=__doc__.split("\n")[0].split(":", 1)[1].strip())
    p.add_argument("checkpoint", help="RUN_DIR (uses checkpoints/latest) or a RUN_DIR/checkpoints/step_N folder; "
                                      "with --gguf and no --output, a Hugging Face folder to convert")
    p.add_argument("--output", "-o", default=None,
                   help="folder to write (a previous export is replaced; other non-empty folders are refused)")
    p.add_argument("--dtype", default=_DEFAULTS.dtype, choices=("float32", "bfloat16", "float16"),
                   help="dtype of the exported weights")
    p.add_argument("--max-shard-size", default=_DEFAULTS.max_shard_size, help="largest safetensors shard, e.g. 5GB")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=_DEFAULTS.push_to_hub or None,
                   help="upload the folder to this Hub repo (token from the HF_TOKEN environment variable)")
    p.add_argument("--private", action="store_true", default=_DEFAULTS.private, help="create the Hub repo as private")
    p.add_argument("--eval-json", help="evaluation results for the model card (default: RUN_DIR/eval.json if present)")
    p.add_argument("--gguf", nargs="+", default=[], choices=("f16", "q8_0"),
                   help="also write the export as GGUF (llama.cpp) files of these types into the output folder, "
                        "each read back by transformers' GGUF loader and checked against the export's logits")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from megadrp.config.schema import ConfigError
    from megadrp.export.api import export_checkpoint
    from megadrp.export.surgery import ExportError

    try:  # the same checks as the config's export section, before any heavy work
        ExportConfig(dtype=args.dtype, max_shard_size=args.max_shard_size, push_to_hub=args.push_to_hub or "",
                     private=args.private).check()
    except ConfigError as err:
        print(f"megadrp export: {err}", file=sys.stderr)
        return 2
    if args.push_to_hub:  # before the export: an upload without a token fails only after minutes of work
        from megadrp.export.hub import find_token

        if find_token() is None:
            print(f"megadrp export: --push-to-hub {args.push_to_hub} needs a Hugging Face token with write access, "
                  f"and there is none: set HF_TOKEN (or run `hf auth login`), then run this again. Nothing was "
                  f"exported", file=sys.stderr)
            return 2
    if args.output is None and not args.gguf:
        print("megadrp export: give --output DIR (the folder to write), or --gguf TYPES to convert the Hugging Face "
              "folder given", file=sys.stderr)
        return 2
    if args.output is None:
        out = Path(args.checkpoint)
        if not (out / "config.json").is_file():
            print(f"megadrp export: {out} has no config.json: --gguf without --output converts a Hugging Face folder "
                  "(e.g. an earlier export); to export a checkpoint, give --output", file=sys.stderr)
            return 2
    else:
        try:
            out = export_checkpoint(args.checkpoint, args.output, dtype=args.dtype,
                                    max_shard_size=args.max_shard_size, eval_json=args.eval_json,
                                    progress=not args.no_progress)
        except ExportError as err:
            print(f"megadrp export: {err}", file=sys.stderr)
            return 2
        print(f"exported to {out}")
    for quant in args.gguf:
        from megadrp.export.gguf_writer import verify, write_gguf

        try:
            path = write_gguf(out, quant)
            check = verify(out, path, quant)
        except ValueError as err:
            print(f"megadrp export: --gguf {quant}: {err}", file=sys.stderr)
            return 2
        print(f"GGUF {quant}: {path} (read back by transformers: largest logit difference "
              f"{check['max_abs_logit_diff']:.4f}, allowed {check['tolerance']:.4f}; greedy tokens agree at "
              f"{check['greedy_agreement']:.0%} of {check['tokens']} positions)")
    if args.push_to_hub:
        from megadrp.export.hub import push_folder

        try:
            url = push_folder(out, args.push_to_hub, private=args.private)
        except Exception as err:  # the export itself is done: say so, and how to retry only the upload
            print(f"megadrp export: upload to {args.push_to_hub} failed ({type(err).__name__}: {err}); the folder "
                  f"{out} is complete, upload it later with `hf upload {args.push_to_hub} {out}`", file=sys.stderr)
            return 1
        print(f"uploaded to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
