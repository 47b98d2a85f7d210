"""The ``ropelab`` command line: one table of commands, one module per command group.

    ropelab compare                      the main job (SmolLM2-135M, long-context use, three projects)
    ropelab eval | report                :mod:`ropelab.cli.evaluate`
    ropelab train | experiment           :mod:`ropelab.cli.train`
    ropelab analyze                      :mod:`ropelab.cli.analyze`
    ropelab generate                     :mod:`ropelab.cli.generate`
    ropelab methods | describe | models | positions | task-sample   :mod:`ropelab.cli.info`

Bad input (an unknown method, a bad parameter, a length out of range) prints one ``error:`` line
and exits with status 2; no traceback. Only optional heavy libraries (transformers, lm-eval,
matplotlib) are imported inside the commands that use them; ropelab's own modules are imported
at the top (torch comes with the package anyway: ``ropelab --help`` takes about 1.5 s).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ropelab.cli import analyze, evaluate, export, generate, info, train
from ropelab.cli.common import check_model
from ropelab.core.errors import RopelabError
from ropelab.core.version import __version__


@dataclass(frozen=True, kw_only=True)
class Command:
    name: str
    help: str
    options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


#: every command, in the order ``ropelab --help`` lists them
COMMANDS = (
    Command(
        name="methods",
        help="list every position method with its parameters",
        options=info.methods_options,
        run=info.cmd_methods,
    ),
    Command(
        name="describe",
        help="per-frequency angles, periods and roles of a method",
        options=info.describe_options,
        run=info.cmd_describe,
    ),
    Command(
        name="models",
        help="list pretrained models and named configs, and whether each is installed",
        options=info.models_options,
        run=info.cmd_models,
    ),
    Command(
        name="generate",
        help="stream a continuation of a prompt",
        options=generate.generate_options,
        run=generate.cmd_generate,
    ),
    Command(
        name="positions",
        help="HiRoPE hierarchical positions (segments) of a source file",
        options=info.positions_options,
        run=info.cmd_positions,
    ),
    Command(
        name="eval",
        help="evaluate a model under several methods on several tasks and lengths",
        options=evaluate.eval_options,
        run=evaluate.cmd_eval,
    ),
    Command(
        name="compare",
        help="the main job: does HiRoPE use context beyond SmolLM2-135M's train length (3 projects, window reference)",
        options=evaluate.compare_options,
        run=evaluate.cmd_compare,
    ),
    Command(
        name="report",
        help="re-render a run's report, or compare two runs",
        options=evaluate.report_options,
        run=evaluate.cmd_report,
    ),
    Command(
        name="task-sample",
        help="print exactly what the model sees for a task",
        options=info.task_sample_options,
        run=info.cmd_task_sample,
    ),
    Command(
        name="train",
        help="train a model from scratch with a position encoding (DDP under torchrun)",
        options=train.train_options,
        run=train.cmd_train,
    ),
    Command(
        name="experiment",
        help="the HoPE paper's comparison: train every PE, evaluate, one report",
        options=train.experiment_options,
        run=train.cmd_experiment,
    ),
    Command(
        name="analyze",
        help="attention pattern, RoPE component VAF, extrapolation OOD and hierarchy analyses (HoPE paper, Sec. 3)",
        description=analyze.DESCRIPTION,
        options=analyze.analyze_options,
        run=analyze.cmd_analyze,
    ),
    Command(
        name="export",
        help="write a checkpoint as a Hugging Face transformers directory (rope, pi, ntk, dynamic-ntk, llama3, proportional, yarn)",
        description=export.DESCRIPTION,
        options=export.export_options,
        run=export.cmd_export,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ropelab",
        description="positional encodings and context-length extrapolation for transformer language models",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.options(p)
        p.set_defaults(func=command.run, subparser=p)
    return parser


def _version() -> str:

    return f"ropelab {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    check_model(args.subparser, args)
    try:
        return args.func(args)
    except RopelabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (``ropelab ... | head``): stop quietly, like other tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit-time flush of stdout cannot fail again
        return 0
    except OSError as error:  # an output path that is a file or unwritable, a full disk, ...
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "Command", "build_parser", "main"]
