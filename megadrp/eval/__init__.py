"""Evaluation: per-domain loss / perplexity / bits per byte on held-out text, the lm-eval adapter, run reports.

The pinned protocol is in docs/EVALUATION.md. Submodules are imported lazily by callers so that
``import megadrp.eval`` stays cheap (matplotlib and transformers load only when used).
"""
