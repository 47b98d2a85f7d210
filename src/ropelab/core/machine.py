"""What this machine has, for checks that refuse work before allocating it."""

from __future__ import annotations

import os
from functools import cache


@cache
def physical_memory() -> int | None:
    """The machine's RAM in bytes (``SC_PHYS_PAGES * SC_PAGE_SIZE``), or None where unknown; asked
    once per process (a model config checks its size against it at every construction)."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None
