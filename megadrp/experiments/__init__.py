"""Experiments fenced off from the core: the corpus builder, the demo/comparison pipelines, the plain-torch
DReSS loop and the benchmark-only hard-mask ops. Nothing in the core imports this package."""
