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


def entry_point(main: Callable[..., T]) -> Callable[..., T]:
    """Run `main`, turning a `UserError` into one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
