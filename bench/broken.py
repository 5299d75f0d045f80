"""A bench that could not run its measurement is broken: one line naming why, exit 2 (never a traceback,
never a ratio). Every bench's entry point goes through `main_or_broken`."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pinhole.lab import LabError


def main_or_broken(name: str, main: Callable[[], int]) -> int:
    """`main()`, or exit 2 with one line when the lab or a program it needs cannot run."""
    try:
        return main()
    except (LabError, OSError, RuntimeError, TimeoutError) as error:
        lines = str(error).splitlines() or [""]
        print(f"{name}: broken, cannot run: {type(error).__name__}: {lines[0]}", file=sys.stderr)
        return 2
