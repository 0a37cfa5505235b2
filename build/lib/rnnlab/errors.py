"""User-facing errors: one exception class, printed once at the entry point as one line.

Library code raises `UserError` for mistakes a user can fix (bad config, bad input files); the stage
scripts wrap their `main()` in `entry_point`, which prints `error: <message>` and exits with status 2,
without a stack trace. Bugs (our own invariants) still raise normally.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

EXIT_USER_ERROR = 2
T = TypeVar("T")


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class Stopped(BaseException):
    """The process got SIGTERM or SIGINT (rnnlab.runtime.catch_signals); it exits with 128 + the signal's
    number, as a shell reports a process a signal ended (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, signum: int, where: str = "") -> None:
        import signal

        self.exit_status = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}{where}; the last checkpoint, if any, is kept: "
                         "run `dvc repro` (or the same command) again to resume")


def out_of_memory(err: BaseException) -> bool:
    """Python's MemoryError, torch's OutOfMemoryError, or its CPU allocator's failure (a RuntimeError)."""
    text = str(err)
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or \
        "can't allocate memory" in text or "out of memory" in text.lower()


def entry_point(main: Callable[..., T]) -> Callable[..., T]:
    """Run `main`, turning a `UserError` into one line on stderr and exit status 2, running out of memory
    (a size the machine cannot hold) into one line and exit status 2, and `Stopped` into one line and exit
    status 128 + signal."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except (MemoryError, RuntimeError) as err:
            if not out_of_memory(err):
                raise
            first = (str(err).strip().splitlines() or ["MemoryError"])[0][:200]
            print(f"error: out of memory ({first}); lower model.hidden_size, model.num_layers, data.batch_size, "
                  "data.bptt or sample.num_samples, or use a machine with more memory", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except Stopped as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_status)

    return wrapper
