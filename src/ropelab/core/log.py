"""Progress and status messages: one ``ropelab: ...`` line on standard error, flushed at once."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    print(f"ropelab: {message}", file=sys.stderr, flush=True)
