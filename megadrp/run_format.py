"""The run format, in one home: file names, megadrp's state without pickle, checksums, `latest`, resolution.

    RUN_DIR/checkpoints/step_N/   DeepSpeed's files, megadrp_state.json + megadrp_state.safetensors (STATE_FILE
                                  is the JSON: its presence marks a complete checkpoint), tokenizer/, and
                                  megadrp_manifest.json (sha256 + size of every other file, written last)
    RUN_DIR/checkpoints/latest    the name of the newest complete step_N (a hint: resolution falls back to
                                  the newest complete step_N when it is missing or names a torn folder)
    RUN_DIR/config.yaml           the resolved config (CONFIG_FILE)
    RUN_DIR/metrics.jsonl         one JSON record per line, written by the trainer (METRICS_FILE)
    RUN_DIR/pruned/               the dense HF folder of a cut: DReSS's at its last step, the one-shot cut's

State without pickle (docs/ARCHITECTURE.md, "Checkpoint contents"): the tensors of the state go into the
safetensors file, the rest into JSON (megadrp.state_codec), so reading a state can never run code. The state
of older versions (torch.save'd `megadrp_state.pt`) is refused with the command that converts a trusted one:
`python -m megadrp.run_format convert-legacy STEP_DIR`. DeepSpeed's own files are pickles DeepSpeed loads
unrestricted; `check_deepspeed_files` loads each with weights_only=True first and refuses any that fails.

A mode's own state (the prune masks and multipliers, DReSS's selection) sits under ``"mode_state"``, saved once.

API: write_state / read_state / mode_state, write_manifest / verify_manifest (checksums), write_latest / read_latest,
list_checkpoints / newest_complete, resolve (trainer: 'auto' | PATH) and find_checkpoint (export / eval).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Optional

import torch

from megadrp.state_codec import decode, encode

STATE_FILE = "megadrp_state.json"  # written after the tensors: a complete state has it
STATE_TENSORS = "megadrp_state.safetensors"
LEGACY_STATE = "megadrp_state.pt"  # torch.save (pickle) of megadrp <= this issue: refused, convertible
MANIFEST = "megadrp_manifest.json"
LATEST = "latest"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
PRUNED_DIR = "pruned"
FORMAT_VERSION = 2
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    """The checkpoint folder name of ``step`` (the state after that many optimizer steps)."""
    return f"step_{step}"


class RunFormatError(FileNotFoundError, ValueError):
    """A run directory or checkpoint that cannot be read as asked; the message names the file and the fix.

    Both a FileNotFoundError (what a missing checkpoint is) and a ValueError (what a damaged one is), so callers
    catching either see it."""


# ---- state: tensors in safetensors, everything else in tagged JSON (megadrp.state_codec) ----------------
def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)``, fsync, then rename over ``path``: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def plain_file_mode(path) -> None:
    """Give a file the mode the process's umask gives any new file (0644 under the usual 022): safetensors'
    writer creates its files 0600, which left model and state files unreadable to the group alone."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_state(folder, state: dict) -> None:
    """megadrp's state of a checkpoint into ``folder``: the tensors first, the JSON (the marker) last."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tree, tensors = encode(state)
    doc = {"format": FORMAT_VERSION, "state": tree}
    text = json.dumps(doc, indent=1)  # allow_nan: a NaN metric survives (as the JSON extension NaN)
    _atomic_write(folder / STATE_TENSORS, lambda p: (save_file(tensors, str(p)), plain_file_mode(p)))
    _atomic_write(folder / STATE_FILE, lambda p: p.write_text(text, encoding="utf-8"))


def read_state(folder) -> dict:
    """The state written by ``write_state``; never unpickles. Errors name the file and what to do."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / STATE_FILE
    if not path.is_file():
        if (folder / LEGACY_STATE).is_file():
            raise RunFormatError(
                f"{folder / LEGACY_STATE} is megadrp's old state format (a pickle, which can run code when "
                f"loaded); this version does not load it. If you trust the run that wrote it, convert it once: "
                f"python -m megadrp.run_format convert-legacy {folder}")
        raise RunFormatError(f"{folder} holds no {STATE_FILE}: not a complete megadrp checkpoint")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        tensors = load_file(str(folder / STATE_TENSORS))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFormatError(f"{path} is not valid JSON ({err}): the checkpoint is damaged; resume or export "
                             f"from an earlier step_N") from err
    except (OSError, SafetensorError) as err:
        raise RunFormatError(f"{folder / STATE_TENSORS} cannot be read ({err}): the checkpoint is damaged; "
                             f"use an earlier step_N") from err
    if doc.get("format") != FORMAT_VERSION:
        raise RunFormatError(f"{path} has state format {doc.get('format')!r}; this megadrp reads {FORMAT_VERSION}")
    return decode(doc["state"], tensors)


