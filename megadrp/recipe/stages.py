"""The cached stages of a recipe: `megadrp run` (megadrp/recipe/runner.py) and the comparison scripts in tools/.

Each stage runs the `megadrp` subcommand a user would run, in its own process (training needs its own
launcher and process group anyway), and is skipped when its output is complete and newer than its input,
so re-running a pipeline costs nothing for finished stages. A failed stage stops the pipeline with the
command to look at; finished stages are kept. A finished training or one-shot stage is reused only for the
recipe that made it (recorded beside it in OUTPUT.stage.json: the resolved config for `megadrp run`, the config
file's content and the overrides for the scripts): asked for with another recipe, the pipeline stops and names
both, rather than reuse or overwrite the work.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from megadrp import run_format
from megadrp.data.corpus_manifest import read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StageFailed(RuntimeError):
    pass


# Set by `run_in_process()`: `megadrp` commands then run in this process (their imports, CUDA context and
# start-up paid once for every stage of a run; tools/experiment.py's parallel workers), the others still spawn.
_IN_PROCESS = False
STAGE_SECONDS: dict[str, float] = {}  # seconds of each `megadrp` subcommand run (summed), for the timing report


def run_in_process(on: bool = True) -> None:
    global _IN_PROCESS
    _IN_PROCESS = on


def _in_process(cmd: list[str]) -> bool:
    """A `megadrp` command that can run here: anything but training on more than one rank (its launcher)."""
    if not _IN_PROCESS or cmd[:3] != megadrp()[:3]:
        return False
    return "--nproc" not in cmd or cmd[cmd.index("--nproc") + 1] == "1"


def _call_here(args: list[str]) -> int:
    """`megadrp ARGS` in this process; the models are freed between stages, the process group is kept."""
    import gc

    from megadrp import cli, train

    train.KEEP_PROCESS_GROUP = True
    try:
        return cli.main(args)
    except SystemExit as err:  # argparse and a few entry points exit instead of returning
        return err.code if isinstance(err.code, int) else 1
    finally:
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def banner(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run(cmd: list[str], env: dict | None = None) -> float:
    """Run one command from the current folder; return its wall time; raise StageFailed on error."""
    here = _in_process(cmd)
    print(("$ (in process) " if here else "$ ") + " ".join(cmd), flush=True)
    t0 = time.time()
    if here:  # env (thread counts) cannot change a running torch: the worker set its own at start
        code = _call_here(cmd[3:])
    else:
        code = subprocess.run(cmd, env={**os.environ, **(env or {})}).returncode
    if code != 0:
        raise StageFailed(f"stage failed (exit {code}): {' '.join(cmd)}\n"
                          "Fix the error above and run again: finished stages are kept.")
    seconds = time.time() - t0
    stage = cmd[3] if cmd[:3] == megadrp()[:3] else os.path.basename(cmd[1] if len(cmd) > 1 else cmd[0])
    STAGE_SECONDS[stage] = STAGE_SECONDS.get(stage, 0.0) + seconds
    print(f"    ({seconds:.0f} s)", flush=True)
    return seconds


def _quiet() -> list[str]:
    """Progress bars for a person at a terminal; none in a log file, where each redraw would be a line."""
    return [] if sys.stderr.isatty() else ["--no-progress"]


def megadrp(*args: str) -> list[str]:
    return [sys.executable, "-m", "megadrp", *args]


def newer(path: str, than: str) -> bool:
    return os.path.exists(path) and (not os.path.exists(than) or os.path.getmtime(path) >= os.path.getmtime(than))


def corpus_domains(corpus: str) -> list[str]:
    """Domain names of a corpus built by experiments/corpus_build.py, in the manifest's order."""
    manifest = read_manifest(corpus)
    if manifest is None:
        raise StageFailed(f"{os.path.join(corpus, 'manifest.json')} is missing: build the corpus first (make corpus)")
    return list(manifest.get("domains") or [])


def default_bin_dir(model: str) -> str:
    """Where the pipelines keep a corpus tokenised with MODEL's tokenizer: .cache/bin/MODEL_NAME (git-ignored)."""
    return os.path.join(".cache", "bin", os.path.basename(os.path.normpath(model)))


def add_common_args(p, run_dir: str, config: str) -> None:
    """The arguments every pipeline script shares (model, corpus, run folder, ranks, evaluation protocol)."""
    p.add_argument("--model", default=".cache/models/smollm2-135m", help="source HF folder")
    p.add_argument("--corpus", default=".cache/corpus", help="a corpus folder of experiments/corpus_build.py")
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


