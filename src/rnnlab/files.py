"""Atomic file output: a stage either writes a complete file or leaves the old one untouched.

Every output is written to a temporary file in the same folder, flushed to disk (fsync) and renamed into
place (`os.replace` is atomic on POSIX), so an interrupted or failed stage, a kill or a full disk never
leaves a half-written file behind: the previous version stays. Files get the user's umask (like `open`),
not the 0600 of `mkstemp`; temporary files a killed stage left (`.<name>.*.tmp`) are removed by the
stage's next run (`remove_leftovers`).
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
    """Call `write(fileobj)` on a temporary file next to `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise UserError(f"cannot write {path}: {err.strerror}; free some space and run again "
                            "(the previous version of the file is kept)") from None
        raise


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Delete the temporary files (`.<name>.*.tmp`) a killed run left under `folder`; returns them."""
    found = sorted(Path(folder).rglob(".*.tmp")) if Path(folder).is_dir() else []
    for path in found:
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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
