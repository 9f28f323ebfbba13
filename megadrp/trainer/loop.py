"""The Trainer: one step loop for every mode (see ARCHITECTURE.md, "One training step").

Per optimizer step: for each micro-batch, the sampler's batch, the mode's masks for (step, micro) (identical on
every rank), ONE forward through the engine (plus the teacher's no-grad forward when distilling,
megadrp/distill/), per-token CE; loss = mean CE (blended with the KD term) + the mode's extra terms; the same
per-token CE feeds the domain tracker; engine.backward/step. Then the mode's post-step hook (mask and
multiplier updates), one tracker all-reduce, the reweighting rule (new sampler weights every
dro.update_interval steps, identical on every rank), logging, periodic eval and checkpoints.
No host read inside a step: its numbers stay on the device (trainer/pending.py) until a log, DRO-update,
eval or checkpoint step reads them all back in one copy and applies them in step order (``settle``).
Steps are numbered from 1; a checkpoint of step N holds the state after N steps.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import torch

from megadrp import run_format
from megadrp.config import save_config, to_dict
from megadrp.kernels.cross_entropy import token_cross_entropy
from megadrp.trainer import checkpoint, dist, elastic, faults, stop_signal
from megadrp.trainer import engine as engine_mod
from megadrp.trainer import mfu as mfu_mod
from megadrp.trainer import precision as precision_mod
from megadrp.trainer.build import RunInputs
from megadrp.trainer.context import RunContext
from megadrp.trainer.lr_schedule import lr_at, set_lr
from megadrp.trainer.metrics import MetricsFile, Wandb, step_line
from megadrp.trainer.optim import make_weight_optimizer
from megadrp.trainer.pending import PendingSteps, StepNumbers
from megadrp.trainer.spike_guard import SpikeGuard
from megadrp.trainer.state import StateRegistry


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; no checkpoint of that state was written."""


def _log(msg: str) -> None:
    if dist.is_main():
        print(f"[megadrp] {msg}", flush=True)