def mode_state(state: dict) -> dict:
    """The mode's own part of a state (prune: ``masks``, ``lagrangian``, ``side_optimizer``), saved once."""
    return state.get("mode_state") or {}


def convert_legacy(folder) -> None:
    """Rewrite a trusted old ``megadrp_state.pt`` (pickle) in the current format; unpickles, so trust it."""
    folder = Path(folder)
    state = torch.load(folder / LEGACY_STATE, map_location="cpu", weights_only=False)
    write_state(folder, state)
    (folder / LEGACY_STATE).unlink()
    write_manifest(folder, {name: file_digest(folder / name) for name in manifest_files(folder)})


# ---- checksums -------------------------------------------------------------------------------------------
def manifest_files(folder) -> list:
    """Every file of a checkpoint folder the manifest covers (relative names, sorted; not the manifest)."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
                  and not p.name.startswith("."))


def file_digest(path, chunk: int = 1 << 24) -> dict:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            size += len(block)
    return {"sha256": h.hexdigest(), "bytes": size}


def write_manifest(folder, digests: dict) -> None:
    """``{relative name: file_digest}`` of every file, as the last file of the checkpoint."""
    text = json.dumps({"format": 1, "files": dict(sorted(digests.items()))}, indent=1) + "\n"
    _atomic_write(Path(folder) / MANIFEST, lambda p: p.write_text(text, encoding="utf-8"))


def read_manifest(folder) -> Optional[dict]:
    """``{name: {"sha256", "bytes"}}``, or None when the checkpoint has no manifest (older versions). A name
    that leads outside the folder (absolute, or with '..') is refused: verifying it would read another file."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        names = list(files)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise RunFormatError(f"{path} is damaged ({err}): the checkpoint cannot be verified") from err
    outside = [n for n in names if not isinstance(n, str) or Path(n).is_absolute() or ".." in Path(n).parts]
    if outside:
        raise RunFormatError(f"{path} lists {outside[:3]}, outside the checkpoint folder: not a manifest megadrp "
                             f"wrote; use a checkpoint your own run wrote")
    return files


def foreign_entries(folder, unlisted: bool = True) -> list:
    """Problems (one line each) of what a checkpoint folder holds besides plain files and folders, and of files
    its manifest does not list; [] when there are none.

    A checkpoint is untrusted input: a symbolic link would make megadrp read (hash, load, copy into an export,
    upload) a file outside it, a FIFO or device would make it wait forever, and a file added after the checkpoint
    was written is not covered by its checksums. `universal/` (written later by an elastic resume) is exempt from
    the listing, not from the rest."""
    folder = Path(folder)
    listed = read_manifest(folder) if unlisted else None
    problems = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(root, name)
            rel = str(path.relative_to(folder))
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                problems.append(f"{path} is a symbolic link (to {os.readlink(path)}); a checkpoint holds plain "
                                f"files only")
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                problems.append(f"{path} is not a regular file (a FIFO, socket or device)")
            elif (stat.S_ISREG(mode) and listed is not None and rel not in listed and name != MANIFEST
                  and not name.startswith(".") and not rel.startswith("universal" + os.sep)):
                problems.append(f"{path} is not listed in {MANIFEST} (added after the checkpoint was written)")
        dirs[:] = [d for d in dirs if not Path(root, d).is_symlink()]
    return problems


