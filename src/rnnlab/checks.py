"""Checks of config values, for rnnlab.schema: a value's type against a type hint, a choice, a bound.

Each failure is one `UserError` line naming the key, the value given and what is expected.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Union

from rnnlab.errors import UserError

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def describe(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             type(None): "null", dict: "a mapping", list: "a list"}
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {describe(typing.get_args(hint)[0]).removeprefix('an ').removeprefix('a ')}s"
    return names.get(origin or hint, str(hint))


def matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(matches(v, typing.get_args(hint)[0]) for v in value)
    return isinstance(value, origin or hint)


def check_types(spec: Any, key: str) -> None:
    """Raise a one-line UserError when a field of the dataclass instance `spec` has the wrong type, or is a
    number that is not finite (NaN passes every `<= 0` check; no setting here means anything with inf)."""
    hints = typing.get_type_hints(type(spec))
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if not matches(value, hints[f.name]):
            raise UserError(f"{key}.{f.name}={value!r}: expected {describe(hints[f.name])}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{key}.{f.name}={value}: expected a finite number")


def yaml_numbers(cls: type, values: dict) -> dict:
    """`values` with YAML 1.1's unread number forms (`1e-9`, which PyYAML keeps as text but Hydra reads as a
    number) turned into numbers where `cls` declares a float."""
    hints = typing.get_type_hints(cls)
    return {k: float(v) if isinstance(v, str) and k in hints and matches(1.5, hints[k]) and not matches(v, hints[k])
            and NUMBER.fullmatch(v.strip()) else v for k, v in values.items()}


def one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        quoted = ", ".join(allowed) if len(allowed) > 2 else " or ".join(repr(a) for a in allowed)
        raise UserError(f"{key}={value!r} is not known; use {'one of ' if len(allowed) > 2 else ''}{quoted}")


def between(key: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        raise UserError(f"{key}={value} must be between {low} and {high}")


def at_least(key: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        raise UserError(f"{key}={value} must be at least {low}")



def check_sha256(key: str, value: Any) -> None:
    if value is not None and not (isinstance(value, str) and len(value) == 64
                                  and all(c in "0123456789abcdef" for c in value)):
        raise UserError(f"{key}={value!r}: expected 64 lowercase hex digits (what sha256sum prints), or null")
