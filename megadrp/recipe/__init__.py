"""Recipes end to end: `megadrp run --config RECIPE.yaml` (runner.py) over cached, resumable stages (stages.py)."""
