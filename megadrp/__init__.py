"""megadrp: DeepSpeed/Megatron-scale structured pruning of LLMs (DRPruning, DReSS).

Layout (docs/ARCHITECTURE.md): ``config`` (typed run config), ``kernels`` (masked ops, the per-token
cross-entropy), ``model`` (masked decoder families, the unit table), ``masks`` (hard-concrete masks,
Lagrangian), ``data`` (indexed binaries, domain sampler), ``dro`` (domain reweighting), ``trainer`` (the
DeepSpeed ZeRO-3 step loop), ``methods`` (prune, cpt, dress: the loop's modes), ``run_format`` (the run
directory on disk), ``export`` (dense HF export), ``eval`` (per-domain evaluation, reports), ``eval_results``
(their tables), ``recipe`` (`megadrp run`: a recipe's cached stages, driving the subcommands as processes). The
corpus builder, the comparison and the benchmarks live outside the package (experiments/, tools/).
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"


def _drop_own_folder_from_sys_path() -> None:
    """Our subpackages (kernels, config, data, model, ...) must never be importable as *top-level* modules: when
    megadrp/ itself is on sys.path (Python started inside it, or a script of it run directly), ``kernels`` would
    hide the PyPI package transformers imports. Only this exact folder is removed; megadrp/train.py does the same
    before its first import, since a launcher runs it as a script."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != here]


_drop_own_folder_from_sys_path()
