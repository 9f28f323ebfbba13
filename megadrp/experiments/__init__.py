"""The demo/comparison pipelines' cached stages (pipeline.py). The corpus builder, the comparison's tables, the
plain-torch DReSS loop and the hard-mask ops live outside the package, in the repository's experiments/ folder.
Nothing in the core imports this package."""
