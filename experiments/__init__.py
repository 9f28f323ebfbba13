"""Experiments and their support, outside the installed package (the wheel ships only ``megadrp``): the corpus
builder (``python -m experiments.corpus_build``: corpus_*.py, roff.py), the method comparison's seed-aware tables,
claims and reading (comparison.py), a plain-torch DReSS loop for small CPU experiments (dress_loop.py) and the
benchmark-only hard-mask ops (hard_mask_ops.py). Run from the repository root (tools/ scripts put it on sys.path);
they drive megadrp's public API, and nothing in megadrp imports them."""
