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


def split_list(text: str) -> list[str]:
    """A plain comma-separated list (tasks, lengths); lists of methods go through
    :func:`ropelab.pe.split_specs`, since a spec's own parameters are comma-separated too."""
    return [item.strip() for item in text.split(",") if item.strip()]
