"""The errors a user can fix, and how they are said: one line, exit code 2.

A leaf module (standard library only): every layer raises these, so none of them may import
another peftbench module. :func:`closest` lives here for the same reason: every "did you
mean" peftbench prints comes from it.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

EXIT_USAGE = 2
PREFIX = "peftbench: error: "


class ConfigError(ValueError):
    """A config that cannot run. ``str()`` is the one-line ``<problem>; <fix>``."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file, the row and the fix."""


class AssetError(Exception):
    """An asset cannot be found, fetched, unpacked or verified."""


#: What a user can fix; the command line turns each into one line and exit code 2.
INPUT_ERRORS = (ConfigError, DataError, AssetError)


def one_line(message: str) -> str:
    """The message as it is printed: ``peftbench: error: <message>`` on one line."""
    return PREFIX + " ".join(str(message).split())


def exit_with(message: str) -> NoReturn:
    """Prints the one-line error on stderr and exits with code 2 (bad input)."""
    print(one_line(message), file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def closest(name: Any, choices: Iterable[Any], cutoff: float = 0.6) -> str | None:
    """The one valid name nearest to a misspelt one, or None if none is near enough.

    Args:
        name: what the user wrote.
        choices: the valid names.
        cutoff: difflib's similarity ratio a suggestion must reach, in [0, 1].
    """
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=cutoff)
    return close[0] if close else None
