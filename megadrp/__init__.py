"""megadrp: DeepSpeed/Megatron-scale structured pruning of LLMs (DRPruning, DReSS).

Layout: ``config`` (typed run config), ``model`` (masked decoder families), ``masks`` (hard-concrete
masks, Lagrangian), ``kernels`` (Triton masked ops + PyTorch references), ``data`` (indexed binaries,
domain sampler), ``dro`` (per-domain loss tracking and domain reweighting), ``trainer``/``train``
(DeepSpeed ZeRO-3 loop), ``export`` (dense HF export), ``eval`` (per-domain evaluation, reports).
"""
__version__ = "0.1.0"
