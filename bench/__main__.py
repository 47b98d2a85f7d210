"""Command line: ``python -m bench [NAME [options]]``; without a name, list the benchmarks."""

from __future__ import annotations

import argparse
import sys

from bench import benchmarks
from ropelab.core.errors import RopelabError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="ropelab benchmarks")
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    modules = benchmarks()
    for name, module in modules.items():
        module.add_arguments(sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION))
    args = parser.parse_args(argv)
    if args.benchmark is None:
        print("available benchmarks (run `python -m bench NAME --help` for options):")
        width = max(map(len, modules))
        for name, module in modules.items():
            print(f"  {name:<{width}}  {module.DESCRIPTION}")
        return 0
    try:
        return modules[args.benchmark].run(args)
    except RopelabError as error:  # a bad config name or method spec
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
