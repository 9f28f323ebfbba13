"""The trainer's ``dress`` mode: select once, regularise under the schedule, export the cut model at the end.

One of megadrp.methods' registered modes. Per step the mode adds
``dress_penalty`` = coefficient(step) * penalty of the forward just run (hooks on the engine's modules, so it
is correct under ZeRO-3) and logs the selected slices' norms. After the last step it writes the pruned dense
HF folder to ``RUN_DIR/pruned`` through megadrp.export; finetune that folder with ``megadrp cpt``
(``model.path=RUN_DIR/pruned``), domain reweighting included.

Selection runs in ``setup`` on ``dress.calibration_batches`` batches drawn by a private sampler seeded with
optim.seed (rank 0 of 1, so every rank scores the same tokens and selects the same units); on resume the saved
selection replaces it, so a resumed run never re-selects.
"""
from __future__ import annotations

from pathlib import Path

from megadrp.dress.regularizer import DressRegularizer
from megadrp.dress.scoring import score_units
from megadrp.dress.select import select_units
from megadrp.methods.base import Mode


def _zero3(module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())


class DressMode(Mode):
    name = "dress"

    def setup(self, trainer) -> None:
        super().setup(trainer)
        cfg = trainer.cfg
        self.module = trainer.engine.module
        self.max_steps = cfg.optim.max_steps
        if _zero3(self.module) and cfg.dress.criterion != "activation":
            raise ValueError(f"dress.criterion = {cfg.dress.criterion!r} reads whole weights and gradients outside a "
                             "forward, which ZeRO-3 partitions: use dress.criterion=activation with ZeRO-3")
        self._use(self._select(trainer))

    def _select(self, trainer) -> dict:
        from megadrp.data import DomainMixtureSampler

        cfg = trainer.cfg
        calib = DomainMixtureSampler(trainer.plan.datasets, cfg.data.seq_length, cfg.optim.micro_batch_size,
                                     seed=cfg.optim.seed + 7919, rank=0, world_size=1)
        batches = [calib.next_batch()["tokens"].to(trainer.device) for _ in range(cfg.dress.calibration_batches)]
        scores = score_units(self.module, batches, cfg.dress.criterion)
        return select_units(scores, trainer.shape, cfg.pruning.target)

    def _use(self, masks: dict) -> None:
        if getattr(self, "reg", None) is not None:
            self.reg.detach()
        self.masks = {k: v.float().cpu() for k, v in masks.items()}
        self.reg = DressRegularizer.from_config(self.module, self.masks, self.trainer.cfg.dress,
                                                shape=self.trainer.shape).attach()

    def loss_terms(self, step, micro_step):
        return {"dress_penalty": self.reg.loss_term(step - 1).to(self.trainer.device)}

    def after_step(self, step):
        self.reg.after_step(step - 1)
        if step == self.max_steps:
            self.export(Path(self.trainer.cfg.run_dir) / "pruned")

    def metrics(self, step):
        return self.reg.metrics()

    def step_line(self, record):
        return (f"dress coef {record.get('dress_coef', 0.0):.3g} | selected-slice norm "
                f"{record.get('dress_norm_all', 0.0):.4g}")

    def state_dict(self):
        return {"dress_masks": self.masks}

    def load_state_dict(self, state):
        if state.get("dress_masks"):
            self._use(state["dress_masks"])

    # ---- the cut ------------------------------------------------------------------------------------------
    def full_state_dict(self) -> dict:
        """The model's whole fp32 weights on rank 0's CPU ({} on the other ranks). Collective under ZeRO-3: one
        parameter is gathered at a time, and only rank 0 keeps a copy, so no rank but 0 ever holds more than
        one gathered parameter (before, every rank kept the whole model: ~28 GB per rank at 7B)."""
        keep = self.trainer.group.is_main
        out = {}
        for name, p in self.module.named_parameters():
            if hasattr(p, "ds_id"):
                import deepspeed

                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    if keep:
                        out[name] = p.detach().float().cpu().clone()
            elif keep:
                out[name] = p.detach().float().cpu()
        return out

    def export(self, out_dir: Path) -> None:
        from megadrp.dress.cut import export_pruned

        sd = self.full_state_dict()  # every rank takes part in the gathers; rank 0 keeps the weights
        if self.trainer.group.is_main:
            cfg = self.trainer.cfg
            export_pruned(sd, self.trainer.shape, self.trainer.family, self.masks, out_dir,
                          tokenizer_src=self.trainer.plan.tokenizer_path, dtype=cfg.export.dtype,
                          source_model_dir=cfg.model.path)
            print(f"[megadrp] dress: pruned model written to {out_dir}; finetune it with "
                  f"`megadrp cpt --config ... model.path={out_dir}`", flush=True)
        self.trainer.group.barrier()