def built_corpus(sources: str, out: str, max_bytes: int = 200_000) -> str:
    """`python -m experiments.corpus_build` of a source list into OUT, unless its manifest is newer than the list (the
    builder itself also skips an up-to-date corpus; this check keeps a finished one from needing apt)."""
    if newer(os.path.join(out, "manifest.json"), sources):
        print(f"cached: {out}")
        return out
    run([sys.executable, "-m", "experiments.corpus_build", "--sources", sources, "--output", out,
         "--max-bytes", str(max_bytes)])  # the builder's default held-out size, as for the training corpus
    return out


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
                    "--append-eod", "--per-domain", "--workers", str(workers), *_quiet(),
                    "--overwrite"))  # the inputs are newer than the binaries: rebuilding them is the point
    return prefixes


def recipe(mode: str, config: str, overrides: list[str]) -> dict:
    """What makes a stage's result what it is: the mode, the config file's content and the overrides (not the
    step count, which a rerun may raise to extend a run, nor the rank count, which resume may change)."""
    with open(config, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    return {"mode": mode, "config_sha256": digest, "overrides": list(overrides)}


# Fields of a resolved config that do not change what a stage makes: a rerun may raise the steps to extend a
# run, the stages section is the runner's own, and logging and resume only say how the work is watched and restarted.
NOT_RECIPE = ("stages", "logging", "optim.max_steps", "checkpoint.resume", "checkpoint.init_from")


def resolved_recipe(mode: str, config: dict, defaults: dict) -> dict:
    """What makes a `megadrp run` stage's result what it is: its mode and the fields of its resolved config that
    differ from ``defaults`` (the schema's), less NOT_RECIPE. Only the differences: a later megadrp that adds a
    field at its default still reuses the stages an earlier one finished."""
    flat, base = _flatten(config), _flatten(defaults)
    keep = {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NOT_RECIPE)
            and (k not in base or base[k] != v)}
    return {"mode": mode, **{f"config.{k}": v for k, v in keep.items()}}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_recipe(output: str, wanted: dict) -> None:
    """Refuse to reuse or extend OUTPUT (a run folder, a cut model) under another recipe than the one recorded
    beside it."""
    path = os.path.normpath(output) + ".stage.json"
    if not os.path.exists(path):
        return  # nothing recorded (a new stage, or one from before the record): record_recipe writes it
    with open(path, encoding="utf-8") as fh:
        have = json.load(fh)
    if have == wanted:
        return
    diff = []
    for k in sorted(set(have) | set(wanted)):
        a, b = have.get(k), wanted.get(k)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):  # the overrides: name only what changed
            diff.append(f"{k}: made with {[x for x in a if x not in b]}, asked for {[x for x in b if x not in a]}")
        else:
            diff.append(f"{k}: {a!r} -> {b!r}")
    raise StageFailed(f"{output} was made by another recipe than this run asks for ({'; '.join(diff)}). "
                      f"Give it another run folder (run_dir=... or --run-dir), or delete {output} and {path} to "
                      "redo it.")


def record_recipe(output: str, wanted: dict) -> None:
    _write_atomic(os.path.normpath(output) + ".stage.json", json.dumps(wanted, indent=1))


def write_json(path: str, obj) -> None:
    _write_atomic(path, json.dumps(obj, indent=1) + "\n")


def copy_file(src: str, dst: str) -> None:
    """Copy SRC to DST atomically (a reader, or a kill mid-copy, never sees half a file)."""
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def train(mode: str, config: str, run_dir: str, max_steps: int, nproc: int, overrides: list[str],
          wanted: dict | None = None) -> None:
    """`megadrp MODE` to max_steps, resuming a killed run; skipped when its final checkpoint exists. ``wanted``:
    the stage's recipe record (default: `recipe` of the config file and the overrides)."""
    wanted = wanted or recipe(mode, config, overrides)
    check_recipe(run_dir, wanted)
    newest = run_format.newest_complete(run_dir)
    done = int(newest.name.split("_")[1]) if newest else -1
    if done >= max_steps:
        print(f"cached: {run_dir} finished at step {done}")
    else:
        run(megadrp(mode, "--config", config, "--nproc", str(nproc), "--resume", "auto", f"run_dir={run_dir}",
                    f"optim.max_steps={max_steps}", *overrides))
    record_recipe(run_dir, wanted)


def oneshot(config: str, run_dir: str, overrides: list[str], wanted: dict | None = None) -> str:
    """`megadrp oneshot` into RUN_DIR/pruned; skipped when that folder is complete and made by this recipe."""
    out = os.path.join(run_dir, run_format.PRUNED_DIR)
    wanted = wanted or recipe("oneshot", config, overrides)
    check_recipe(out, wanted)
    if os.path.exists(os.path.join(out, "oneshot_scores.json")):
        print(f"cached: {out}")
    else:
        run(megadrp("oneshot", "--config", config, f"run_dir={run_dir}", "--overwrite", *overrides),
            env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)})  # one process: every core
    record_recipe(out, wanted)
    return out