class Trainer:
    def __init__(self, cfg, inputs: RunInputs, mode, resume: str = "none", distiller=None, reference=None):
        """``inputs``: pre-flight's RunInputs (megadrp.trainer.build.preflight); ``mode``: the method's hooks (a
        megadrp.methods.Mode, ``inputs.method.mode()``); ``distiller``: None, or a callable(RunContext) -> KD hook
        or None, called once the engine exists (``megadrp.distill.make_distiller``); ``reference``: None (the
        starting model), or a callable(RunContext, HeldoutEval, teacher) -> (held-out loss per domain, what model)
        for DRO's initial l_ref (``megadrp.distill.source_reference.measure``)."""
        self.cfg, self.inputs, self.mode, self.resume_spec = cfg, inputs, mode, resume
        self._make_distiller, self._measure_reference = distiller, reference
        self.shape, self.family = inputs.shape, inputs.family
        self.device = dist.device()
        self.group = dist.DataParallelGroup()  # every collective of the loop and the mode runs over it
        self.step = 0
        self.tokens_seen = 0
        self.last_checkpoint = None
        self.pending = PendingSteps()  # steps whose numbers are still on the device
        self._window_tokens, self._window_time = 0, 0.0  # tokens/s since the last log line
        self._last_eval_step = None
        self._saved_step = None  # the step of the newest checkpoint this process wrote or resumed from
        self.spike = SpikeGuard(cfg.optim.spike_guard, cfg.optim.spike_factor, cfg.optim.spike_window)

    # ---- set-up ---------------------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        from megadrp.data import DomainMixtureSampler
        from megadrp.dro import DomainLossTracker, make_reweighter

        cfg, inputs = self.cfg, self.inputs
        torch.manual_seed(cfg.optim.seed)
        path = checkpoint.choose(self.resume_spec, cfg.run_dir, _log)  # verified; 'auto' skips damaged ones
        # At another world size than the checkpoint's: its universal conversion, and ds_config set to load it.
        self.engine_state_path = elastic.prepare_resume(path, inputs.ds_config, self.group.size)
        init = None
        if path is None and cfg.checkpoint.init_from and inputs.weights_path != cfg.checkpoint.init_from:
            init = checkpoint.choose(cfg.checkpoint.init_from, cfg.run_dir, _log)  # a checkpoint, verified
        model = engine_mod.build_model(self.shape, self.family, inputs.ds_config, inputs.precision, cfg.model)
        if init is not None:  # weights only, any world size: the fp32 weights consolidated from every shard
            _log(f"initialising weights from {init} (weights only)")
            engine_mod.load_source_weights(model, init, self.family, inputs.ds_config,
                                           read=elastic.read_checkpoint_weights)
        elif path is None:  # a resumed run takes every weight from the checkpoint: skip reading the source
            engine_mod.load_source_weights(model, inputs.weights_path, self.family, inputs.ds_config)
        optimizer = make_weight_optimizer(model, cfg.optim, inputs.ds_config)
        self.engine = engine_mod.initialize(model, optimizer, inputs.ds_config)
        probe = precision_mod.probe_shape(cfg.optim.micro_batch_size * cfg.data.seq_length, self.shape.hidden_size,
                                          self.shape.intermediate_size)
        self.precision = precision_mod.resolve_on_ranks(cfg.deepspeed.precision, self.device.type, probe)
        self.context = RunContext(cfg=cfg, inputs=inputs, device=self.device, group=self.group, engine=self.engine)
        self.mode.setup(self.context)
        self.distill = self._make_distiller(self.context) if self._make_distiller else None  # None: no distillation
        self.sampler = DomainMixtureSampler(inputs.datasets, cfg.data.seq_length, cfg.optim.micro_batch_size,
                                            seed=cfg.optim.seed, rank=self.group.rank, world_size=self.group.size)
        self.tracker = DomainLossTracker(len(cfg.data.domains), group=self.group.process_group)
        self.reweighter = make_reweighter(cfg.dro, cfg.data.domains, inputs.token_counts, cfg.optim.max_steps,
                                          target_sparsity=self.mode.final_sparsity(),
                                          model_params=float(self.shape.num_params()),
                                          group=self.group.process_group)
        self.sampler.set_weights(self.reweighter.weights)
        # what a checkpoint saves and a resume restores, each under its key of the state file
        self.stateful = StateRegistry()
        self.stateful.register("mode_state", self.mode, optional=True)
        self.stateful.register("sampler", self.sampler)
        self.stateful.register("reweighter", self.reweighter)
        self.stateful.register("spike_guard", self.spike, optional=True)  # older checkpoints have none
        self.heldout = None
        if inputs.eval_datasets:
            from megadrp.trainer.periodic_eval import HeldoutEval

            self.heldout = HeldoutEval(inputs.eval_datasets, cfg.data.seq_length, cfg.optim.micro_batch_size,
                                       cfg.logging.eval_batches, inputs.tokenizer_path, self.group)
        self.metrics = MetricsFile(cfg.run_dir, dist.is_main())
        run_id = None
        if path is not None:
            run_id = self._restore(path)
        if path is None:  # a resumed run restores both from its checkpoint
            self._calibrate()
            if self.heldout is not None and self.reweighter.needs_reference_losses():
                self._measure_reference_losses()
        if dist.is_main():
            save_config(cfg, str(Path(cfg.run_dir) / run_format.CONFIG_FILE))
            if path is not None:
                self.metrics.truncate_after(self.step)
        self.wandb = Wandb(cfg.logging, cfg.run_dir, run_id, to_dict(cfg), dist.is_main())
        self.flops_per_token = mfu_mod.flops_per_token(self.shape, cfg.data.seq_length)
        self.peak = mfu_mod.peak_flops(self.device, cfg.logging.peak_tflops)
        return self

    def _calibrate(self) -> None:
        record = self.mode.calibrate(self.reweighter.weights)
        if record is None:
            return
        self.metrics.write(record)
        if record.get("protected_hidden"):
            _log(f"protected hidden dims (massive activations, RMS {record['protected_rms']} vs median "
                 f"{record['median_rms']:.2f}): {record['protected_hidden']}")

    def _measure_reference_losses(self) -> None:
        """DRPruning's initial l_ref when none is configured: the source's held-out loss per domain
        (``reference``, handed in by train.py). Without it each domain's first training observation would serve, a
        single noisy micro-batch that, under small batches, can pin a domain's weight low for the whole run."""
        losses, model = (self._measure_reference(self.context, self.heldout, getattr(self.distill, "teacher", None))
                         if self._measure_reference else (None, "starting model"))
        if losses is None:  # the starting model itself, unmasked (the source in prune and dress mode)
            losses = self.heldout.run(self.engine, None, self.device)["eval_loss"]
        domains = list(self.cfg.data.domains)
        missing = [d for d in domains if d not in losses]
        if missing:
            _log(f"no held-out windows for {missing}: DRO references start from the first training losses")
            return
        self.reweighter.set_reference_losses([losses[d] for d in domains])
        self.metrics.write({"kind": "reference", "step": 0, "reference_loss": losses, "reference_model": model})
        _log(f"DRO reference losses (held-out, {model}): " + " ".join(f"{d}={losses[d]:.3f}" for d in domains))

    def _restore(self, path) -> str:
        state = checkpoint.read_state(path)
        if state["mode"] != self.cfg.mode:
            raise ValueError(f"{path} is a {state['mode']} checkpoint; this run is {self.cfg.mode}")
        checkpoint.load(self.engine, self.engine_state_path)
        self.stateful.load_state_dict({"mode_state": {}, **state})
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        rngs = state.get("rng") or []
        if rngs:
            checkpoint.set_rng_state(rngs[dist.rank()] if dist.rank() < len(rngs) else rngs[0])
        self.last_checkpoint, self._saved_step = path, self.step
        if self.cfg.deepspeed.precision == "auto" and state.get("autocast", self.precision.autocast) != \
                self.precision.autocast:  # the probe may differ under other load: compute as the original run did
            self.precision = precision_mod.RunPrecision(self.precision.storage, state["autocast"],
                                                        "auto: as the resumed checkpoint's run")
        _log(f"resumed from {path} at step {self.step}")
        return state.get("wandb_run_id")

    # ---- one step -------------------------------------------------------------------------------------
    def train_step(self, step: int) -> None:
        """One optimizer step. Nothing in it waits for the device: its numbers go to ``self.pending`` and are
        read back by :meth:`settle` (trainer/pending.py says why)."""
        cfg = self.cfg
        accumulation = cfg.optim.gradient_accumulation_steps
        lr = lr_at(step - 1, cfg.optim.max_steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        set_lr(self.engine.optimizer, lr)
        self.mode.zero_grad()
        extras, skipped = {}, False
        for micro in range(accumulation):
            batch = self.sampler.next_batch()
            tokens, domain_ids = (dist.to_device(batch[k], self.device) for k in ("tokens", "domain_ids"))
            if self.distill:
                self.distill.run_teacher(tokens[:, :-1])  # no grad, same micro-batch
            with self.precision.context(self.device.type):
                tok_loss, logits = self._token_losses(tokens, self.mode.train_masks(step, micro))
            if faults.nan_at(step):  # as a real NaN forward gives it: in the per-token losses, not their gradient
                tok_loss = tok_loss + float("nan")
            if faults.spike_at(step):
                tok_loss = tok_loss * 1000.0
            self.tracker.add(tok_loss, domain_ids)
            loss = tok_loss.mean()
            if self.distill:  # (1 - alpha) LM + alpha KD; the tracker above keeps the LM loss (DRO signal)
                loss = self.distill.blend(loss, logits)
            for name, term in self.mode.loss_terms(step, micro).items():
                loss = loss + term
                part = term.detach() / accumulation
                extras[name] = part if name not in extras else extras[name] + part
            # spike_guard=skip decides before the backward: one host read per micro-batch (that mode only)
            if self.spike.action == "skip" and not skipped and self._micro_spikes(tok_loss):
                skipped = True
                set_lr(self.engine.optimizer, 0.0)  # this step leaves the weights where they are
            if skipped:
                loss = loss * 0.0
            # engine.backward scales by 1/accumulation, for the masks' gradients too.
            self.engine.backward(loss)
            self.engine.step()
        self.mode.after_step(step)
        loss_sum, count = self.tracker.reduce()
        sparsity = self.mode.sparsity()
        self.pending.add(StepNumbers(
            step, 0.0 if skipped else lr, accumulation * cfg.optim.micro_batch_size * cfg.data.seq_length *
            self.group.size, loss_sum, count, extras, None if sparsity is None else torch.as_tensor(sparsity),
            self.distill.step_mean() if self.distill else None, skipped))

    def settle(self) -> Optional[dict]:
        """Read the pending steps back (one device-to-host copy) and apply them in step order: the divergence
        and spike checks, the spike guard's and the reweighting rule's observations (and new sampler weights at
        the rule's update steps), tokens seen.
        Returns the last step's record for the log, or None when nothing was pending."""
        from megadrp.dro import mean_losses

        out = None
        for s in self.pending.read():
            lm_loss = float(s.loss_sum.sum() / s.count.sum().clamp(min=1))
            extras = {name: float(v) for name, v in s.extras.items()}
            loss_total = lm_loss + sum(extras.values())
            if s.kd_loss is not None:
                extras["kd_loss"] = float(s.kd_loss)
                loss_total += self.distill.alpha * (extras["kd_loss"] - lm_loss)
            last_good = (f"Last good checkpoint: {self.last_checkpoint or 'none written yet'} (resume with --resume "
                         f"auto, perhaps with a lower optim.lr)")
            if not math.isfinite(loss_total):
                raise TrainingDiverged(f"loss is {loss_total} at step {s.step}; stopping without checkpointing this "
                                       f"state. {last_good}")
            if self.spike.action == "stop" and self.spike.is_spike(lm_loss):
                raise TrainingDiverged(f"{self.spike.describe(s.step, lm_loss)}; stopping without checkpointing "
                                       f"this state. {last_good}; optim.spike_guard=skip skips such steps instead")
            if s.skipped:
                _log(f"step {s.step} skipped (weights unchanged): {self.spike.describe(s.step, lm_loss)}")
            else:
                self.spike.observe(lm_loss)
                self.reweighter.observe(s.step, s.loss_sum, s.count,
                                        sparsity=None if s.sparsity is None else float(s.sparsity),
                                        eval_losses=self._heldout_for_rule(s.step))
                new_weights = self.reweighter.maybe_update(s.step)
                if new_weights is not None:
                    self.sampler.set_weights(new_weights)
            self.tokens_seen += int(s.count.sum())
            means, present = mean_losses(s.loss_sum, s.count)
            out = {"step": s.step, "loss": loss_total, "lm_loss": lm_loss, "lr": s.lr, "extras": extras,
                   "skipped": s.skipped,
                   "domain_loss": {d: float(m) for d, m, p in zip(self.cfg.data.domains, means, present) if p}}
        return out

    def _must_settle(self, step: int) -> bool:
        """Steps after which the host needs the numbers: a log line, a DRO update (the next batch is drawn with
        its weights), a held-out eval or checkpoint (never of a diverged state), the last step; every step under
        spike_guard=skip (its per-micro-batch check reads the guard's history, which must be current)."""
        cfg = self.cfg
        return (self.spike.action == "skip" or step % cfg.logging.log_interval == 0 or step == cfg.optim.max_steps
                or step % self.reweighter.update_interval == 0 or step % cfg.checkpoint.save_interval == 0
                or bool(cfg.logging.eval_interval and step % cfg.logging.eval_interval == 0))

    def _micro_spikes(self, tok_loss: torch.Tensor) -> bool:
        """Collective (spike_guard=skip): whether this micro-batch's mean LM loss over every rank spikes."""
        both = self.group.all_reduce_sum(torch.stack([tok_loss.detach().float().sum().cpu(),  # host: on GPUs too
                                                      torch.tensor(float(tok_loss.numel()))]))
        return self.spike.is_spike(float(both[0] / both[1].clamp(min=1)))

    def _token_losses(self, tokens: torch.Tensor, masks):
        """(fp32 per-token CE [B, T-1], the logits or None) of one forward: the CE fused with the LM head (no
        [B, T, V] logits) unless a distillation term reads the student's logits or model.fused_cross_entropy
        is off."""
        if self.cfg.model.fused_cross_entropy and not self.distill:
            return self.engine(tokens[:, :-1], masks, targets=tokens[:, 1:]), None
        logits = self.engine(tokens[:, :-1], masks)
        return token_cross_entropy(logits, tokens[:, 1:]), logits

    def _heldout_for_rule(self, step: int):
        """Sheared-LLaMA's rule updates from held-out losses: evaluate at its update steps (an eval record)."""
        rule = self.reweighter
        if self.heldout is None or not rule.uses_heldout_losses or step % rule.update_interval:
            return None
        losses = self.evaluate(step)["eval_loss"]
        return [losses.get(d, float("nan")) for d in self.cfg.data.domains]

    # ---- the run --------------------------------------------------------------------------------------
    def train(self) -> int:
        cfg = self.cfg
        if self.step >= cfg.optim.max_steps:
            _log(f"nothing to do: the run is already at step {self.step} of {cfg.optim.max_steps}")
            self.wandb.finish()
            return 0
        _log(f"{cfg.mode}: steps {self.step + 1}..{cfg.optim.max_steps}, world size {self.group.size}, "
             f"{self.precision.describe()}, ZeRO stage {engine_mod.zero_stage(self.inputs.ds_config)}"
             + (f" ({self.inputs.zero_reason})" if self.inputs.zero_reason else ""))
        self._clock = (time.perf_counter(), self.step)  # this process's start: elapsed time and the ETA
        try:
            while self.step < cfg.optim.max_steps:
                self._stop_if_signalled()
                self.run_step()
            if self.heldout is not None and self._last_eval_step != self.step:
                self.evaluate(self.step)
        finally:
            self.wandb.finish()
        return 0

    def _stop_if_signalled(self) -> None:
        """At a step boundary: if any rank got SIGTERM/SIGUSR1 (trainer/stop_signal.py), checkpoint the finished
        step (unless it is saved already) and stop with RunInterrupted, which train.py turns into exit 75."""
        signum = stop_signal.requested_on_any_rank(self.group)
        if signum is None:
            return
        if self.step > 0 and self._saved_step != self.step:
            self.save()
        raise stop_signal.RunInterrupted(signum, self.step, self.last_checkpoint)

    def run_step(self) -> None:
        """The next step as `train` runs it: the step, then at the steps that need them (``_must_settle``) its
        numbers read back, the log line, the held-out eval and the checkpoint. tokens/s counts the steps and the
        wait for the device at a read-back; evaluation, checkpoints and logging are outside the window."""
        cfg = self.cfg
        step = self.step + 1
        t0 = time.perf_counter()
        self.train_step(step)
        self.step = step
        self._window_tokens += self.cfg.optim.gradient_accumulation_steps * cfg.optim.micro_batch_size * \
            cfg.data.seq_length * self.group.size
        out = self.settle() if self._must_settle(step) else None
        self._window_time += time.perf_counter() - t0
        if step % cfg.logging.log_interval == 0 or step == cfg.optim.max_steps:
            self._log_step(step, out, self._window_tokens / max(self._window_time, 1e-9))
            self._window_tokens, self._window_time = 0, 0.0
        if self.heldout is not None and cfg.logging.eval_interval and step % cfg.logging.eval_interval == 0 \
                and step != cfg.optim.max_steps and self._last_eval_step != step:
            self.evaluate(step)
        if step % cfg.checkpoint.save_interval == 0 or step == cfg.optim.max_steps:
            self.save()
        faults.step_sleep()

    def _log_step(self, step: int, out: dict, tokens_per_s: float) -> None:
        rec = {"kind": "train", "step": step, "loss": out["loss"], "lm_loss": out["lm_loss"],
               "lagrangian": out["extras"].get("lagrangian", 0.0), "lr": out["lr"], "tokens_per_s": tokens_per_s,
               "mfu": mfu_mod.mfu(tokens_per_s, self.flops_per_token, self.peak, dist.world_size()),
               "tokens_seen": self.tokens_seen,
               "domain_weights": dict(zip(self.cfg.data.domains, map(float, self.reweighter.weights))),
               "domain_loss": out["domain_loss"]}
        if out.get("skipped"):
            rec["skipped"] = True
        rec.update({k: v for k, v in out["extras"].items() if k != "lagrangian"})
        rec.update(self.mode.metrics(step))
        # Wall time since this process started training, and the rest at its average pace so far (checkpoints and
        # evaluations included, as the user waits for them too).
        started, first = getattr(self, "_clock", None) or (time.perf_counter(), step - 1)  # set by train()
        rec["elapsed_s"] = time.perf_counter() - started
        rec["eta_s"] = rec["elapsed_s"] / max(step - first, 1) * (self.cfg.optim.max_steps - step)
        self.metrics.write(rec)
        self.wandb.log(rec)
        _log(step_line(rec, self.cfg.optim.max_steps, self.mode.step_line(rec)))

    def evaluate(self, step: int) -> dict:
        rec = {"kind": "eval", "step": step, **self.heldout.run(self.engine, self.mode.eval_masks(), self.device)}
        self._last_eval_step = step
        self.metrics.write(rec)
        self.wandb.log(rec)
        _log(f"eval step {step} | " + " ".join(f"{d}={v:.4f}" for d, v in rec["eval_loss"].items()))
        return rec

    def save(self) -> None:
        cfg = self.cfg
        self.settle()  # steps not read back yet (a stop signal's save): never checkpoint unchecked numbers
        # what the run is (export and resume read these) and where it stands, then every registered part's state
        state = {"step": self.step, "mode": cfg.mode, "config": to_dict(cfg), "family": self.family.name,
                 "world_size": self.group.size, "source_shape": self.shape.to_dict(), "tokens_seen": self.tokens_seen,
                 "domain_weights": dict(zip(cfg.data.domains, map(float, self.reweighter.weights))),
                 "wandb_run_id": self.wandb.run_id, "tokenizer": self.inputs.tokenizer_path,
                 "autocast": self.precision.autocast,
                 "data": self.inputs.data_fingerprint or {},  # what the sampler positions index (resume_check)
                 "method_card": self.inputs.method.card_sentence(cfg.dro.method),
                 **self.stateful.state_dict()}
        self._check_ranks_agree(state["mode_state"])
        self.last_checkpoint = checkpoint.save(self.engine, cfg.run_dir, self.step, state, cfg.checkpoint.keep_last,
                                               self.inputs.tokenizer_path)
        self._saved_step = self.step
        _log(f"checkpoint {self.last_checkpoint}")


    def _check_ranks_agree(self, mode_state: dict) -> None:
        """Masks, multipliers and domain weights must be bit-identical on every rank (they are replicated state
        updated from all-reduced numbers); a checkpoint of diverged replicas would resume differently."""
        import hashlib

        h = hashlib.sha256(str(self.reweighter.weights.tolist()).encode())
        for v in mode_state.values():
            for t in (v.values() if isinstance(v, dict) else []):
                if isinstance(t, torch.Tensor):
                    h.update(t.detach().cpu().numpy().tobytes())
        digests = self.group.all_gather_object(h.hexdigest())
        if len(set(digests)) != 1:
            raise RuntimeError(f"replicated state differs between ranks at step {self.step}: {digests}")