def verify_manifest(folder, names: Optional[list] = None) -> list:
    """Problems (one line each) of the files ``names`` (default: all in the manifest); [] when intact.

    A checkpoint without a manifest gives one problem saying so."""
    folder = Path(folder)
    files = read_manifest(folder)
    if files is None:
        return [f"{folder} has no {MANIFEST}: its files cannot be verified"]
    problems = []
    for name in files if names is None else names:
        want, path = files[name], folder / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        got = file_digest(path) if path.stat().st_size == want["bytes"] else {"bytes": path.stat().st_size}
        if got["bytes"] != want["bytes"]:
            problems.append(f"{path} has {got['bytes']} bytes, {want['bytes']} were written (truncated or replaced)")
        elif got["sha256"] != want["sha256"]:
            problems.append(f"{path} does not match its checksum (corrupted since it was written)")
    return problems


# ---- DeepSpeed's own files ----------------------------------------------------------------------------
# DeepSpeed 0.19.8 reads its checkpoint files with torch.load(weights_only=False) (TorchCheckpointEngine.load,
# utils/zero_to_fp32.py) and offers no switch. So before DeepSpeed reads one, each is loaded here once with
# weights_only=True (mmap: the tensor data is not read) allowing only the plain-data DeepSpeed classes its files
# hold; a file with any other global (a __reduce__ payload, say) is refused and never reaches DeepSpeed.
def _deepspeed_safe_globals() -> list:
    """The plain-data DeepSpeed classes its checkpoint files pickle (checked on 0.19.8: ZeRO 0-3, fp32 and bf16)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum
    from deepspeed.utils.tensor_fragment import fragment_address  # ZeRO-1/2 optimizer files

    return [ZeroStageEnum, OffloadDeviceEnum, LossScaler, DynamicLossScaler, fragment_address]


def deepspeed_files(folder) -> list:
    """Relative names of every ``*.pt`` file under a checkpoint folder, sorted."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*.pt"))


def check_deepspeed_files(folder, names: Optional[list] = None) -> None:
    """Refuse a checkpoint whose DeepSpeed ``*.pt`` files (``names``, relative; default all, ``universal/``'s
    too: DeepSpeed loads those unrestricted as well) would run code on load."""
    allowed = _deepspeed_safe_globals()
    for name in deepspeed_files(folder) if names is None else names:
        path = Path(folder) / name
        if name == LEGACY_STATE:
            continue
        try:
            with torch.serialization.safe_globals(allowed):
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - any failure of the restricted load means: not plain data
            found = re.search(r"Unsupported (global|operand)[^.]*", str(err))
            if not found:  # no forbidden class named: the file does not read at all (truncated, not a zip, ...)
                raise RunFormatError(
                    f"{path} cannot be read as a checkpoint file ({type(err).__name__}: {str(err)[:200]}): it is "
                    f"truncated or damaged. Use an intact checkpoint (an earlier step_N)") from err
            what = found.group(0)
            raise RunFormatError(
                f"{path} is not plain checkpoint data ({what}); DeepSpeed would unpickle it with code "
                f"execution allowed, so megadrp refuses to load it. Use a checkpoint your own run wrote; if this "
                f"file is from your run, the class it names must be added to megadrp/run_format.py's "
                f"allow-list") from err


