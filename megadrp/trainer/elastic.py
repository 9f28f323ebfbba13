"""Elastic resume: continue a run checkpointed at world size N on M ranks (docs/TRAINING.md, "Elastic resume").

ZeRO partitions the fp32 master weights and Adam moments by data-parallel rank, so a checkpoint written by N
ranks holds N flat shards that an M-rank engine refuses ("DP world size of N but the current world size is M").
When the saved and current world sizes differ, rank 0 converts the checkpoint once, in place, to a DeepSpeed
*universal* checkpoint (``deepspeed.checkpoint.ds_to_universal``: one file per parameter and state, any
partitioning), written to ``step_K/universal/`` through a temporary folder and a rename, so a kill mid-way leaves
no half-converted folder that a later resume would trust. The run's DeepSpeed config then gets
``checkpoint.load_universal = true`` *before* ``deepspeed.initialize``, and the engine loads from that folder.

What carries over, and why nothing else is needed:
- weights, fp32 master weights and Adam moments (and the optimizer step count): the universal checkpoint;
- megadrp's own state (masks, multipliers, their optimizer, domain weights, reference losses, the fit
  history): replicated on every rank, saved once by rank 0, independent of the world size;
- the data position: the sampler's state is *global* (per-domain cursors of sequences consumed by all ranks
  together, megadrp/data/sampler.py), so M ranks continue every domain at exactly the sequence where the N
  ranks stopped. Guaranteed: no sequence of any domain is read twice or skipped, in each domain's order.
  Not guaranteed: the same batches as an N-rank run would have drawn, unless micro_batch_size x world size
  (the slots of one sampler draw) is kept, e.g. micro 2 on 2 ranks -> micro 4 on 1 rank, which reproduces
  the N-rank losses up to float summation order (tests/trainer/test_train_elastic.py);
- per-rank RNG state: rank r restores rank r's state when the checkpoint has one, else rank 0's (megadrp
  draws masks and data from seeded generators, so no result depends on it).
The global batch (micro x accumulation x world size) changes with M unless ``optim.global_batch_size`` is set,
in which case the pre-flight check names the ``gradient_accumulation_steps`` that keeps it.

``--init-from`` a checkpoint (weights only, any world size) goes through DeepSpeed's fp32 consolidation on
rank 0 (one fp32 copy in host memory, docs/BENCHMARKS.md), copied in before ``initialize`` like source weights,
so ZeRO's master copy starts from them. (The engine's module-only load it replaces restored other weights
under ZeRO-3: on the tests' tiny model its first loss was 5.851 where the checkpoint's consolidated weights
give 5.907.)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
from pathlib import Path
from typing import Optional

from megadrp.trainer import dist
from megadrp.trainer.engine import zero_stage

UNIVERSAL = "universal"
# ZeRO >= 1 writes one optimizer shard per data-parallel rank: [bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt
_OPTIM_SHARD = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def saved_world_size(ckpt: Path) -> Optional[int]:
    """Data-parallel size a checkpoint was written with (from its optimizer shards); None without ZeRO shards."""
    ranks = [int(m.group(1)) for f in Path(ckpt).iterdir() if (m := _OPTIM_SHARD.match(f.name))]
    return max(ranks) + 1 if ranks else None


def convert_to_universal(ckpt: Path) -> Path:
    """``ckpt/universal`` (made once; idempotent). Single process: call on rank 0 only."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    ckpt = Path(ckpt)
    final, tmp = ckpt / UNIVERSAL, ckpt / f".{UNIVERSAL}_tmp"
    if (final / "zero").is_dir():
        return final
    shutil.rmtree(tmp, ignore_errors=True)  # debris of a conversion killed earlier
    # One worker each: the conversion is I/O bound and runs while the other ranks wait in a barrier.
    args = argparse.Namespace(input_folder=str(ckpt), output_folder=str(tmp), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=False)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):  # DeepSpeed's progress bars
            ds_to_universal(args)
    except Exception as err:
        raise RuntimeError(f"cannot convert {ckpt} to a DeepSpeed universal checkpoint for a resume at another "
                           f"world size: {type(err).__name__}: {err}. Every rank's shard files must be present; "
                           f"or resume at the world size it was written with ({saved_world_size(ckpt)}). "
                           f"Converter output: {log.getvalue()[-500:]}") from err
    (ckpt / "latest_universal").unlink(missing_ok=True)  # ds_to_universal's pointer names the temp folder
    tmp.rename(final)
    return final


def prepare_resume(ckpt: Optional[Path], ds_config: dict, world_size: int) -> Optional[Path]:
    """Collective. The folder DeepSpeed should load ``ckpt``'s engine state from at ``world_size``: ``ckpt``
    itself when the world size is unchanged (or ZeRO is off), else its universal conversion, in which case
    ``ds_config`` is switched to loading universal checkpoints (call before ``deepspeed.initialize``)."""
    if ckpt is None:
        return None
    saved = saved_world_size(ckpt)
    if saved is None or saved == world_size or zero_stage(ds_config) == 0:
        return ckpt
    if dist.is_main():
        print(f"[megadrp] elastic resume: {ckpt} was written by {saved} ranks, this run has {world_size}; "
              f"loading it through a universal checkpoint ({ckpt / UNIVERSAL})", flush=True)
    error = ""
    if dist.is_main():
        try:
            convert_to_universal(ckpt)
        except Exception as err:  # reported on every rank so none waits in a collective
            error = str(err)
    error = dist.all_gather_object(error)[0]
    if error:
        raise RuntimeError(error)
    ds_config.setdefault("checkpoint", {})["load_universal"] = True
    return ckpt / UNIVERSAL


def read_checkpoint_weights(ckpt, family) -> dict:
    """{internal name: fp32 tensor} of a checkpoint's module, from every rank's shards (any world size).
    The signature of engine.load_source_weights's ``read``; called on rank 0 only."""
    from megadrp.export.consolidate import consolidate

    return consolidate(Path(ckpt))
