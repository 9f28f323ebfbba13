"""One-shot structured pruning in the style of Minitron: score every unit once, cut to the target, no training.

    megadrp oneshot --config configs/demo_smollm2.yaml [key=value ...] [--overwrite]

The importance is DReSS's ``activation`` criterion (megadrp.dress.scoring: each KV group's and FFN channel's
output contribution, hidden dims by their normed activation, layers by 1 - cos of the residual stream),
accumulated over ``dress.calibration_batches`` micro-batches of ``data.seq_length`` tokens drawn from the
training split with every domain weighted equally: a domain the natural mixture under-samples (the demo's
multilingual text) still has a say in which units stay. The selection is megadrp.dress.select (the same number
of KV groups and channels kept in every layer, hidden dims and layers chosen globally) and the cut goes through
megadrp.export, so ``RUN_DIR/pruned`` is a dense Hugging Face folder with the source's tokenizer files and a
model card, as ``megadrp export`` writes it.

This is the one-shot baseline of the method comparison (docs/RESULTS.md) and the first half of the demo:
recover the folder with ``megadrp cpt model.path=RUN_DIR/pruned`` under domain reweighting, on the LM loss
or distilling from the source (``distill.alpha``; tools/demo.py uses the LM loss, docs/RESULTS.md says why).
It runs in one process: a few forward passes need no launcher, and the source is loaded whole (it is the
size one GPU or host holds; a 70B source needs the trained path).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from megadrp.config import ConfigError, load_config
from megadrp.data.sampler import CALIBRATION_SEED_OFFSET, calibration_batches
from megadrp.dress.cut import export_pruned
from megadrp.dress.scoring import score_units
from megadrp.dress.select import removed_indices, select_units
from megadrp.methods.spec import MethodSpec
from megadrp.model import load_pretrained
from megadrp.run_format import PRUNED_DIR
from megadrp.trainer.build import preflight

SCORES_FILE = "oneshot_scores.json"


def calibration(cfg, datasets) -> tuple[list, dict[str, int]]:
    """``dress.calibration_batches`` token batches [B, T+1] with every domain weighted equally (a domain the
    natural mixture under-samples still has a say), seeded by optim.seed; and the sequences each domain gave."""
    return calibration_batches(datasets, cfg.data.seq_length, cfg.optim.micro_batch_size,
                               cfg.dress.calibration_batches, seed=cfg.optim.seed + CALIBRATION_SEED_OFFSET,
                               weights=[1.0 / len(datasets)] * len(datasets))


def oneshot_prune(cfg, out_dir: Path, log=print) -> Path:
    """Score, select and cut; returns the written HF folder. ``cfg`` is a loaded RunConfig (mode oneshot)."""
    plan = preflight(cfg, SPEC, world_size=1)
    t0 = time.time()
    model = load_pretrained(plan.weights_path, cfg.model.family)
    batches, rows = calibration(cfg, plan.datasets)
    tokens = sum(b[:, :-1].numel() for b in batches)
    log(f"scoring {plan.shape.num_hidden_layers} layers' units ({cfg.dress.criterion}) on {tokens} calibration "
        f"tokens from {len(plan.datasets)} domains")
    scores = score_units(model, batches, cfg.dress.criterion, progress=_progress(len(batches), log))
    masks = select_units(scores, plan.shape, cfg.pruning.target)
    t = plan.target_shape
    log(f"scored in {time.time() - t0:.0f} s; cutting to {t.num_hidden_layers} layers, hidden {t.hidden_size}, "
        f"{t.num_attention_heads}q/{t.num_key_value_heads}kv heads, FFN {t.intermediate_size} "
        f"({t.num_params(False) / 1e6:.1f}M non-embedding parameters of {plan.shape.num_params(False) / 1e6:.1f}M)")
    out = export_pruned({k: v.detach() for k, v in model.state_dict().items()}, plan.shape, plan.family, masks,
                        out_dir, tokenizer_src=plan.tokenizer_path, dtype=cfg.export.dtype,
                        source_model_dir=cfg.model.path,
                        card_info={"mode": SPEC.name, "method": SPEC.card_sentence(cfg.dro.method),
                                   "criterion": cfg.dress.criterion, "calibration_tokens": tokens})
    record = {"criterion": cfg.dress.criterion, "calibration_tokens": tokens, "calibration_sequences": rows,
              "removed": removed_indices(masks), "scores": {k: v.tolist() for k, v in scores.items()}}
    Path(out, SCORES_FILE).write_text(json.dumps(record))
    from megadrp.export.writer import list_export_files

    list_export_files(Path(out))  # the scores are megadrp's too: replaced, not kept, by a later --overwrite
    return Path(out)


def _progress(total: int, log):
    """A line about every tenth of the calibration batches: how far, how long, how much longer."""
    from megadrp.trainer.metrics import clock

    start, every = time.time(), max(1, total // 10)

    def tick(i: int) -> None:
        if i % every == 0 or i == total:
            spent = time.time() - start
            log(f"calibration batch {i}/{total}, {clock(spent)} elapsed, eta {clock(spent / i * (total - i))}")
    return tick


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="megadrp oneshot", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML recipe (configs/); dotted key=value overrides follow")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. pruning.target.intermediate_size=704")
    p.add_argument("--output", default=None, help=f"HF folder to write (default RUN_DIR/{PRUNED_DIR})")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier one-shot folder at --output")
    args = p.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, [*args.overrides, "mode=oneshot"])
        out = Path(args.output or Path(cfg.run_dir) / PRUNED_DIR)
        from megadrp.export.writer import check_output_folder

        check_output_folder(out)  # before the scoring pass: a folder megadrp did not write is never replaced
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise ConfigError("--output", str(out), "holds an earlier one-shot model; pass --overwrite to replace "
                              "it (files you added to it are kept)")
        written = oneshot_prune(cfg, out, log=lambda msg: print(f"[megadrp] oneshot: {msg}", flush=True))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"megadrp oneshot: {err}", file=sys.stderr)
        return 2
    print(f"[megadrp] oneshot: pruned model written to {written}; recover it with "
          f"`megadrp cpt --config ... model.path={written}` (distill.teacher={cfg.model.path} distils from the source)",
          flush=True)
    return 0


SPEC = MethodSpec(
    name="oneshot", summary="One-shot pruning (Minitron-style activation importance), no training: a dense HF folder.",
    card="one-shot structured pruning by activation importance on calibration text (Minitron-style), no training",
    main=main, section="dress", needs_target=True)


if __name__ == "__main__":
    sys.exit(main())
