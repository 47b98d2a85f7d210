"""``ropelab eval``, ``ropelab compare`` and ``ropelab report``.

ropelab compare                                  (the main job: SmolLM2, long-context use, 3 projects)
ropelab eval MODEL --methods SPEC,... --tasks ppl,passkey,... --lengths 0.5x,1x,12k [--device cuda] [--dtype bfloat16]
ropelab report RUN_DIR [RUN_B]
torchrun --nproc_per_node N -m ropelab eval ...    (the same run shared out over N processes)

``--device`` / ``--dtype`` (also on ``generate`` and ``analyze``, :func:`ropelab.cli.common.device_options`) are
checked before the model loads: a device that is not there, an unknown dtype or one the device
cannot run is one ``error:`` line (exit 2).

Under ``torchrun`` (``eval`` and ``compare``) every process loads the model and measures its share
of the run's units (:class:`ropelab.eval.runner.Shard`; on CUDA process ``r`` of a machine uses GPU
``r``); rank 0 merges the records into ``results.jsonl`` and writes the report.
"""

from __future__ import annotations

import argparse

from ropelab.cli.common import device_options, methods_argument, model_argument, renamed_option
from ropelab.core.args import positive_int, split_list, thread_count
from ropelab.core.errors import RopelabError
from ropelab.core.lengths import parse_length
from ropelab.eval import get_task
from ropelab.eval.runner import Shard, check_document_tasks, check_run_dir, check_samples, evaluate
from ropelab.eval.user_documents import load_documents
from ropelab.model.device import resolve_placement
from ropelab.pe import split_specs
from ropelab.pretrained.registry import load_model
from ropelab.reporting.eval import compare_runs, write_report
from ropelab.train import distributed

#: how long a process of a sharded run may wait at a barrier for the slowest one (its share may
#: take much longer than torch's default 30 minutes); a process that fails ends the run anyway
#: (torchrun stops the others)
BARRIER_TIMEOUT_S = 7 * 24 * 3600

#: the HiRoPE paper's comparison on one model: plain RoPE, its strongest training-free baseline and
#: HiRoPE (each costs one 12K pass per document; add yarn:factor=2, ntk:factor=2, rerope with --methods)
#: the main job's method: HiRoPE against the window reference (each further method costs one pass per
#: document, about a minute at 10K tokens on 2 cores: ``--methods hirope,self-extend,rope`` adds them)
COMPARE_METHODS = "hirope"
#: the main job's length and documents: the most power per minute on 2 cores (docs/evaluation.md)
COMPARE_LENGTH, COMPARE_DOCUMENTS = "1.25x", 3


def _task_lengths(items: list[str] | None) -> dict[str, list[str]]:
    result = {}
    for item in items or []:
        task, eq, lengths = item.partition("=")
        if not eq or not task.strip() or not lengths.strip():
            raise RopelabError(f"--task-lengths expects TASK=LEN[,LEN...], got {item!r}")
        result[task.strip()] = split_list(lengths)
    return result


def _run_eval(args: argparse.Namespace, task_lengths: list[str] | None, passkey_at_longest: bool = False) -> int:

    methods = split_specs(args.methods)  # a malformed list fails before the model loads
    documents = load_documents(args.documents) if args.documents else None  # so do unreadable documents
    if args.samples is None:  # every document given, else the command's default
        args.samples = len(documents) if documents else args.default_samples
    check_samples(args.samples)
    for name in split_list(args.tasks):
        get_task(name)  # unknown task names fail before the model loads
    if documents:
        check_document_tasks(split_list(args.tasks))
    resolve_placement(args.device, args.dtype)  # so do a missing device and a bad dtype
    if args.out:
        check_run_dir(args.out)  # and an --out that is a file, or holds a damaged run
    info = distributed.setup("cpu", backend="gloo", timeout_s=BARRIER_TIMEOUT_S)  # under torchrun: the group
    try:
        return _run_eval_process(args, methods, task_lengths, passkey_at_longest, info, documents)
    finally:
        distributed.teardown(info)