# ---- the `latest` pointer and finding checkpoints ---------------------------------------------------------
def checkpoints_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def write_latest(run_dir, tag: str) -> None:
    ck = checkpoints_dir(run_dir)
    _atomic_write(ck / LATEST, lambda p: p.write_text(tag + "\n", encoding="utf-8"))
    fd = os.open(ck, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_latest(run_dir) -> Optional[Path]:
    """The folder `latest` names (it may be incomplete or gone), or None when there is no pointer, or when it
    points anywhere but at a step_N folder of this checkpoints folder (an absolute path, '..', another run:
    following it would resume, export or evaluate something outside the run directory)."""
    ck, latest = checkpoints_dir(run_dir), checkpoints_dir(run_dir) / LATEST
    if latest.is_symlink():  # a link to the newest step_N (other tools write one): only to a sibling
        target = Path(os.readlink(latest))
        tag = target.name if target.parent in (Path("."), Path(""), ck) else ""
    elif latest.is_file():
        tag = latest.read_text(encoding="utf-8", errors="replace").strip()[:200]
    else:
        return None
    return ck / tag if _STEP_DIR.match(tag) else None


def is_complete(folder) -> bool:
    return (Path(folder) / STATE_FILE).is_file()


def list_checkpoints(run_dir, complete: bool = True) -> list:
    """step_N folders of a run, oldest first (only complete ones unless ``complete=False``)."""
    found = []
    ck = checkpoints_dir(run_dir)
    if ck.is_dir():
        for p in ck.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and (not complete or is_complete(p) or (p / LEGACY_STATE).is_file()):
                found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def newest_complete(run_dir) -> Optional[Path]:
    done = list_checkpoints(run_dir)
    return done[-1] if done else None


def resolve(spec: Optional[str], run_dir, note=print) -> Optional[Path]:
    """The checkpoint `--resume` names: 'auto' (the run_dir's latest complete one, or None: a fresh start),
    or PATH (a step_N folder, RUN_DIR or RUN_DIR/checkpoints). ``note`` hears about a pointer fallback."""
    if not spec or spec == "none":
        return None
    if spec != "auto":
        found = find_checkpoint(spec)
        if found is None:
            raise RunFormatError(f"{spec} is not a complete megadrp checkpoint (no {STATE_FILE}); give a "
                                 f"RUN_DIR/checkpoints/step_N folder, a run directory, or --resume auto")
        return found
    pointed, newest = read_latest(run_dir), newest_complete(run_dir)
    if pointed is not None and (is_complete(pointed) or (pointed / LEGACY_STATE).is_file()):
        return pointed
    if newest is not None:
        exists = os.path.lexists(checkpoints_dir(run_dir) / LATEST)
        why = (f"names {pointed.name}, which is not complete" if pointed is not None else
               "does not name a step_N folder of this run (ignored)" if exists else "is missing")
        note(f"{checkpoints_dir(run_dir) / LATEST} {why}; resuming from the newest complete checkpoint, {newest}")
    return newest


def find_checkpoint(path) -> Optional[Path]:
    """The checkpoint folder behind ``path``: itself, or the latest (else newest complete) of RUN_DIR or
    RUN_DIR/checkpoints; None when ``path`` is neither (e.g. a plain Hugging Face folder)."""
    path = Path(path)
    if is_complete(path) or (path / LEGACY_STATE).is_file():
        return path
    for run_dir in (path, path.parent if path.name == "checkpoints" else None):
        if run_dir is not None and checkpoints_dir(run_dir).is_dir():
            found = resolve("auto", run_dir, note=lambda msg: print(f"megadrp: {msg}", file=sys.stderr))
            if found is not None:
                return found
    return None


def _main(argv: list) -> int:
    if len(argv) != 2 or argv[0] != "convert-legacy":
        print("usage: python -m megadrp.run_format convert-legacy STEP_DIR   (unpickles: trusted runs only)")
        return 2
    convert_legacy(argv[1])
    print(f"converted {Path(argv[1]) / LEGACY_STATE} to {STATE_FILE} + {STATE_TENSORS} (+ {MANIFEST})")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
