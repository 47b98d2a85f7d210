"""``python -m bench import-run {compare,hope-experiment,hirope-experiment} RUN_DIR``: publish a finished run's
summary and plots into ``bench/results`` / ``docs/results`` for ``docs/results.md``."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "import-run"
DESCRIPTION = (
    "copy a finished `ropelab compare` / `ropelab eval` / `ropelab experiment` run into bench/results for docs"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=("compare", "hope-experiment", "hirope-experiment"))
    parser.add_argument("run_dir", type=Path)


def run(args: argparse.Namespace) -> int:
    from bench.render import import_run, write

    print(f"wrote {import_run(args.kind, args.run_dir)}")
    print(f"wrote {write()}")
    return 0
