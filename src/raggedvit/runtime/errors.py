"""User-facing errors of the commands.

Every choice that could surprise a user is printed by the caller (which device, dtype, attention backend
and weights ran); nothing falls back silently. Problems a person can fix raise :class:`UsageError`, which
:func:`run_command` turns into one ``raggedvit <command>: error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UsageError(Exception):
    """A problem the user can act on (bad path, unknown name, option this machine cannot run)."""


def run_command(name: str, fn: Callable[[], int]) -> int:
    """Run ``fn``; a :class:`UsageError` becomes one ``raggedvit <name>: error: ...`` line and status 2."""
    try:
        return int(fn() or 0)
    except UsageError as e:
        print(f"raggedvit {name}: error: {e}", file=sys.stderr)
        return 2
