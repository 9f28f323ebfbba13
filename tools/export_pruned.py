"""Export a megadrp prune/cpt checkpoint to a dense Hugging Face folder (same as ``megadrp export``).

    python tools/export_pruned.py RUN_DIR --output OUT [--dtype bfloat16] [--push-to-hub REPO_ID [--private]]
"""
import sys

from megadrp.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
