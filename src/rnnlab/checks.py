"""Checks of config values, for rnnlab.schema: a value's type against a type hint, a choice, a bound, and
the corpus section's inputs (one input or one per split, never both).

Each failure is one `UserError` line naming the key, the value given and what is expected.

Why not pydantic (installed with MLflow): of this module only the type test (`matches`, ~20 lines) is what a
strict `TypeAdapter` does; the rest are ranges, choices and cross-field rules with messages of our own that
the generated fault tests pin, so pydantic would add a translation layer from its error list, not remove code.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Union

from rnnlab.choices import SPLIT_NAMES
from rnnlab.errors import UserError

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


# Every number reaches torch, Lightning or NumPy somewhere: an integer must fit a C long long (and a double,
# exactly), a float must be finite and fit a float32 (the dtype of every tensor it is multiplied with).
INT_LIMIT = 2**53
FLOAT_LIMIT = 3.4e38  # float32's largest is 3.4028e38


def check_types(spec: Any, key: str) -> None:
    """Raise a one-line UserError when a field of the dataclass instance `spec` has the wrong type, or is a
    number out of every range (`check_number`)."""
    hints = typing.get_type_hints(type(spec))
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if not matches(value, hints[f.name]):
            raise UserError(f"{key}.{f.name}={value!r}: expected {describe(hints[f.name])}")
        check_number(f"{key}.{f.name}", value)


def check_number(key: str, value: Any) -> None:
    """NaN passes every `<= 0` check, and no setting here means anything with inf; 2**70 overflows torch's
    integers and 1e308 its float32 tensors. Lists are checked item by item."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, float) and not math.isfinite(item):
            raise UserError(f"{key}={item}: expected a finite number")
        if isinstance(item, float) and abs(item) > FLOAT_LIMIT:
            raise UserError(f"{key}={item}: too large (float32 holds numbers up to 3.4e38)")
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > INT_LIMIT:
            raise UserError(f"{key}={item}: too large (at most 2**53)")


def one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        quoted = ", ".join(map(str, allowed)) if len(allowed) > 2 else " or ".join(repr(a) for a in allowed)
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


def check_max_time(value: str | dict | None) -> None:
    """Lightning's forms: "DD:HH:MM:SS", or a mapping of datetime.timedelta's keyword arguments."""
    units = {"days", "hours", "minutes", "seconds", "milliseconds", "microseconds", "weeks"}
    if isinstance(value, str) and not re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", value) or \
            isinstance(value, dict) and not (value and set(value) <= units and all(matches(v, float) for v in value.values())):
        raise UserError(f"trainer.max_time={value!r}: give DD:HH:MM:SS (e.g. 00:00:10:00) or a mapping such as "
                        "{minutes: 10}, or null")


def check_validation(interval: int | float | None, every: int | None, limit: int | float) -> None:
    """trainer.val_check_interval / check_val_every_n_epoch / limit_val_batches, in the forms Lightning
    accepts (and that train something)."""
    at_least("trainer.check_val_every_n_epoch", every, 1)
    if isinstance(interval, float) and not 0 < interval <= 1:
        raise UserError(f"trainer.val_check_interval={interval}: a fraction of an epoch is between 0 and 1; "
                        "give a number of steps (an integer) for more")
    if isinstance(interval, int):
        at_least("trainer.val_check_interval", interval, 1)
    if every is None and isinstance(interval, float):
        raise UserError(f"trainer.val_check_interval={interval}: with trainer.check_val_every_n_epoch=null it "
                        "counts steps across epochs, so give an integer (e.g. 250)")
    if limit < 0 or isinstance(limit, float) and limit > 1:
        raise UserError(f"trainer.limit_val_batches={limit}: give a fraction from 0 to 1, or a number of "
                        "batches (an integer >= 0); 0 switches validation off")


