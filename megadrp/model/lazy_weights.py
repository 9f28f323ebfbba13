"""A Hugging Face folder's weights: read one tensor at a time (a mapping over its safetensors shards), or whole.

``open_hf_weights(path)`` returns ``{hf_key: tensor}`` whose values are read from their shard on access
(``safetensors.safe_open``, the file mapped for that one read), so a loader that copies parameter by parameter
never holds more than one tensor of the source in host memory: loading a 70B source under ``zero.Init`` on
rank 0 needs one weight matrix (~2 GiB in bf16 at 70B: the embedding), not the 140 GB model; the eager reader
kept every shard mapped, and once touched, resident (docs/BENCHMARKS.md, "Loading"). Shapes and
dtypes are read from the shard headers without reading the data. ``pytorch_model.bin`` folders cannot be read
lazily (a pickle is read whole, ``torch.load`` with ``weights_only=True`` only): they come back as a plain dict,
as ``read_hf_state_dict`` returns every folder.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, Iterator, Tuple, Union

import torch

PathLike = Union[str, Path]


def _damaged(path: Path, err: Exception) -> ValueError:
    return ValueError(f"{path} cannot be read ({err}): the weights file is truncated or damaged; download or "
                      f"copy it again")


def _safe_open(path: Path):
    """``safetensors.safe_open`` whose failure (a truncated or damaged shard) names the file and the fix."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as err:
        raise _damaged(path, err) from None


class LazyHFWeights(Mapping):
    """Read-only ``{hf_key: tensor}`` over safetensors files; each access reads that tensor (a fresh CPU copy)."""

    def __init__(self, files_by_key: Dict[str, Path]):
        self._file = dict(files_by_key)

    def _open(self, key: str):
        # A handle per access: a cached one would keep every touched page of the shard mapped (resident),
        # so the process would end up holding the whole file anyway. Opening reads only the JSON header.
        if key not in self._file:
            raise KeyError(key)
        return _safe_open(self._file[key])

    def __getitem__(self, key: str) -> torch.Tensor:
        with self._open(key) as fh:
            return fh.get_tensor(key)

    def shape(self, key: str) -> Tuple[int, ...]:
        """The tensor's shape from the shard header (no data read)."""
        with self._open(key) as fh:
            return tuple(fh.get_slice(key).get_shape())

    def __contains__(self, key) -> bool:  # Mapping's default would read the tensor
        return key in self._file

    def __iter__(self) -> Iterator[str]:
        return iter(self._file)

    def __len__(self) -> int:
        return len(self._file)

    def renamed(self, names: Dict[str, str]) -> "RenamedWeights":
        """A view ``{new_name: self[old_name]}`` for ``names = {new_name: old_name}`` (still lazy)."""
        return RenamedWeights(self, names)


class RenamedWeights(Mapping):
    """``LazyHFWeights`` under other names (e.g. megadrp's internal parameter names); lazy like its source."""

    def __init__(self, source: LazyHFWeights, names: Dict[str, str]):
        self._source, self._names = source, dict(names)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._source[self._names[key]]

    def shape(self, key: str) -> Tuple[int, ...]:
        return self._source.shape(self._names[key])

    def __contains__(self, key) -> bool:
        return key in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _safetensors_files(p: Path) -> Dict[str, Path]:
    """{hf_key: shard file} from model.safetensors.index.json, or from model.safetensors's own header."""
    index = p / "model.safetensors.index.json"
    if index.exists():
        return {k: p / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    with _safe_open(p / "model.safetensors") as fh:
        return {k: p / "model.safetensors" for k in fh.keys()}


def open_hf_weights(path) -> Mapping:
    """A folder's weights: lazy for safetensors (single or sharded), an eagerly read dict for .bin folders."""
    p = Path(path)
    if (p / "model.safetensors.index.json").exists() or (p / "model.safetensors").exists():
        return LazyHFWeights(_safetensors_files(p))
    return read_hf_state_dict(p)


def _load_file(f: Path) -> Dict[str, torch.Tensor]:
    if f.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(f))
        except (SafetensorError, OSError) as err:
            raise _damaged(f, err) from None
    return torch.load(f, map_location="cpu", weights_only=True)


def read_hf_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """{hf_key: tensor} on CPU from model.safetensors[.index.json] or pytorch_model.bin[.index.json]: the whole
    model in host memory. Loaders that copy tensor by tensor use megadrp.model.lazy_weights.open_hf_weights."""
    p = Path(path)
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (p / index).exists():
            shards = sorted(set(json.loads((p / index).read_text())["weight_map"].values()))
            sd = {}
            for shard in shards:
                sd.update(_load_file(p / shard))
            return sd
        if (p / single).exists():
            return _load_file(p / single)
    raise FileNotFoundError(f"no model.safetensors, pytorch_model.bin or their index json in {p}")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_weight_files(path) -> None:
    """Refuse, naming the file, a folder without weights, or whose safetensors files are missing or do not open
    (a truncated download): their headers are read, not their tensors."""
    p = Path(path)
    if not any((p / n).is_file() for n in WEIGHT_FILES):
        raise FileNotFoundError(f"{p} has a config.json but no weights (none of {', '.join(WEIGHT_FILES)}): download "
                                f"or copy the whole model folder")
    if not ((p / "model.safetensors.index.json").is_file() or (p / "model.safetensors").is_file()):
        return
    for f in sorted(set(_safetensors_files(p).values())):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is listed in {p / 'model.safetensors.index.json'} but missing: download or "
                                    f"copy the whole model folder")
        with _safe_open(f):
            pass


def shape_of(weights: Mapping, key: str) -> Tuple[int, ...]:
    """Shape of ``weights[key]``, from the header when the mapping is lazy."""
    return weights.shape(key) if hasattr(weights, "shape") else tuple(weights[key].shape)
