"""`ropelab train` and `ropelab experiment` (commands of :data:`ropelab.cli.COMMANDS`).

    ropelab train --methods hope --model-config tiny --train-len 256 --steps 500 --out runs/hope [--data PATHS]
    ropelab train --methods rope --minutes 10 --out runs/rope            # steps calibrated to the budget
    torchrun --nproc_per_node 2 -m ropelab train ...             # the same, data parallel
    torchrun --nproc_per_node 2 -m ropelab train --parallel fsdp ...  # the same, sharded (FSDP2)
    ropelab experiment hope --budget-minutes 60 --out runs/hope-exp  # the paper's comparison

Running the same command again with the same --out resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import os
import time

from ropelab.cli.common import device_options, one_method, renamed_option
from ropelab.core.args import split_list, thread_count
from ropelab.core.errors import RopelabError
from ropelab.core.io import check_out_dir
from ropelab.experiments.hirope.config import ShortConfig
from ropelab.experiments.hirope.run import rerender as rerender_hirope
from ropelab.experiments.hirope.run import run_experiment as run_hirope_experiment
from ropelab.experiments.hope.config import ABLATIONS, DEFAULT_LENGTHS, DEFAULT_PES, DEFAULT_TASKS, ExperimentConfig
from ropelab.experiments.hope.report import write_experiment_report
from ropelab.experiments.hope.run import run_experiment as run_hope_experiment
from ropelab.pe import split_specs
from ropelab.train.config import PARALLEL, SCHEDULES, TrainConfig
from ropelab.train.trainer import describe_result, train


def cmd_train(args: argparse.Namespace) -> int:
    check_out_dir(args.out)  # before the data is tokenised
    config = TrainConfig(
        pe=one_method(args.pe, "train") or "rope",
        model_config=args.model_config,
        train_len=args.train_len,
        data=args.data or ["stdlib"],
        holdout=args.holdout or [],
        tokenizer=args.tokenizer,
        val_fraction=args.val_fraction,
        synthetic=args.synthetic,
        synthetic_repeat=args.synthetic_repeat,
        seed=args.seed,
        steps=args.steps,
        minutes=args.minutes,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        lr=args.lr,
        schedule=args.schedule,
        min_lr_ratio=args.min_lr_ratio,
        warmup=args.warmup,
        beta1=args.beta1,
        beta2=args.beta2,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        eval_every=args.eval_every,
        val_sequences=args.val_sequences,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        keep=args.keep,
        device=args.device,
        threads=args.threads,
        parallel=args.parallel,
    )
    result = train(config, args.out, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{args.out}: {describe_result(result)}")
    return 0 if result.status != "interrupted" else 130


def cmd_experiment(args: argparse.Namespace) -> int:
    if args.out:
        check_out_dir(args.out)  # before any calibration or training
    if args.name == "hirope":
        return _cmd_hirope(args)
    import torch

    out = args.out or f"runs/experiment-{args.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.report_only:
        if not args.out:
            raise RopelabError("--report-only needs --out pointing at an experiment directory")
        path = write_experiment_report(out)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        pes = (split_specs(args.pes) if args.pes.strip() else []) + (list(ABLATIONS) if args.ablations else [])
        config = ExperimentConfig(
            pes=pes,
            budget_minutes=args.budget_minutes,
            model_config=args.model_config,
            train_len=args.train_len,
            data=args.data or ["stdlib"],
            holdout_eval=not args.no_holdout,
            tokenizer=args.tokenizer,
            tasks=split_list(args.tasks),
            lengths=split_list(args.lengths),
            samples=args.samples,
            scale_factor=args.scale_factor,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            window=args.window,
            steps=args.steps,
            synthetic=args.synthetic,
            synthetic_repeat=args.synthetic_repeat,
            seeds=ExperimentConfig().seeds if args.seeds is None else args.seeds,
            seed_pes=split_specs(args.seed_pes),
            other_seeds=args.other_seeds,
            other_seed_pes=split_specs(args.other_seed_pes) if args.other_seed_pes.strip() else [],
            tune_lr=not args.no_tune,
            tune_steps=args.tune_steps,
        )
        path = run_hope_experiment(
            config, out, progress=not args.no_progress, analysis=not args.no_analysis, jobs=args.jobs
        )
    print(path.read_text())
    print(f"report: {path} (summary.json, plots, models/ and eval/ beside it)")
    return 0


def _cmd_hirope(args: argparse.Namespace) -> int:
    import time

    out = args.out or f"runs/experiment-hirope-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    count = len(ShortConfig().seeds) if args.seeds is None else args.seeds
    config = ShortConfig(
        seeds=list(range(args.seed, args.seed + count)),
        steps=args.steps,
        length=args.length,
        documents=args.documents,
        dev_documents=args.dev_documents,
        languages=split_list(args.languages),
        model_config=args.model_config,
    )
    if args.report_only:
        if not args.out:
            raise RopelabError("--report-only needs --out pointing at an experiment directory")
        path = rerender_hirope(out)
    else:
        path = run_hirope_experiment(config, out, progress=not args.no_progress, train_only=args.train_only)
    if args.train_only:
        print(f"trained: {out} (the same command without --train-only evaluates)")
        return 0
    print(path.read_text())
    print(f"report: {path}")
    return 0


def synthetic_options(p: argparse.ArgumentParser, share: float, repeat: float) -> None:
    """``--synthetic`` and ``--synthetic-repeat`` (ropelab.data.synthetic) with these defaults."""
    p.add_argument(
        "--synthetic",
        type=float,
        default=share,
        help=f"share of training sequences replaced by synthetic record sequences, which make in-context copying "
        f"learnable (default: {share:g}; see ropelab.data.synthetic)",
    )
    p.add_argument(
        "--synthetic-repeat",
        type=float,
        default=repeat,
        help=f"probability that a synthetic record repeats an earlier one (default: {repeat:g})",
    )


def train_options(p: argparse.ArgumentParser) -> None:

    d = TrainConfig()
    p.add_argument(
        "--methods", "--method", dest="pe", default=d.pe, metavar="SPEC",
        help="the position method to train with, one spec (default: rope), e.g. hope, alibi, fire",
    )  # fmt: skip
    renamed_option(p, "--pe", "--methods", dest="pe")
    p.add_argument("--model-config", default=d.model_config, help="named model config (default: tiny)")
    p.add_argument("--train-len", type=int, default=None, help="training sequence length (default: the config's)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="optimizer steps")
    budget.add_argument("--minutes", type=float, help="time budget; the steps are calibrated to fit it")
    p.add_argument("--out", required=True, help="run directory; an existing one with the same settings resumes")
    p.add_argument("--data", nargs="+", metavar="PATH", help="directories, files or globs (default: stdlib)")
    p.add_argument("--holdout", nargs="+", metavar="FILE", help="files that always go to the validation split")
    p.add_argument(
        "--tokenizer",
        default=d.tokenizer,
        help="bpe-8k, bpe-4k, bpe-N, a tokenizer.json or a registry model (default: bpe-8k)",
    )
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="validation share of files (0.05)")
    synthetic_options(p, d.synthetic, d.synthetic_repeat)
    p.add_argument("--seed", type=int, default=d.seed, help="model init, data order and split (default: 0)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per step, all processes (16)")
    p.add_argument("--micro-batch-size", type=int, default=None, help="sequences per forward (gradient accumulation)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (the paper's 3e-4)")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="after warm-up (default: cosine)")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="cosine floor / peak (0.1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 4%% of steps, at most 2000)")
    p.add_argument("--beta1", type=float, default=d.beta1)
    p.add_argument("--beta2", type=float, default=d.beta2)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (1.0; 0 = off)")
    p.add_argument(
        "--eval-every", type=int, default=None, help="validation loss every N steps (default: with each checkpoint)"
    )
    p.add_argument("--val-sequences", type=int, default=d.val_sequences, help="validation sequences (64)")
    p.add_argument("--log-every", type=int, default=d.log_every, help="log.jsonl line every N steps (10)")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="checkpoint every N steps (default: a tenth of the run) and at the end",
    )
    p.add_argument("--keep", type=int, default=d.keep, help="keep the newest N checkpoints (default 0: all)")
    device_options(p, dtype=False)  # under torchrun with cuda (or auto), process r uses GPU r
    p.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads (1 to 1024)")
    p.add_argument(
        "--parallel",
        choices=PARALLEL,
        default=d.parallel,
        help="under torchrun: ddp (default; every process holds the model) or fsdp (FSDP2: parameters, gradients "
        "and optimizer state sharded over the processes; checkpoints are the same files)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def experiment_options(p: argparse.ArgumentParser) -> None:
    """``ropelab experiment hope|hirope``: one subcommand per experiment, each with the options of
    its own config (defaults read from it)."""
    sub = p.add_subparsers(dest="name", metavar="EXPERIMENT", required=True)
    hope = sub.add_parser(
        "hope", help="the HoPE paper's comparison: train every PE, evaluate, one report", description=HOPE_HELP
    )
    _hope_options(hope)
    hirope = sub.add_parser("hirope", help=HIROPE_HELP, description=HIROPE_HELP)
    _hirope_options(hirope)


HOPE_HELP = "the HoPE paper's comparison at CPU scale: train every encoding with seeds, evaluate, analyse, report"
HIROPE_HELP = (
    "the HiRoPE paper's ShortLLM study: train a RoPE code model at L=128 with seeds, choose HiRoPE's setting on "
    "development projects, evaluate every training-free method up to L^2 on test projects"
)


def _shared_options(p: argparse.ArgumentParser, name: str, seed: int, seeds_help: str) -> None:
    """What both experiments take: where, how many seeds, threads, report only, progress."""
    p.add_argument(
        "--out",
        default=None,
        help=f"experiment directory (default: runs/experiment-{name}-<time>); an existing one resumes",
    )
    p.add_argument("--seed", type=int, default=seed, help=f"first seed (default: {seed})")
    p.add_argument("--seeds", type=int, default=None, help=seeds_help)
    p.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads (1 to 1024)")
    p.add_argument("--report-only", action="store_true", help="re-render the report of --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _hope_options(p: argparse.ArgumentParser) -> None:
    e = ExperimentConfig()
    _shared_options(
        p, "hope", e.seed, f"train the --seed-pes with this many seeds (seed, seed+1, ...; default: {e.seeds})"
    )
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=e.budget_minutes,
        help="size the steps and samples to fit this wall time (default: the recipe's fixed steps and samples; 3 for "
        "a smoke run)",
    )
    p.add_argument(
        "--pes", default=",".join(DEFAULT_PES), help=f"encodings to train (default: {','.join(DEFAULT_PES)})"
    )
    p.add_argument("--ablations", action="store_true", help="also train hope-ab1, hope-ab2, hope-ab3")
    p.add_argument("--model-config", default=e.model_config, help=f"named model config (default: {e.model_config})")
    p.add_argument("--train-len", type=int, default=e.train_len, help=f"training length (default: {e.train_len})")
    p.add_argument("--data", nargs="+", metavar="PATH", help="training corpus (default: stdlib)")
    p.add_argument("--no-holdout", action="store_true", help="also train on the stdlib files the evaluation reads")
    p.add_argument("--tokenizer", default=e.tokenizer, help=f"default: {e.tokenizer}")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"default: {','.join(DEFAULT_TASKS)}")
    p.add_argument("--lengths", default=",".join(DEFAULT_LENGTHS), help=f"default: {','.join(DEFAULT_LENGTHS)}")
    p.add_argument(
        "--samples", type=int, default=None, help="samples per cell (default: the recipe's, or sized from the budget)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="steps per model (default: the recipe's, or from the budget)"
    )
    p.add_argument(
        "--scale-factor",
        type=float,
        default=None,
        help="factor of +pi / +yarn (default: longest length / train length)",
    )
    p.add_argument("--batch-size", type=int, default=e.batch_size, help=f"default: {e.batch_size}")
    p.add_argument("--lr", type=float, default=e.lr, help=f"peak learning rate (default: {e.lr:g})")
    p.add_argument(
        "--seed-pes",
        default=",".join(e.seed_pes),
        help=f"encodings that get --seeds seeds (default: {','.join(e.seed_pes)})",
    )
    p.add_argument(
        "--other-seeds",
        type=int,
        default=e.other_seeds,
        help=f"seeds of the --other-seed-pes (default: {e.other_seeds})",
    )
    p.add_argument(
        "--other-seed-pes",
        default=",".join(e.other_seed_pes),
        help=f"encodings that get --other-seeds seeds, where trained (default: {','.join(e.other_seed_pes)})",
    )
    p.add_argument("--no-tune", action="store_true", help="train every encoding at --lr (no learning-rate sweep first)")
    p.add_argument("--tune-steps", type=int, default=None, help="steps of each learning-rate tuning run")
    synthetic_options(p, e.synthetic, e.synthetic_repeat)
    p.add_argument(
        "--reference", dest="window", action="store_true", help="also score every model with its context truncated"
    )
    renamed_option(p, "--window", "--reference", dest="window", nargs=0, const=True)
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="models trained and evaluated at a time, in worker processes sharing the cores (default: 2 where there "
        "are 2 cores or more)",
    )
    p.add_argument("--no-analysis", action="store_true", help="skip the attention-pattern / VAF / OOD analysis")


def _hirope_options(p: argparse.ArgumentParser) -> None:
    c = ShortConfig()
    _shared_options(p, "hirope", 0, f"training seeds of the model (default: {len(c.seeds)})")
    p.add_argument("--steps", type=int, default=c.steps, help=f"training steps per seed (default: {c.steps})")
    p.add_argument(
        "--length", type=int, default=c.length, help=f"evaluation document length (default: L^2 = {c.length})"
    )
    p.add_argument(
        "--test-projects", dest="documents", type=int, default=c.documents,
        help=f"test projects per language (default: {c.documents}, all of them)",
    )  # fmt: skip
    renamed_option(p, "--documents", "--test-projects", dest="documents", type=int)
    p.add_argument(
        "--dev-projects", dest="dev_documents", type=int, default=c.dev_documents,
        help=f"development projects per language (default: {c.dev_documents})",
    )  # fmt: skip
    renamed_option(p, "--dev-documents", "--dev-projects", dest="dev_documents", type=int)
    p.add_argument("--languages", default=",".join(c.languages), help=f"default: {','.join(c.languages)}")
    p.add_argument("--model-config", default=c.model_config, help=f"named model config (default: {c.model_config})")
    renamed_option(p, "--hirope-model-config", "--model-config", dest="model_config")
    p.add_argument("--train-only", action="store_true", help="train the seeds, evaluate later")


__all__ = ["cmd_experiment", "cmd_train", "experiment_options", "train_options"]
