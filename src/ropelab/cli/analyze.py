"""`ropelab analyze` (a command of :data:`ropelab.cli.COMMANDS`).

ropelab analyze MODEL|CHECKPOINT|RUN_DIR|EXPERIMENT_DIR [--analyses pattern,vaf,ood,hierarchy]
    [--lengths 1x,2x] [--methods SPEC,...] [--checkpoints latest|all] [--samples N] [--seed S]
    [--documents probe|stdlib|FILE|DIR] [--layers 0-3,7] [--out DIR] [--device cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ropelab.analysis.pipeline import AnalyzeConfig, analyze, parse_analyses
from ropelab.cli.common import device_options, methods_argument, model_argument, renamed_option
from ropelab.core.args import positive_int, split_list, thread_count
from ropelab.core.io import check_out_dir
from ropelab.pe import split_specs
from ropelab.reporting.analysis import write_outputs


def cmd_analyze(args: argparse.Namespace) -> int:
    import torch

    if args.out:
        check_out_dir(args.out)  # before any model loads

    if args.threads:
        torch.set_num_threads(args.threads)
    config = AnalyzeConfig(
        path=args.model,
        out=args.out or f"runs/analyze-{time.strftime('%Y%m%d-%H%M%S')}",
        analyses=parse_analyses(args.analyses),
        lengths=split_list(args.lengths),
        methods=split_specs(args.methods) if args.methods and args.methods.strip() else None,
        checkpoints=args.checkpoints,
        samples=args.samples,
        seed=args.seed,
        input=args.input,
        layers=args.layers,
        hierarchy_input=args.hierarchy_input,
        hierarchy_length=args.hierarchy_length,
        device=args.device,
        dtype=args.dtype,
    )

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    index = write_outputs(Path(config.out), analyze(config, log=log), log)
    print(index.read_text())
    print(f"analysis: {index} (JSON data and PNG plots beside it)")
    return 0


DESCRIPTION = (
    "Analyse a model, a checkpoint, a training run (its checkpoints) or an experiment (its runs, "
    "side by side): position-related attention pattern, RoPE component decomposition and VAF, "
    "extrapolation OOD score, and for hierarchical methods the hierarchy over the attention map."
)


def analyze_options(p: argparse.ArgumentParser) -> None:
    model_argument(p)  # also an experiment directory (its models)
    p.add_argument(
        "--analyses", default="pattern,vaf,ood,hierarchy", help="comma-separated subset of pattern,vaf,ood,hierarchy"
    )
    p.add_argument(
        "--lengths",
        default="1x,2x",
        help="probe lengths: 1x, 2x (train length multiples), 4k, 4096 (default 1x,2x); VAF uses the longest <= 1x, "
        "OOD compares it with the longest > 1x",
    )
    methods_argument(
        p, None, "position method spec(s), comma-separated, applied to the weights (default: the model's own)"
    )
    p.add_argument(
        "--checkpoints",
        choices=("latest", "all"),
        default="latest",
        help="for run/experiment dirs: the latest checkpoint, or all (VAF over training)",
    )
    p.add_argument(
        "--samples", type=positive_int, default=8, help="probe samples (random tokens) per length (default 8)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--documents",
        dest="input",
        default="probe",
        metavar="PATH",
        help="probe (the paper's repeated random token, default), stdlib (real Python code) or a file/directory",
    )
    renamed_option(p, "--input", "--documents", dest="input")
    p.add_argument("--layers", default=None, help="layers to analyse, e.g. 0-3,7 (default: all)")
    p.add_argument(
        "--hierarchy-input",
        default=None,
        help="source file for the hierarchy map (default: --documents' file or stdlib code)",
    )
    p.add_argument(
        "--hierarchy-length", type=positive_int, default=1024, help="tokens of the hierarchy map (default 1024)"
    )
    p.add_argument("--out", default=None, help="output directory (default: runs/analyze-<time>)")
    p.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads (1 to 1024)")
    p.add_argument(
        "--no-progress", action="store_true", help="accepted as on every command (this one shows no progress bar)"
    )
    device_options(p)
