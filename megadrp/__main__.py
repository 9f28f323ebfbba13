"""``python -m megadrp``: the same as the ``megadrp`` command."""
import sys

from megadrp.cli import main

sys.exit(main())