def check_devices(value: int | str | list) -> None:
    """trainer.devices: a number (-1: every device there is), auto, or device indices ([0, 1] or "0,1")."""
    if isinstance(value, int) and value != -1:
        at_least("trainer.devices", value, 1)
    if isinstance(value, str) and not re.fullmatch(r"auto|-1|\d+|\d+(,\d+)*,?", value.strip()):
        raise UserError(f"trainer.devices={value!r}: give a number of devices, -1 (all), auto, or their indices "
                        "(e.g. [0, 1] or '0,1')")
    if isinstance(value, list) and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        raise UserError(f"trainer.devices={value!r}: device indices are whole numbers from 0 (e.g. [0, 1]); or give "
                        "a number of devices, -1 (all) or auto")


# --- corpus inputs (rnnlab.schema.CorpusSpec) ------------------------------------------------------------


def check_corpus_inputs(spec) -> None:
    """One input (corpus.path, or corpus.url with an optional archive member) or one per split, never both."""
    for key in ("splits", "members"):
        value = getattr(spec, key)
        unknown = sorted(set(value) - set(SPLIT_NAMES)) if isinstance(value, dict) else []
        if unknown:
            raise UserError(f"corpus.{key}.{unknown[0]} is not a split; use train, val and test")
    if isinstance(spec.members, dict) and not all(v is None or isinstance(v, str) for v in spec.members.values()):
        raise UserError(f"corpus.members={spec.members!r}: expected a member name, "
                        "or train / val / test -> member name")
    splits = {k: v for k, v in (spec.splits or {}).items() if v is not None}
    if splits and spec.source not in ("file", "url"):
        raise UserError(f"corpus.splits is for corpus=file or corpus=url, not source {spec.source}; remove it")
    if splits and (spec.path is not None or spec.url is not None):
        key = "path" if spec.path is not None else "url"
        raise UserError(f"corpus.{key} and corpus.splits are both set; give one: corpus.{key} (one text, split by "
                        "val_frac / test_frac) or corpus.splits (one input per split)")
    if spec.members is not None and (spec.source != "url" or spec.url is None):
        raise UserError("corpus.members names files inside the archive at corpus.url (corpus=url); "
                        "set corpus.url or remove corpus.members")
    given = spec.split_inputs
    if given and not {"train", "val"} <= set(given):
        key = "splits" if splits else "members"
        missing = "train" if "train" not in given else "val"
        raise UserError(f"corpus.{key}.{missing} is not set; a pre-split corpus needs train and val (test may be null)")
    if spec.source == "file" and not given and not spec.path:
        raise UserError("corpus=file needs a path: set corpus.path=<file, list of files or glob>, or "
                        "corpus.splits.train=<file> corpus.splits.val=<file> [corpus.splits.test=<file>]")
    for name, value in splits.items():
        check_split_input(spec.source, name, value)
    check_sha256("corpus.sha256", spec.sha256)


def check_split_input(source: str, name: str, value: Any) -> None:
    key = f"corpus.splits.{name}"
    if source == "file" and not matches(value, str | list[str]):
        raise UserError(f"{key}={value!r}: expected a path, a list of paths or a glob")
    if source == "url":
        if not isinstance(value, dict) or set(value) != {"url", "sha256"} or not isinstance(value["url"], str):
            raise UserError(f"{key}={value!r}: expected {{url: <address>, sha256: <64 hex digits>}}")
        check_sha256(f"{key}.sha256", value["sha256"])


def check_char_cuts(spec) -> None:
    """corpus.val_chars / test_chars: exact cuts of one running text (enwik8, text8), instead of the fractions."""
    if spec.val_chars is None and spec.test_chars is None:
        return
    at_least("corpus.val_chars", spec.val_chars, 0)
    at_least("corpus.test_chars", spec.test_chars, 0)
    if spec.format != "text":
        raise UserError("corpus.val_chars / corpus.test_chars cut running text (corpus.format=text); "
                        "for format lines use corpus.val_frac / corpus.test_frac")
    if spec.split_inputs:
        raise UserError("corpus.val_chars / corpus.test_chars cut a single text, but this corpus comes pre-split "
                        "(corpus.splits / corpus.members); set them to null")
