"""The trainer's ``dress`` mode: select once, regularise under the schedule, export the cut model at the end.

One of megadrp.methods' registered modes. Per step the mode adds
``dress_penalty`` = coefficient(step) * penalty of the forward just run (hooks on the engine's modules, so it
is correct under ZeRO-3) and logs the selected slices' norms. After the last step it writes the pruned dense
HF folder to ``RUN_DIR/pruned`` through megadrp.export; finetune that folder with ``megadrp cpt``
(``model.path=RUN_DIR/pruned``), domain reweighting included.

Selection runs in ``calibrate``, before step 1 of a fresh run, on ``dress.calibration_batches`` batches drawn
by a private sampler seeded with optim.seed (rank 0 of 1, so every rank scores the same tokens and selects the
same units); a resumed run restores the saved selection instead and never scores the model again.
"""
from __future__ import annotations

from pathlib import Path

from megadrp.config import ConfigError
from megadrp.data.sampler import CALIBRATION_SEED_OFFSET, calibration_batches
from megadrp.dress.cut import export_pruned
from megadrp.dress.regularizer import DressRegularizer
from megadrp.dress.scoring import score_units
from megadrp.dress.select import select_units
from megadrp.methods.base import Mode
from megadrp.methods.spec import SOURCE_TEACHER, MethodSpec
from megadrp.run_format import PRUNED_DIR
from megadrp.trainer.engine import gather_full_state_dict


def _zero3(module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())


class DressMode(Mode):
    name = "dress"

    def setup(self, ctx) -> None:
        super().setup(ctx)
        cfg = ctx.cfg
        self.module = ctx.engine.module
        self.max_steps = cfg.optim.max_steps
        if _zero3(self.module) and cfg.dress.criterion != "activation":
            raise ValueError(f"dress.criterion = {cfg.dress.criterion!r} reads whole weights and gradients outside a "
                             "forward, which ZeRO-3 partitions: use dress.criterion=activation with ZeRO-3")
        self.masks, self.reg = None, None

    def calibrate(self, domain_weights):
        """Select the units to remove, once: a resumed run restores the selection (load_state_dict)."""
        cfg = self.ctx.cfg
        batches, _ = calibration_batches(self.ctx.inputs.datasets, cfg.data.seq_length, cfg.optim.micro_batch_size,
                                         cfg.dress.calibration_batches, seed=cfg.optim.seed + CALIBRATION_SEED_OFFSET)
        scores = score_units(self.module, [b.to(self.ctx.device) for b in batches], cfg.dress.criterion)
        self._use(select_units(scores, self.ctx.shape, cfg.pruning.target))
        return None

    def _use(self, masks: dict) -> None:
        if self.reg is not None:
            self.reg.detach()
        self.masks = {k: v.float().cpu() for k, v in masks.items()}
        self.reg = DressRegularizer.from_config(self.module, self.masks, self.ctx.cfg.dress,
                                                shape=self.ctx.shape).attach()

    def loss_terms(self, step, micro_step):
        return {"dress_penalty": self.reg.loss_term(step - 1).to(self.ctx.device)}

    def after_step(self, step):
        self.reg.after_step(step - 1)
        if step == self.max_steps:
            self.export(self.ctx.run_dir / PRUNED_DIR)

    def metrics(self, step):
        return self.reg.metrics()

    def step_line(self, record):
        return (f"dress coef {record.get('dress_coef', 0.0):.3g} | selected-slice norm "
                f"{record.get('dress_norm_all', 0.0):.4g}")

    def state_dict(self):  # the selection is the state: the regulariser's schedule follows from the step
        return {"dress_masks": self.masks}

    def load_state_dict(self, state):
        if state.get("dress_masks"):
            self._use(state["dress_masks"])

    # ---- the cut ------------------------------------------------------------------------------------------
    def export(self, out_dir: Path) -> None:
        ctx = self.ctx
        sd = gather_full_state_dict(self.module, ctx.group.is_main)  # every rank gathers, rank 0 keeps
        if ctx.group.is_main:
            export_pruned(sd, ctx.shape, ctx.family, self.masks, out_dir, tokenizer_src=ctx.inputs.tokenizer_path,
                          dtype=ctx.cfg.export.dtype, source_model_dir=ctx.cfg.model.path,
                          card_info={"mode": SPEC.name, "method": SPEC.card_sentence(ctx.cfg.dro.method)})
            print(f"[megadrp] dress: pruned model written to {out_dir}; finetune it with "
                  f"`megadrp cpt --config ... model.path={out_dir}`", flush=True)
        ctx.group.barrier()


def check(cfg) -> None:
    if cfg.dress.regularize_steps > cfg.optim.max_steps:
        raise ConfigError("dress.regularize_steps", cfg.dress.regularize_steps,
                          f"exceeds optim.max_steps ({cfg.optim.max_steps}): the penalty would stop short of "
                          "dress.penalty_final and the cut would not be lossless; set dress.regularize_steps "
                          "<= optim.max_steps")


SPEC = MethodSpec(
    name="dress", summary="DReSS: select units, regularise them away, prune, finetune.",
    card="DReSS: regularise the selected units towards zero, remove them, finetune",
    mode=DressMode, section="dress", needs_target=True, empty_teacher=SOURCE_TEACHER, check=check)