def _run_eval_process(
    args, methods: list[str], task_lengths, passkey_at_longest: bool, info, documents: list | None
) -> int:
    """One process's part of ``_run_eval`` (the only one, or one of torchrun's)."""
    import time

    import torch

    threads = args.threads or distributed.default_threads(info)
    if threads:
        torch.set_num_threads(threads)
    model_name = args.model
    device, dtype = resolve_placement(args.device, args.dtype)
    if info.enabled and device.type == "cuda" and args.device in ("cuda", "auto"):  # one GPU per process
        device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
    if info.local_rank == 0:  # a first load converts and caches the weights: once per machine
        model, tokenizer = load_model(model_name, device=device, dtype=dtype)
        info.barrier()
    else:
        info.barrier()
        model, tokenizer = load_model(model_name, device=device, dtype=dtype)
    if tokenizer is None:
        raise RopelabError(f"{model_name}: has no tokenizer.json; evaluation needs one")
    if passkey_at_longest:  # the longest of --lengths (so ppl on its haystack reaches every ppl length)
        longest = max(split_list(args.lengths), key=lambda x: parse_length(x, model.config.train_len))
        task_lengths = [f"passkey={longest}"]
    out = info.broadcast(args.out or f"runs/{args.command}-{time.strftime('%Y%m%d-%H%M%S')}")  # rank 0's
    run = evaluate(
        model,
        tokenizer,
        model_name,
        methods,
        split_list(args.tasks),
        split_list(args.lengths),
        args.samples,
        out,
        seed=args.seed,
        include_window=not args.no_window,
        task_lengths=_task_lengths(task_lengths),
        ppl_document=args.ppl_document,
        shard=Shard(info.rank, info.world_size, info.barrier),
        progress=not args.no_progress,
        documents=documents,
    )
    if not info.main:
        return 0
    report = write_report(run)
    print(report.read_text())
    print(f"report: {report} (plots and results.jsonl beside it)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    return _run_eval(args, args.task_lengths)


def cmd_compare(args: argparse.Namespace) -> int:
    """The main job: the ``context`` task (:mod:`ropelab.eval.tasks.context`) at 1.25x the train length on
    the first three test projects (Python, Java, and code newer than the model), for ``hirope``: one
    pass per method and document gives the loss inside and beyond L, the far-dependent tokens, the
    needles and the symbol sites, each against the window reference. With
    ``--tasks ppl,passkey`` passkey runs at the longest length only (1.5x) and ppl is scored on its
    haystack, so one pass per method serves both."""
    with_passkey = "passkey" in split_list(args.tasks)
    if args.ppl_document is None:
        args.ppl_document = "haystack" if with_passkey else "code"
    return _run_eval(args, args.task_lengths, passkey_at_longest=args.task_lengths is None and with_passkey)


def cmd_report(args: argparse.Namespace) -> int:

    if len(args.runs) == 1:
        path = write_report(args.runs[0])
        print(path.read_text())
        print(f"report: {path}")
    elif len(args.runs) == 2:
        print(compare_runs(*args.runs))
    else:
        raise RopelabError("ropelab report takes one run directory (re-render) or two (compare)")
    return 0


def _eval_options(
    p: argparse.ArgumentParser, methods: str, tasks: str, lengths: str, samples: int, ppl_document: str | None = "code"
) -> None:
    methods_argument(p, methods, f"comma-separated method specs (default: {methods})")
    p.add_argument("--tasks", default=tasks, help=f"comma-separated tasks (default: {tasks})")
    p.add_argument(
        "--lengths",
        default=lengths,
        help=f"input lengths: 0.5x, 2x (train length multiples), 12k, 4096 (default: {lengths})",
    )
    p.add_argument(
        "--task-lengths", action="append", metavar="TASK=LEN,...", help="other lengths for one task (repeatable)"
    )
    p.add_argument(
        "--samples",
        type=positive_int,
        default=None,
        help=f"samples (documents) per task x length (default: every document given, else {samples})",
    )
    p.set_defaults(default_samples=samples)
    p.add_argument(
        "--documents",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="your code in place of the built-in documents (context, ppl, passkey): directories (one project "
        "document each), files, globs (a document per file)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default=None, help="run directory (default: runs/<command>-<time>); an existing one resumes"
    )
    p.add_argument(
        "--no-reference",
        dest="no_window",
        action="store_true",
        help="skip the reference row (`window`: the model's own method, attention limited to the train length)",
    )
    renamed_option(p, "--no-window", "--no-reference", dest="no_window", nargs=0, const=True)
    p.add_argument(
        "--ppl-document",
        choices=("code", "haystack"),
        default=ppl_document,
        help="ppl on plain long code, or on the passkey haystacks (that code plus the needle line; one pass "
        f"per method serves both tasks) (default: {ppl_document or 'haystack when passkey runs, else code'})",
    )
    p.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads (1 to 1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (scripts, CI logs)")
    device_options(p)


def eval_options(p: argparse.ArgumentParser) -> None:
    model_argument(p)
    _eval_options(p, "rope,yarn:factor=2", "ppl,passkey", "0.5x,1x,1.5x", 1)


def compare_options(p: argparse.ArgumentParser) -> None:
    model_argument(p, default="smollm2-135m")
    _eval_options(p, COMPARE_METHODS, "context", COMPARE_LENGTH, COMPARE_DOCUMENTS, ppl_document=None)


def report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="RUN_DIR, or RUN_A RUN_B")
