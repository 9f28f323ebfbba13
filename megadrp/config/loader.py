"""Build a RunConfig from YAML files and dotted ``key=value`` overrides; save and describe it.

Types come from the dataclass annotations, so ``optim.lr=3e-4`` becomes a float and
``optim.lr=fast`` is refused with the field's name. Unknown keys are refused with the closest known
names, since a silently ignored typo (``prunning.target``) would run the wrong experiment.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from typing import Any, Iterable

import yaml

from megadrp.config.schema import ConfigError, RunConfig


def _type_of(cls, name: str):
    return typing.get_type_hints(cls)[name]


def _coerce(path: str, value: Any, tp) -> Any:
    """Check/convert one leaf value against its annotation; raise ConfigError naming the field."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(path, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, value, "must be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(path, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(path, value, "must be a string")
        return str(value)
    if tp is list or origin is list:
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, "must be a list, e.g. [a, b]")
        return list(value)
    return value


def _unknown_key(path: str, key: str, known: Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"known fields: {', '.join(sorted(known))}"
    return ConfigError(f"{path}{key}", "<unknown field>", f"no such field; {hint}")


def from_dict(cls, data: dict, path: str = ""):
    """Instantiate dataclass ``cls`` from a nested dict, checking names, types and choices."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path.rstrip(".") or "<root>", data, "must be a mapping of fields")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(path, key, fields)
        f = fields[key]
        tp = _type_of(cls, key)
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{path}{key}.")
            continue
        value = _coerce(f"{path}{key}", value, tp)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{path}{key}", value, f"must be one of {', '.join(map(str, choices))}")
        kwargs[key] = value
    return cls(**kwargs)


def apply_override(data: dict, override: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in override:
        raise ConfigError(override, "<override>", "overrides are written key.path=value, e.g. optim.lr=3e-4")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(key, raw, f"'{part}' is a value, not a section")
    node[parts[-1]] = value


def load_config(path: str | None = None, overrides: Iterable[str] = (), check: bool = True) -> RunConfig:
    """Load a RunConfig from a YAML file (optional) plus dotted overrides, then validate it."""
    data: dict = {}
    if path:
        if not os.path.exists(path):
            raise FileNotFoundError(f"config file {path!r} does not exist (see configs/ for the shipped recipes)")
        with open(path, encoding="utf-8") as fh:
            try:
                data = yaml.safe_load(fh) or {}
            except yaml.YAMLError as err:
                raise ConfigError(path, "<yaml>", f"is not valid YAML: {err}") from err
    for override in overrides:
        apply_override(data, override)
    cfg = from_dict(RunConfig, data)
    if check:
        cfg.check()
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str) -> None:
    """Write the resolved config as YAML, atomically (temp file + rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
    os.replace(tmp, path)


def describe(cls=RunConfig, path: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, help) for every leaf field: the config reference."""
    rows = []
    instance = cls()
    for f in dataclasses.fields(cls):
        tp = _type_of(cls, f.name)
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, f"{path}{f.name}."))
            continue
        help_text = f.metadata.get("help", "")
        if "choices" in f.metadata:
            help_text += f" One of: {', '.join(map(str, f.metadata['choices']))}."
        rows.append((f"{path}{f.name}", repr(getattr(instance, f.name)), help_text))
    return rows
