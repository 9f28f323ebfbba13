"""End-to-end stages shared by `tools/demo.py` and `tools/experiment.py`.

Each stage runs the `megadrp` subcommand a user would run, in its own process (training needs its own
launcher and process group anyway), and is skipped when its output is complete and newer than its input,
so re-running a pipeline costs nothing for finished stages. A failed stage stops the pipeline with the
command to look at; finished stages are kept.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from megadrp import run_format

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StageFailed(RuntimeError):
    pass


def banner(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run(cmd: list[str], env: dict | None = None) -> float:
    """Run one command from the repository root; return its wall time; raise StageFailed on error."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise StageFailed(f"stage failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                          "Fix the error above and run again: finished stages are kept.")
    seconds = time.time() - t0
    print(f"    ({seconds:.0f} s)", flush=True)
    return seconds


def megadrp(*args: str) -> list[str]:
    return [sys.executable, "-m", "megadrp", *args]


def newer(path: str, than: str) -> bool:
    return os.path.exists(path) and (not os.path.exists(than) or os.path.getmtime(path) >= os.path.getmtime(than))


def corpus_domains(corpus: str) -> list[str]:
    """Domain names of a corpus built by tools/build_corpus.py, in the manifest's order."""
    path = os.path.join(corpus, "manifest.json")
    if not os.path.exists(path):
        raise StageFailed(f"{path} is missing: build the corpus first (make corpus)")
    with open(path, encoding="utf-8") as fh:
        manifest = json.load(fh)
    names = manifest.get("domains", manifest)
    return list(names) if isinstance(names, (dict, list)) else []


def default_bin_dir(model: str) -> str:
    """Where the pipelines keep a corpus tokenised with MODEL's tokenizer: .cache/bin/MODEL_NAME (git-ignored)."""
    return os.path.join(".cache", "bin", os.path.basename(os.path.normpath(model)))


def add_common_args(p, run_dir: str, config: str) -> None:
    """The arguments every pipeline script shares (model, corpus, run folder, ranks, evaluation protocol)."""
    p.add_argument("--model", default=".cache/models/smollm2-135m", help="source HF folder")
    p.add_argument("--corpus", default=".cache/corpus", help="a corpus folder of tools/build_corpus.py")
    p.add_argument("--bin-dir", default=None, help="tokenised corpus (default: .cache/bin/MODEL_NAME)")
    p.add_argument("--run-dir", default=run_dir)
    p.add_argument("--config", default=config, help="base run recipe (YAML)")
    p.add_argument("--nproc", type=int, default=2, help="ranks per run (CPU: ZeRO-3 over gloo)")
    p.add_argument("--eval-windows", type=int, default=8, help="held-out windows per domain")
    p.add_argument("--eval-seq-length", type=int, default=256, help="tokens per held-out window")
    p.add_argument("overrides", nargs="*", help="extra dotted config overrides for every run")


def tokenised_corpus(args, title: str) -> tuple[list[str], dict]:
    """Chdir to the repository, then tokenise args.corpus (cached): its domains and {split: prefix}."""
    os.chdir(ROOT)
    domains = corpus_domains(args.corpus)
    banner(title)
    return domains, preprocess_corpus(args.corpus, args.model, args.bin_dir or default_bin_dir(args.model), domains)


def preprocess_corpus(corpus: str, tokenizer: str, bin_dir: str, domains: list[str], workers: int = 2) -> dict:
    """Tokenise CORPUS/{train,heldout}/DOMAIN.jsonl into BIN_DIR/{train,heldout}_DOMAIN.bin/.idx."""
    prefixes = {}
    for split in ("train", "heldout"):
        prefix = os.path.join(bin_dir, split)
        prefixes[split] = prefix
        inputs = [os.path.join(corpus, split, f"{d}.jsonl") for d in domains]
        if all(newer(f"{prefix}_{d}.idx", i) for d, i in zip(domains, inputs)):
            print(f"cached: {prefix}_*.bin/.idx")
            continue
        run(megadrp("preprocess", "--input", *inputs, "--output-prefix", prefix, "--tokenizer", tokenizer,
                    "--append-eod", "--per-domain", "--workers", str(workers), "--no-progress"))
    return prefixes


def train(mode: str, config: str, run_dir: str, max_steps: int, nproc: int, overrides: list[str]) -> None:
    """`megadrp MODE` to max_steps, resuming a killed run; skipped when its final checkpoint exists."""
    newest = run_format.newest_complete(run_dir)
    done = int(newest.name.split("_")[1]) if newest else -1
    if done >= max_steps:
        print(f"cached: {run_dir} finished at step {done}")
        return
    run(megadrp(mode, "--config", config, "--nproc", str(nproc), "--resume", "auto", f"run_dir={run_dir}",
                f"optim.max_steps={max_steps}", *overrides))


def oneshot(config: str, run_dir: str, overrides: list[str]) -> str:
    """`megadrp oneshot` into RUN_DIR/pruned; skipped when that folder is complete and newer than the config."""
    out = os.path.join(run_dir, "pruned")
    if newer(os.path.join(out, "oneshot_scores.json"), config):
        print(f"cached: {out}")
        return out
    run(megadrp("oneshot", "--config", config, f"run_dir={run_dir}", "--overwrite", *overrides),
        env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)})  # one process: every core
    return out


def export(run_dir: str, out_dir: str, dtype: str = "float32") -> str:
    """`megadrp export` of the run's latest checkpoint, unless an export newer than it exists."""
    if newer(os.path.join(out_dir, "config.json"), str(run_format.checkpoints_dir(run_dir) / run_format.LATEST)):
        print(f"cached: {out_dir}")
        return out_dir
    run(megadrp("export", run_dir, "--output", out_dir, "--dtype", dtype, "--no-progress"))
    return out_dir


def copy_folder(src: str, dst: str) -> str:
    """Copy an HF folder (e.g. DReSS's RUN_DIR/pruned) to where the pipeline expects it, atomically."""
    if newer(os.path.join(dst, "config.json"), os.path.join(src, "config.json")):
        return dst
    tmp = dst + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return dst


def evaluate(models: dict[str, str], corpus: str | None, out_json: str, seq_length: int, max_windows: int,
             device: str | None = None, texts: dict[str, str] | None = None) -> dict:
    """`megadrp eval` of labelled HF folders on the held-out split (or on whole text files: ``texts``, label ->
    file); cached while newer than every model. Only the held-out table goes into the export's model card."""
    stamps = [os.path.join(path, "config.json") for path in models.values()]
    if os.path.exists(out_json) and all(newer(out_json, s) for s in stamps):
        print(f"cached: {out_json}")
    else:
        source = ["--corpus", corpus] if corpus else ["--text", *[f"{k}={v}" for k, v in texts.items()]]
        cmd = megadrp("eval", "--model", *[f"{k}={v}" for k, v in models.items()], *source,
                      "--seq-length", str(seq_length), "--max-windows", str(max_windows), "--output", out_json,
                      "--markdown", os.path.splitext(out_json)[0] + ".md")
        if device:
            cmd += ["--device", device]
        if corpus and any(os.path.isfile(os.path.join(path, "megadrp_export.json")) for path in models.values()):
            cmd.append("--update-card")  # the export's model card gets the table (and a warning if far below)
        # One process: let it use every core (make exports OMP_NUM_THREADS=1 for the multi-rank stages).
        run(cmd, env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    with open(out_json, encoding="utf-8") as fh:
        return json.load(fh)
