"""`ropelab` subcommands of this package (registered by `ropelab.cli.build_parser`)."""

from __future__ import annotations


def register(sub) -> None:
    """Add this package's subcommands to the ``ropelab`` argument parser's subparsers."""
