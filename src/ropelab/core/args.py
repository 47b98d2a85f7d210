"""Command-line argument types shared by every command group."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


#: the most torch CPU threads ``--threads`` accepts: torch starts them all at the first parallel
#: operation, so an unbounded count could exhaust the machine's processes
MAX_THREADS = 1024


def thread_count(text: str) -> int:
    """``--threads``: a positive integer, at most :data:`MAX_THREADS`."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads, got {text!r}")
    return value


def split_list(text: str) -> list[str]:
    """A plain comma-separated list (tasks, lengths); lists of methods go through
    :func:`ropelab.pe.split_specs`, since a spec's own parameters are comma-separated too."""
    return [item.strip() for item in text.split(",") if item.strip()]
