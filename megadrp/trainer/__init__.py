"""The trainer: wires model, masks, data and domain reweighting onto a DeepSpeed ZeRO-3 engine.

Layout (one purpose per module):
  dist.py          process-group set-up (launcher env or in-process), the DataParallelGroup every collective
                   of the loop and the methods runs over
  lr_schedule.py   client-side cosine schedule with warm-up (DeepSpeed schedulers would overwrite every group)
  optim.py         weight param groups and the side optimizer of masks / Lagrange multipliers
  engine.py        zero.Init construction, HF weight loading under ZeRO-3, deepspeed.initialize
  build.py         everything built from the config, with every pre-flight check before any work
  checkpoint.py    writing checkpoints (atomic, `latest` last, keep_last) and loading DeepSpeed's part; the
                   layout and reading it are megadrp.run_format's
  metrics.py       rank-0 step line, metrics.jsonl, wandb
  mfu.py           model FLOPs per token and peak FLOPs by device
  periodic_eval.py held-out per-domain evaluation during the run, under megadrp.eval's protocol
  faults.py        documented fault-injection hooks used by the tests
  loop.py          the Trainer: the step loop itself, handed a method (megadrp.methods) by megadrp/train.py
"""
from megadrp.trainer.loop import Trainer, TrainingDiverged

__all__ = ["Trainer", "TrainingDiverged"]
