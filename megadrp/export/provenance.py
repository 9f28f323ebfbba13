"""What an export inherits from its source model: the source's name for ``base_model``, and its license.

``base_model`` (Hub model-card metadata) names the model this one derives from. It is the source's Hub id
when one is known, found in this order:
1. the source given as a Hub id (``org/name``, not an existing path);
2. ``megadrp_source_id`` in the source's README front matter, written by tools that make a local copy of a
   Hub model (``tools/convert_smollm2.py``);
3. ``_name_or_path`` in the source's config.json, when it is a Hub id (transformers before v5 wrote it);
4. a Hugging Face cache path (``.../models--ORG--NAME/snapshots/REV``).
Otherwise it is the source folder's *name*: a local absolute path never goes into a published card.

The license comes from the source's README front matter (``license``, and ``license_name`` /
``license_link`` for ``other``), else a ``license`` key in its config.json, else its LICENSE file, whose
opening words name the common licenses; a LICENSE file is copied into the export in every case, since most
licenses require that it travels with the weights. A checkpoint keeps the source's README and license files
in its ``tokenizer/`` copy, which stands in for the source folder when that is gone by export time.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from megadrp.data.tokenizer_files import LICENSE_FILES

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HF_CACHE = re.compile(r"^models--[A-Za-z0-9][\w.-]*--[\w.-]+$")  # huggingface_hub's cache folder of ORG/NAME
# (words the license text opens with, lower-cased; Hub license id), first match wins.
_LICENSE_TEXTS = (
    (("apache license", "version 2.0"), "apache-2.0"),
    (("mit license",), "mit"),
    (("permission is hereby granted, free of charge",), "mit"),
    (("gnu general public license", "version 3"), "gpl-3.0"),
    (("gnu lesser general public license", "version 3"), "lgpl-3.0"),
    (("creative commons attribution 4.0",), "cc-by-4.0"),
    (("creative commons attribution-noncommercial 4.0",), "cc-by-nc-4.0"),
    (("llama 2 community license",), "llama2"),
    (("llama 3.1 community license",), "llama3.1"),
    (("llama 3.2 community license",), "llama3.2"),
    (("llama 3 community license",), "llama3"),
)


def _is_hub_id(name) -> bool:
    return isinstance(name, str) and bool(_HUB_ID.match(name)) and not Path(name).exists()


def source_metadata(source: Optional[str]) -> dict:
    """The YAML front matter of the source folder's README.md ({} when it has none or it does not parse)."""
    if not source or not (Path(source) / "README.md").is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(Path(source) / "README.md").data.to_dict()
    except Exception:  # a malformed source card must not block the export; it only loses what it would give
        return {}


def _json_file(source: Optional[str], name: str) -> dict:
    """The source folder's JSON file ``name`` ({} when it is missing or does not parse)."""
    path = Path(source) / name if source else None
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}


def _config(source: Optional[str]) -> dict:
    return _json_file(source, "config.json")


def megadrp_origin(source: Optional[str]) -> dict:
    """The record (megadrp_export.json) of a source that is itself a megadrp export, e.g. a one-shot cut that
    `megadrp cpt` recovered; {} for any other source."""
    return _json_file(source, "megadrp_export.json")


def inherited_base_model(source: Optional[str]) -> Optional[str]:
    """The base_model a megadrp-export source's card names (None for any other source)."""
    return source_metadata(source).get("base_model") if megadrp_origin(source) else None


def source_hub_id(source: Optional[str]) -> Optional[str]:
    """The source's Hub id by the rules of this module's docstring, or None when none is known. A source that
    is a megadrp export passes on its own base_model: the lineage's Hub model, not an unpublished local step."""
    if not source:
        return None
    if _is_hub_id(source):
        return source
    for name in (inherited_base_model(source), source_metadata(source).get("megadrp_source_id"),
                 _config(source).get("_name_or_path")):
        if _is_hub_id(name):
            return name
    cached = next((p for p in Path(source).absolute().parts if _HF_CACHE.match(p)), None)
    return cached[len("models--"):].replace("--", "/", 1) if cached else None


def base_model_id(source: Optional[str]) -> Optional[str]:
    """``base_model`` for the card: the source's Hub id, else its folder name (never a path), else None."""
    if not source:
        return None
    return source_hub_id(source) or inherited_base_model(source) or Path(str(source).rstrip("/\\")).name or None


def license_files(source: Optional[str]) -> list[Path]:
    """The source folder's license files (copied into the export)."""
    if not source or not Path(source).is_dir():
        return []
    return [Path(source) / f for f in LICENSE_FILES if (Path(source) / f).is_file()]


def license_from_text(text: str) -> Optional[str]:
    """The Hub license id of a license text, from its opening words; None when none of the known ones."""
    head = " ".join(text[:600].lower().split())
    for words, license_id in _LICENSE_TEXTS:
        if all(w in head for w in words):
            return license_id
    return None


def source_license(source: Optional[str]) -> dict:
    """``{"license", "license_name"?, "license_link"?}`` of the source, or {} when it states none."""
    meta = source_metadata(source)
    if meta.get("license"):
        return {k: str(meta[k]) for k in ("license", "license_name", "license_link") if meta.get(k)}
    if _config(source).get("license"):
        return {"license": str(_config(source)["license"])}
    files = [f for f in license_files(source) if f.name.startswith("LICENSE")]
    if files:
        found = license_from_text(files[0].read_text(encoding="utf-8", errors="replace"))
        if found:
            return {"license": found}
        return {"license": "other", "license_name": "source-license", "license_link": files[0].name}
    return {}
