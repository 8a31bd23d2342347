"""Configuration as data: dataclasses with defaults, loaded from a YAML or TOML file, then ``--set key.sub=value``
overrides. Every command that takes a configuration (training, evaluation) and every text form of settings (the
evaluation's method specs) goes through :func:`merge_config`: values are converted to the field's type, unknown
keys are errors that name the key (with a "did you mean" hint), and a dataclass's own checks run once the values
are in. Relative paths are taken from the current folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

ConfigT = TypeVar("ConfigT")


class ConfigError(ValueError):
    """A configuration file or override that does not fit the configuration's fields."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a ``.yaml``/``.yml`` or ``.toml`` file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
    elif suffix == ".toml":
        data = _load_toml(text, path)
    else:
        raise ConfigError(f"Config file {path} must end in .yaml, .yml or .toml")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def _load_toml(text: str, path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError(f"Reading {path} needs Python 3.11 or the 'tomli' package; or use YAML") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["optimization.learning_rate=1e-5", ...]`` as a nested mapping; values are read as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"Override {override!r} must look like key.subkey=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"Override {override!r} has a value that is not valid YAML: {error}") from None
        parts = key.strip().split(".")
        target = nested
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"Override {override!r} conflicts with another override of {part!r}")
        target[parts[-1]] = value
    return nested


def load_config(
    path: str | Path | None, config_class: type[ConfigT], overrides: Sequence[str] = ()
) -> ConfigT:
    """Build ``config_class`` from its defaults, then the file at ``path`` (YAML or TOML), then ``overrides``."""
    config = config_class()
    if path is not None:
        config = merge_config(config, read_config_file(path), source=str(path))
    if overrides:
        config = merge_config(config, parse_overrides(overrides), source="--set")
    return config


def merge_config(config: ConfigT, data: Mapping[str, Any], source: str = "config", prefix: str = "") -> ConfigT:
    """A copy of the dataclass ``config`` with the values of ``data`` (nested mappings for nested dataclasses)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'the config'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(config))
    known = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(
                f"{source}: unknown key '{dotted}'{hint} The keys here: {', '.join(sorted(known))} (unknown keys are "
                "errors, so that a misspelt key is never silently ignored)"
            )
        current = getattr(config, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[key] = merge_config(current, value, source, prefix=f"{dotted}.")
        else:
            changes[key] = _coerce(value, hints[key], dotted, source)
    try:
        return dataclasses.replace(config, **changes)
    except (ValueError, TypeError) as error:
        where = prefix.rstrip(".") or type(config).__name__
        raise ConfigError(f"{source}: invalid value in '{where}': {error}") from None


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """``value`` as type ``hint`` (YAML/TOML scalars and lists to floats, tuples, ...), or a ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if any(typing.get_origin(arm) is Literal and value in typing.get_args(arm) for arm in args):
            return value  # a choice named "none" is that choice, not null
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        arms = [arm for arm in args if arm is not type(None)]
        errors = []
        for arm in arms:
            try:
                return _coerce(value, arm, key, source)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{source}: '{key}' = {value!r} fits none of {hint}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: '{key}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{source}: '{key}' must be a list of {len(args)} values, got {value!r}")
            return tuple(_coerce(item, arm, f"{key}[{i}]", source) for i, (item, arm) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        items = [_coerce(item, item_type, f"{key}[{i}]", source) for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return merge_config(hint(), value, source, prefix=f"{key}.")
    return _coerce_scalar(value, hint, key, source)


SCALAR_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}


def _coerce_scalar(value: Any, hint: Any, key: str, source: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    else:
        raise ConfigError(f"{source}: '{key}' has a type ({hint}) that config files cannot set")
    raise ConfigError(f"{source}: '{key}' must be {SCALAR_NAMES[hint]}, got {value!r}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain YAML-safe data (tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value

    return plain(dataclasses.asdict(config))
