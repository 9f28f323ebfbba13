"""megadrp: DeepSpeed/Megatron-scale structured pruning of LLMs (DRPruning, DReSS).

Layout (docs/ARCHITECTURE.md): ``config`` (typed run config), ``kernels`` (masked ops, the per-token
cross-entropy), ``model`` (masked decoder families, the unit table), ``masks`` (hard-concrete masks,
Lagrangian), ``data`` (indexed binaries, domain sampler), ``dro`` (domain reweighting), ``trainer`` (the
DeepSpeed ZeRO-3 step loop), ``methods`` (prune, cpt, dress: the loop's modes), ``run_format`` (the run
directory on disk), ``export`` (dense HF export), ``eval`` (per-domain evaluation, reports), ``eval_results``
(their tables); ``experiments`` (corpus builder, pipelines) is fenced off from the core.
"""
__version__ = "0.1.0"
