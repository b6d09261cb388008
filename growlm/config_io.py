"""One validated loader for every config file (pretrain, pipeline and study YAML, growth JSON): mapping -> dataclass.

Keys are checked against the dataclass fields (an unknown key is an error naming it, the file and the allowed keys)
and values against the field types, recursing into nested dataclasses, lists and dicts. Text converts where it is
unambiguous (`1e-4` -> float, `1e6` -> int, `a,b` -> list, `none` -> None), so a file and a command line agree.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

NONE_TEXT = ("none", "null", "")
BOOL_TEXT = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def read_mapping(path: str | Path, what: str, fix: str = "") -> dict:
    """The mapping a YAML file (or a `.json` file) holds; `what` and `fix` name the file kind in errors."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist" + (f"; {fix}" if fix else ""))
    is_json = path.suffix == ".json"
    try:
        data = json.loads(path.read_text()) if is_json else yaml.safe_load(path.read_text()) or {}
    except (ValueError, yaml.YAMLError) as err:
        raise ValueError(f"{what} {path} is not valid {'JSON' if is_json else 'YAML'}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a mapping (a JSON object), got {type(data).__name__}")
    return data


def arg(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with its meaning (`--help` text, via HfArgumentParser)."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _error(origin: str, path: str, message: str) -> ValueError:
    return ValueError(f"{origin}: {path}: {message}" if path else f"{origin}: {message}")


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def check_keys(data: Any, allowed: typing.Collection[str], origin: str, path: str = "") -> None:
    """Raise a ValueError unless `data` is a mapping whose keys all lie in `allowed`."""
    if not isinstance(data, dict):
        raise _error(origin, path, f"expected a mapping, got {data!r}")
    unknown = sorted(set(data) - set(allowed), key=str)
    if unknown:
        raise _error(origin, path, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def field_values(cls: type, data: Any, origin: str, path: str = "") -> dict[str, Any]:
    """The fields mapping `data` sets for dataclass `cls`, each checked and converted to its declared type."""
    check_keys(data, [f.name for f in dataclasses.fields(cls) if f.init], origin, path)
    hints = typing.get_type_hints(cls)
    return {key: coerce(value, hints[key], origin, _join(path, key)) for key, value in data.items()}


def build(cls: type, data: Any, origin: str, path: str = "") -> Any:
    """An instance of dataclass `cls` from mapping `data`; `origin` (the file) and `path` (the key) name errors."""
    values = field_values(cls, data, origin, path)
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _error(origin, path, f"missing key(s) {missing}")
    return cls(**values)


def _scalar(value: Any, hint: Any) -> Any:
    """`value` as a bool, int, float, str or instance of class `hint`; ValueError or TypeError when it is not one."""
    if hint is bool:
        return value if isinstance(value, bool) else BOOL_TEXT[str(value).lower()]
    if isinstance(value, bool):
        raise TypeError
    if hint is int:
        if isinstance(value, str):
            value = float(value) if "e" in value.lower() else int(value)  # 1e6 is an integer
        if isinstance(value, float) and value.is_integer():
            value = int(value)
    elif hint is float and isinstance(value, (int, str)):
        value = float(value)
    elif hint is str and isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, hint):
        raise TypeError
    return value


def coerce(value: Any, hint: Any, origin: str, path: str) -> Any:
    """`value` checked against type `hint` and converted to it; a ValueError names `origin` and `path` otherwise."""
    kind, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, origin, path)
    if kind in (typing.Union, types.UnionType):
        arms = [arm for arm in args if arm is not type(None)]
        if len(arms) < len(args) and (value is None or isinstance(value, str) and value.lower() in NONE_TEXT):
            return None
        for arm in arms[:-1]:  # the first arm that fits; the last one's error otherwise
            try:
                return coerce(value, arm, origin, path)
            except ValueError:
                pass
        return coerce(value, arms[-1], origin, path)
    if kind is Literal:
        if value not in args:
            raise _error(origin, path, f"{value!r} is not allowed; choose one of {list(args)}")
        return value
    if kind is list:
        items = [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise _error(origin, path, f"expected a list, got {value!r}")
        return [coerce(item, args[0], origin, f"{path}[{i}]") for i, item in enumerate(items)]
    if kind is dict:
        if not isinstance(value, dict):
            raise _error(origin, path, f"expected a mapping, got {value!r}")
        return {key: coerce(item, args[1], origin, _join(path, key)) for key, item in value.items()}
    try:
        return _scalar(value, hint)
    except (KeyError, TypeError, ValueError):
        raise _error(origin, path, f"expected {_name(hint)}, got {value!r}") from None


def _name(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
