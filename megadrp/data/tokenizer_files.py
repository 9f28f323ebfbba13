"""The files that travel with a model's weights: tokenizer, special tokens, chat template, generation config.

A checkpoint keeps a copy of them (``step_N/tokenizer/``, docs/ARCHITECTURE.md) and an export writes them
next to the pruned weights (docs/EXPORT.md), so that what users publish tokenizes, chats and generates like
the source: ``tokenizer.apply_chat_template`` needs the chat template, and ``model.generate`` reads its
defaults (eos/pad ids, sampling settings) from ``generation_config.json``.

``copy_model_files(sources, dst)`` takes, from an ordered list of folders (the checkpoint's copy first,
the source model folder next):
- the tokenizer files of the first folder that has a tokenizer (never a mix of two tokenizers);
- the chat template of that folder, else of the first later folder that has one (``chat_template.jinja``,
  ``chat_template.json``, ``additional_chat_templates/``, or a ``chat_template`` string in its
  ``tokenizer_config.json``, written out as ``chat_template.jinja`` as transformers 5 saves it);
- the first ``generation_config.json`` found;
- with ``keep_source_card`` (checkpoints), the source's README.md and license files too, so that an export
  made from the checkpoint alone still knows the source's Hub id and license (megadrp.export.provenance).
Files are copied byte for byte: nothing is re-serialised, so fields this version of transformers does not
know survive.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Optional

# The files that define a tokenizer across fast/slow/sentencepiece/BPE/WordPiece variants.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "spiece.model")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
CHAT_TEMPLATE_DIR = "additional_chat_templates"
GENERATION_CONFIG = "generation_config.json"
SOURCE_CARD = "README.md"
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE", "USE_POLICY.md")


def _folders(sources: Iterable) -> list[Path]:
    return [Path(s) for s in sources if s and Path(s).is_dir()]


def tokenizer_files(folder: Path) -> list[str]:
    """The tokenizer files of ``folder``: the known names, and any other ``tokenizer*`` file (e.g. tiktoken's)."""
    others = sorted(f.name for f in folder.glob("tokenizer*") if f.is_file() and f.name not in TOKENIZER_FILES)
    return [f for f in TOKENIZER_FILES if (folder / f).is_file()] + others


def _config_template(folder: Path) -> Optional[str]:
    """The ``chat_template`` string of a folder's tokenizer_config.json (the pre-transformers-5 place)."""
    cfg = folder / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
    except (ValueError, AttributeError):
        return None
    return template if isinstance(template, str) and template else None


def has_chat_template(folder: Path) -> bool:
    return (any((folder / f).is_file() for f in CHAT_TEMPLATE_FILES) or (folder / CHAT_TEMPLATE_DIR).is_dir()
            or _config_template(folder) is not None)


def _copy_chat_template(src: Path, dst: Path) -> None:
    copied = [f for f in CHAT_TEMPLATE_FILES if (src / f).is_file()]
    for f in copied:
        shutil.copy2(src / f, dst / f)
    if (src / CHAT_TEMPLATE_DIR).is_dir():
        shutil.copytree(src / CHAT_TEMPLATE_DIR, dst / CHAT_TEMPLATE_DIR, dirs_exist_ok=True)
    # A template kept only in the tokenizer_config of another folder than the tokenizer's: its own file.
    if not copied and _config_template(dst) is None and _config_template(src) is not None:
        (dst / "chat_template.jinja").write_text(_config_template(src), encoding="utf-8")


def copy_model_files(sources: Iterable, dst, keep_source_card: bool = False) -> Optional[Path]:
    """Copy tokenizer, chat template and generation config from ``sources`` (first wins) into ``dst``.

    Returns the folder the tokenizer came from, or None when no source has one (the chat template and
    generation config are still copied when found).
    """
    folders, dst = _folders(sources), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = next((f for f in folders if tokenizer_files(f)), None)
    if tokenizer_dir is not None:
        for name in tokenizer_files(tokenizer_dir):
            shutil.copy2(tokenizer_dir / name, dst / name)
    # The tokenizer's own folder first: its template was written for its special tokens.
    ordered = ([tokenizer_dir] if tokenizer_dir is not None else []) + [f for f in folders if f != tokenizer_dir]
    template_dir = next((f for f in ordered if has_chat_template(f)), None)
    if template_dir is not None:
        _copy_chat_template(template_dir, dst)
    gen_dir = next((f for f in folders if (f / GENERATION_CONFIG).is_file()), None)
    if gen_dir is not None:
        shutil.copy2(gen_dir / GENERATION_CONFIG, dst / GENERATION_CONFIG)
    card_files = (SOURCE_CARD, *LICENSE_FILES) if keep_source_card else ()
    card_dir = next((f for f in folders if any((f / n).is_file() for n in card_files)), None)
    for name in card_files if card_dir is not None else ():
        if (card_dir / name).is_file():
            shutil.copy2(card_dir / name, dst / name)
    return tokenizer_dir
