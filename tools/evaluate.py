"""Thin wrapper of ``megadrp eval`` for use without installing the package: ``python tools/evaluate.py --help``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megadrp.eval.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