def export(run_dir: str, out_dir: str, dtype: str = "float32") -> str:
    """`megadrp export` of the run's latest checkpoint, unless an export newer than it exists."""
    if newer(os.path.join(out_dir, "config.json"), str(run_format.checkpoints_dir(run_dir) / run_format.LATEST)):
        print(f"cached: {out_dir}")
        return out_dir
    run(megadrp("export", run_dir, "--output", out_dir, "--dtype", dtype, *_quiet()))
    return out_dir


def gguf(folder: str, quant: str) -> str:
    """`megadrp export FOLDER --gguf QUANT` (written into FOLDER, checked by reading it back), unless a GGUF file
    newer than the folder's weights exists."""
    from megadrp.export.gguf_writer import gguf_name

    path = str(gguf_name(folder, quant))
    if newer(path, os.path.join(folder, "config.json")):
        print(f"cached: {path}")
        return path
    run(megadrp("export", folder, "--gguf", quant), env=_ALL_CORES)
    return path


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


def _eval_command(models: dict[str, str], source: list[str], out_json: str, seq_length: int, max_windows: int,
                  device: str | None) -> list[str]:
    cmd = megadrp("eval", "--model", *[f"{k}={v}" for k, v in models.items()], *source,
                  "--seq-length", str(seq_length), "--max-windows", str(max_windows), "--output", out_json,
                  "--markdown", os.path.splitext(out_json)[0] + ".md")
    return cmd + (["--device", device] if device else [])


def _is_export(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "megadrp_export.json"))


def _fresh(out_json: str, model: str) -> bool:
    return newer(out_json, os.path.join(model, "config.json"))


# One process: let it use every core (make exports OMP_NUM_THREADS=1 for the multi-rank stages).
_ALL_CORES = {"OMP_NUM_THREADS": str(os.cpu_count() or 1)}


def evaluate(models: dict[str, str], corpus: str | None, out_json: str, seq_length: int, max_windows: int,
             device: str | None = None, texts: dict[str, str] | None = None, card: bool = True,
             extra: list[str] = ()) -> dict:
    """`megadrp eval` of labelled HF folders on the held-out split (or on whole text files: ``texts``, label ->
    file), ``extra`` more `megadrp eval` options; cached while newer than every model. Only the held-out table
    of the training corpus goes into the export's model card (``card``): a robustness corpus's table would
    replace it there."""
    if all(_fresh(out_json, path) for path in models.values()):
        print(f"cached: {out_json}")
    else:
        source = ["--corpus", corpus] if corpus else ["--text", *[f"{k}={v}" for k, v in texts.items()]]
        cmd = _eval_command(models, source, out_json, seq_length, max_windows, device) + list(extra)
        if card and corpus and any(_is_export(p) for p in models.values()):
            cmd.append("--update-card")  # the export's model card gets the table (and a warning if far below)
        run(cmd, env=_ALL_CORES)
    with open(out_json, encoding="utf-8") as fh:
        return json.load(fh)


def evaluate_each(jobs: list[tuple[str, str, str]], corpus: str, seq_length: int, max_windows: int,
                  device: str | None = None, card: bool = True) -> list[dict]:
    """Each job (OUT_JSON, LABEL, MODEL_DIR) scored on the corpus's held-out split into its own OUT_JSON (and
    .md), as `evaluate` of that one model would, but every stale job in one `megadrp eval` process: on a GPU a
    process start costs about what scoring one small model does. Returns each job's result, in order."""
    stale = [(i, job) for i, job in enumerate(jobs) if not _fresh(job[0], job[2])]
    if stale:
        from megadrp.eval_results import markdown_report
        from megadrp.export.card import update_card_evaluation

        batch = os.path.join(os.path.dirname(stale[0][1][0]) or ".", f".evaluate_each_{os.getpid()}.json")
        run(_eval_command({f"job{i}": model for i, (_, _, model) in stale}, ["--corpus", corpus], batch,
                          seq_length, max_windows, device), env=_ALL_CORES)
        with open(batch, encoding="utf-8") as fh:
            results = json.load(fh)["models"]
        for i, (out_json, label, model) in stale:
            mine = {label: results[f"job{i}"]}
            _write_atomic(os.path.splitext(out_json)[0] + ".md", markdown_report(mine))
            _write_atomic(out_json, json.dumps({"models": mine}, indent=2) + "\n")  # last: it is the stamp
            if card and _is_export(model):
                update_card_evaluation(model, {"models": mine})
        for path in (batch, os.path.splitext(batch)[0] + ".md"):
            os.remove(path)
    else:
        print(f"cached: {len(jobs)} evaluations on {corpus}")
    out = []
    for out_json, label, _ in jobs:
        with open(out_json, encoding="utf-8") as fh:
            out.append(json.load(fh)["models"][label])
    return out

