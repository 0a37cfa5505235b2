"""Atomic file output: a stage either writes a complete file or leaves the old one untouched.

Every output is written to a temporary file in the same folder, flushed to disk (fsync) and renamed into
place (`os.replace` is atomic on POSIX), so an interrupted or failed stage, a kill or a full disk never
leaves a half-written file behind: the previous version stays. Files get the user's umask (like `open`),
not the 0600 of `mkstemp`; temporary files a killed stage left (`.<name>.*.tmp`) are removed by the
stage's next run (`remove_leftovers`). A destination that cannot be written (no permission, a read-only
file system, a file where a folder should be, a full disk) is one `UserError` naming the path and the fix.
Inputs are read inside `read_errors` (any file) or `reading` (a file rnnlab wrote), which do the same.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

from rnnlab.errors import UserError

UMASK = os.umask(0o022)
os.umask(UMASK)  # read the process umask once (os.umask can only read it by setting it)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Call `write(fileobj)` on a temporary file next to `path`, then rename it to `path`.

    A destination that cannot be written (no permission, a read-only file system, a file where a folder
    should be, a full disk) is one UserError naming it and the fix; no temporary file is left behind."""
    path = Path(path)
    with write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
                os.fchmod(fh.fileno(), 0o666 & ~UMASK)
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def write_errors(path: Path):
    """Writing `path` (or making its folder) inside this block: an OSError from the system (it has an
    errno) is one UserError, `cannot write <path>: <why>; <fix>`."""
    try:
        yield
    except OSError as err:
        if err.errno is None:
            raise
        raise UserError(f"cannot write {path}: {err.strerror or err}; {write_fix(path, err)}") from None


def shape_error(obj: Any, shapes: dict[str, type | tuple[type, ...]]) -> str | None:
    """None when `obj` is a dict whose every key in `shapes` holds a value of that type (a bool is not an
    int; `type(None)` allows null), else what is wrong, in a few words: for the JSON and checkpoint files rnnlab
    reads back (meta.json, run.json, stats.json, .ckpt), so another file's shape is one clear line."""
    if not isinstance(obj, dict):
        return f"a JSON object expected, not {type(obj).__name__}"
    for key, kind in shapes.items():
        kinds = kind if isinstance(kind, tuple) else (kind,)
        value = obj.get(key)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            return f"{key!r} should be a {names}"
    return None


def write_fix(path: Path, err: OSError) -> str:
    """What to do when `path` cannot be written for the reason `err`."""
    if err.errno in NO_SPACE:
        return "free some space and run again (the previous version of the file is kept)"
    elsewhere = "or choose another folder with the paths.* key that names this one"
    blocker = file_in_the_way(path.parent)
    if blocker is not None:
        return f"{blocker} is a file, not a folder: move it, {elsewhere}"
    if path.is_dir():
        return f"{path} is a folder: move it, {elsewhere}"
    return f"make {existing_folder(path.parent)} writable, {elsewhere}"


def file_in_the_way(folder: Path) -> Path | None:
    """The first of `folder` and its parents that exists and is not a folder (so no folder can be made)."""
    for part in [folder, *folder.parents]:
        if part.exists() or part.is_symlink():
            return None if part.is_dir() else part
    return None


def make_folder(folder: str | Path) -> Path:
    """`mkdir -p folder`; a folder that cannot be made (a file in the way, no permission) is one UserError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if err.errno is None:
            raise
        blocker = file_in_the_way(folder)
        fix = (f"{blocker} is a file, not a folder: move it" if blocker else
               f"make {existing_folder(folder.parent)} writable")
        raise UserError(f"cannot make the folder {folder}: {err.strerror or err}; {fix}, or choose another "
                        "folder") from None
    return folder


def existing_folder(folder: Path) -> Path:
    """`folder`, or the nearest parent that exists (the one whose permissions matter)."""
    return next((part for part in [folder, *folder.parents] if part.is_dir()), folder)


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Delete the temporary files (`.<name>.*.tmp`) a killed run left under `folder`; returns them."""
    found = sorted(Path(folder).rglob(".*.tmp")) if Path(folder).is_dir() else []
    for path in found:
        with write_errors(path):
            path.unlink(missing_ok=True)
    return found


@contextlib.contextmanager
def reading(path: str | Path, fix: str):
    """Read `path` inside this block: a file that is missing, unreadable, truncated, of the wrong shape or not
    what rnnlab wrote (foreign JSON, a pickle, text for binary) is one UserError naming the file and `fix`.
    Keep the block to the parsing of that one file, so that no bug of ours hides behind it."""
    try:
        yield
    except FileNotFoundError:
        raise UserError(f"{path} is missing; {fix}") from None
    except PermissionError:
        raise UserError(f"{path} cannot be read (permission denied); fix its permissions, or {fix}") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, RuntimeError, pickle.UnpicklingError) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise UserError(f"{path} is damaged or not a file rnnlab wrote ({type(err).__name__}: {why}); {fix}") from None


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text))


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON: a NaN or an infinity is an error (callers write None for a number that is not finite)."""
    atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def read_errors(path: str | Path, fix: str):
    """Reading the input `path` inside this block: an OSError (missing, no permission, a folder, an I/O
    error) is one UserError, `cannot read <path> (<why>); <fix>`. Keep the block to reading that file."""
    try:
        yield
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or err}); {fix}") from None


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
