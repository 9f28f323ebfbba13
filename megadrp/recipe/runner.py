"""``megadrp run --config RECIPE.yaml``: a recipe's whole pipeline, source model to published model, as one command.

The recipe is an ordinary run config (every field of `megadrp config`) whose ``stages`` section says what to do:

    tokenise   stages.corpus (a text corpus folder) with model.path's tokenizer   -> stages.bin_dir
    cut        stages.cut: oneshot | prune | dress | none                          -> RUN_DIR/pruned
    recover    `megadrp cpt` of the cut for stages.recovery_steps                  -> RUN_DIR/recover
    export     the final model as a dense Hugging Face folder (+ GGUF: stages.gguf)  -> RUN_DIR/export
    evaluate   source, cut and final model per domain, speed and memory            -> RUN_DIR/eval.json, eval.md
    report     plots and summary of the last training stage                        -> RUN_DIR/report
    hub        upload the export when export.push_to_hub names a repo

Each stage runs the `megadrp` subcommand a user would (megadrp/recipe/stages.py), is resumed when it was killed
and skipped when finished, and a finished cut or training is reused only for the resolved config that made it:
rerunning the command after a failure or a kill continues where it stopped, and rerunning a finished recipe
only prints where everything is. Dotted overrides after the recipe apply to every stage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from megadrp.recipe import stages as st

CUT_MODES = {"prune": "prune", "dress": "dress"}  # cut -> training mode (oneshot and none train nothing)


class Progress:
    """Numbered stage banners with the elapsed time of the whole run."""

    def __init__(self, names: list[str]):
        self.names, self.t0 = names, time.time()

    def start(self, name: str, what: str) -> None:
        i = self.names.index(name) + 1
        st.banner(f"[{i}/{len(self.names)} {name}, {_clock(time.time() - self.t0)} elapsed] {what}")


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def stage_names(cfg) -> list[str]:
    s = cfg.stages
    names = ["tokenise"] if s.corpus else []
    names += ["cut"] if s.cut != "none" else []
    names += ["recover"] if s.recovery_steps else []
    names += ["export"]
    names += ["evaluate"] if s.evaluate else []
    names += ["report"] if s.report and (s.recovery_steps or s.cut in CUT_MODES) else []
    names += ["hub"] if cfg.export.push_to_hub else []
    return names


def _resolved(config: str, overrides: list[str], mode: str) -> dict:
    from megadrp.config import load_config, to_dict

    return to_dict(load_config(config, [*overrides, f"mode={mode}"], check=False))


def run_recipe(config: str, overrides: list[str]) -> dict:
    """Every stage the recipe names, in order; returns where the results are. Raises StageFailed."""
    from megadrp.config import load_config

    cfg = load_config(config, overrides)
    s, run_dir, source = cfg.stages, cfg.run_dir, cfg.model.path
    if s.evaluate and not s.corpus:
        raise st.StageFailed("stages.evaluate needs stages.corpus (a text corpus folder with heldout/DOMAIN.jsonl); "
                             "give one, or set stages.evaluate=false")
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise st.StageFailed(f"model.path={source!r} is no Hugging Face model folder (no config.json)")
    progress = Progress(stage_names(cfg))
    if s.nproc == 1:  # one rank: every stage in this process, its start-up (imports, CUDA context) paid once
        st.run_in_process()
    common = list(overrides)
    if s.corpus:
        progress.start("tokenise", f"the corpus {s.corpus} with the source's tokenizer, one .bin/.idx per domain")
        domains = list(cfg.data.domains) or st.corpus_domains(s.corpus)
        prefixes = st.preprocess_corpus(s.corpus, source, s.bin_dir or st.default_bin_dir(source), domains)
        common += [f"data.prefix={prefixes['train']}", f"data.eval_prefix={prefixes['heldout']}",
                   f"data.domains=[{', '.join(domains)}]"]

    pruned = cut(cfg, config, common, progress)
    final, last_run = pruned, (os.path.join(run_dir, s.cut) if s.cut in CUT_MODES else None)
    if s.recovery_steps:
        progress.start("recover", f"`megadrp cpt` of {pruned} for {s.recovery_steps} steps on {s.nproc} rank(s), "
                                  f"domain rule {cfg.dro.method}")
        last_run = os.path.join(run_dir, "recover")
        rec = [*common, f"model.path={pruned}", f"run_dir={last_run}", f"optim.max_steps={s.recovery_steps}"]
        if pruned != source and not cfg.dro.reference_model and not cfg.distill.teacher:
            rec.append(f"dro.reference_model={source}")  # the rule's reference losses from the source, not the cut
        st.train("cpt", config, last_run, s.recovery_steps, s.nproc, rec, wanted=_stage("cpt", config, rec))

    progress.start("export", "the final model as a dense Hugging Face folder")
    export_dir = os.path.join(run_dir, "export")
    if s.recovery_steps:
        st.export(last_run, export_dir, dtype=cfg.export.dtype)
    else:
        st.copy_folder(final, export_dir)
    for quant in s.gguf:
        st.gguf(export_dir, quant)

    out = {"export": export_dir, "cut": pruned if s.cut != "none" else None, "run": last_run}
    if s.evaluate:
        progress.start("evaluate", "source, cut and final model per domain on the held-out split"
                       + (", then each one's speed and memory" if s.speed else ""))
        models = {"source": source, **({s.cut: pruned} if s.cut != "none" else {}), "pruned": export_dir}
        out["eval"] = os.path.join(run_dir, "eval.json")
        st.evaluate(models, s.corpus, out["eval"], seq_length=cfg.eval.seq_length, max_windows=cfg.eval.max_windows,
                    extra=["--speed"] if s.speed else [])
    if "report" in progress.names:
        progress.start("report", f"plots and summary of {last_run}")
        out["report"] = os.path.join(run_dir, "report")
        report = [*st.megadrp("report", last_run, "--output", out["report"])]
        if s.evaluate:
            report += ["--eval-json", out["eval"]]
        st.run(report)
    if cfg.export.push_to_hub:
        progress.start("hub", f"upload {export_dir} to {cfg.export.push_to_hub}")
        out["hub"] = push(export_dir, cfg.export.push_to_hub, cfg.export.private)
    out["seconds"] = time.time() - progress.t0
    return out


def _stage(mode: str, config: str, overrides: list[str]) -> dict:
    from megadrp.config import to_dict
    from megadrp.config.schema import RunConfig

    return st.resolved_recipe(mode, _resolved(config, overrides, mode), to_dict(RunConfig()))


def cut(cfg, config: str, common: list[str], progress: Progress) -> str:
    """The cut stage: RUN_DIR/pruned, a dense HF folder of the target shape (the source itself for cut none)."""
    s, run_dir = cfg.stages, cfg.run_dir
    if s.cut == "none":
        return cfg.model.path
    t = cfg.pruning.target
    shape = ", ".join(f"{k} {v}" for k, v in vars(t).items() if v) if hasattr(t, "__dict__") else str(t)
    if s.cut == "oneshot":
        progress.start("cut", f"one-shot cut to {shape} (activation importance on calibration text)")
        return st.oneshot(config, run_dir, common, wanted=_stage("oneshot", config, [*common, f"run_dir={run_dir}"]))
    mode = CUT_MODES[s.cut]
    first = os.path.join(run_dir, s.cut)
    progress.start("cut", f"`megadrp {mode}` to {shape} for {s.cut_steps} steps on {s.nproc} rank(s)")
    over = [*common, f"run_dir={first}", f"optim.max_steps={s.cut_steps}"]
    if mode == "dress":  # the penalty reaches its final value at the last step, so the cut is lossless
        over.append(f"dress.regularize_steps={s.cut_steps}")
    st.train(mode, config, first, s.cut_steps, s.nproc, over, wanted=_stage(mode, config, over))
    out = os.path.join(run_dir, "pruned")
    if mode == "dress":  # the dress mode writes the cut model itself
        return st.copy_folder(os.path.join(first, "pruned"), out)
    return st.export(first, out, dtype="float32")  # recovery's input: no rounding before it trains


def push(folder: str, repo_id: str, private: bool) -> str:
    """Upload FOLDER unless this very export was uploaded before (RUN_DIR/hub.json records it)."""
    from megadrp.export.hub import push_folder

    stamp = os.path.join(os.path.dirname(folder), "hub.json")
    if st.newer(stamp, os.path.join(folder, "README.md")):
        with open(stamp, encoding="utf-8") as fh:
            url = json.load(fh)["url"]
        print(f"cached: uploaded to {url}")
        return url
    try:
        url = push_folder(folder, repo_id, private=private)
    except Exception as err:  # the pipeline itself is done: say how to retry only the upload
        raise st.StageFailed(f"upload to {repo_id} failed ({type(err).__name__}: {err}); {folder} is complete: "
                             f"run again to retry, or `hf upload {repo_id} {folder}`") from None
    with open(stamp, "w", encoding="utf-8") as fh:
        json.dump({"repo_id": repo_id, "url": url}, fh)
    return url


def main(argv: list[str] | None = None) -> int:
    from megadrp.config import ConfigError

    head, body = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="megadrp run", description=head,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=body)
    p.add_argument("--config", required=True, help="the recipe (YAML, with a stages section)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides for every stage, e.g. run_dir=runs/mine")
    args = p.parse_intermixed_args(argv)
    import shlex

    # Every stage's model card says how the model was made: this command.
    os.environ["MEGADRP_COMMAND"] = shlex.join(["megadrp", "run", "--config", args.config, *args.overrides])
    try:
        out = run_recipe(args.config, args.overrides)
    except (ConfigError, st.StageFailed) as err:
        print(f"megadrp run: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    print(f"\nDone in {_clock(out['seconds'])}. Results:")
    print(f"  model        : {out['export']}/  (AutoModelForCausalLM.from_pretrained loads it; README.md is its card)")
    described = (("cut", "the cut, before recovery"), ("run", "the last training run: metrics.jsonl, checkpoints/"),
                 ("eval", "per-domain loss, perplexity, bits per byte; speed and memory (and eval.md)"),
                 ("report", "summary.md and plots"), ("hub", "uploaded"))
    for key, what in described:
        if out.get(key):
            print(f"  {key:<13}: {out[key]}  ({what})")
    md = os.path.splitext(out.get("eval") or "")[0] + ".md"
    if out.get("eval") and os.path.exists(md):
        print("\n" + open(md, encoding="utf-8").read())
    return 0
