"""``cpt``: continued pretraining of a dense (exported) model; domain reweighting stays on in the loop."""
from __future__ import annotations

from megadrp.methods.base import Mode


class CptMode(Mode):
    """Dense training with no extras: every hook is the base's."""

    name = "cpt"
