"""The published long-context study: SmolLM2-135M on the test projects at 2x and 4x its train length.

    python -m bench context-study [--stages 2x,4x] [--work runs/context-study] [--threads 2]
    python -m bench context-study --publish        # summarise the finished stages into bench/results

Each stage is one ``ropelab eval`` run of the ``context`` task (:mod:`ropelab.eval.tasks.context`:
loss inside and beyond ``L``, far-dependent tokens, needles and symbol use sites, each against the
one-pass ``window`` reference) on the first ``samples`` test projects that hold the stage's
length (:mod:`ropelab.eval.projects`), document by document (every method on one document before
the next), so an interrupted study holds complete pairs and resumes where it stopped.

Stages (fixed before any test document was read; the methods the issue asks for, the costliest
dropped first as it allows: ``ntk`` and ``rerope`` without log-n are not run):

* ``2x`` (16K tokens), 20 projects: rope, yarn:factor=2, rerope:logn=true, self-extend, hirope
  and the window reference;
* ``4x`` (32K tokens), 8 projects: the methods that survive 2x -- yarn:factor=4,
  self-extend:group=5 (Self-Extend's rule ``(L - W) G + W >= N`` with W = 1024), hirope -- and
  the window reference.

CPU cost on 2 cores (measured, see docs/results.md): about 6 hours for 2x and 5 for 4x.
``--publish`` writes the per-document summaries (never the per-token losses) and the machine to
``bench/results/context_study.json`` for ``docs/results.md``, and each stage's run (its records,
gzipped) to ``bench/results/context_study/<stage>/``: a new checkout resumes from there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.common import at_least, items, restore, save

NAME = "context-study"
DESCRIPTION = "SmolLM2 on the test projects at 2x and 4x its train length: the published long-context study"

#: stage -> (length, projects, methods); fixed before any test document was evaluated
STAGES = {
    "2x": ("2x", 20, ["rope", "yarn:factor=2", "rerope:logn=true", "self-extend", "hirope"]),
    "4x": ("4x", 8, ["yarn:factor=4", "self-extend:group=5", "hirope"]),
}
OUT = Path("bench/results/context_study.json")
#: each stage's run (config.json, results.jsonl.gz), committed so that a later session resumes it
ARCHIVE = Path("bench/results/context_study")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="registry name or checkpoint (default: smollm2-135m)")
    parser.add_argument("--stages", type=items, default="2x,4x", help=f"stages to run, of {','.join(STAGES)}")
    parser.add_argument("--work", type=Path, default=Path("runs/context-study"), help="run directories (resumable)")
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch threads (default: torch's)")
    parser.add_argument("--publish", action="store_true", help="summarise the stages run so far into --out")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"error: unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
    if args.publish:
        return publish(args)
    import torch

    from ropelab.eval.runner import evaluate
    from ropelab.pretrained.registry import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    for stage in args.stages:
        restore(args.work / stage, ARCHIVE / stage)
        length, samples, methods = STAGES[stage]
        start = time.time()
        out = evaluate(
            model,
            tokenizer,
            args.model,
            methods,
            ["context"],
            [length],
            samples,
            args.work / stage,
            progress=not args.no_progress,
            order="sample",
        )
        print(f"stage {stage}: {out} ({(time.time() - start) / 3600:.2f} h this call)", file=sys.stderr)
    return 0


def publish(args: argparse.Namespace) -> int:
    from bench.common import machine_info, write_json
    from ropelab.eval.runner import read_results
    from ropelab.reporting.context import document_rows

    stages = {}
    for stage in args.stages:
        run_dir = args.work / stage
        if not (run_dir / "results.jsonl").exists():
            continue
        save(run_dir, ARCHIVE / stage)
        config = json.loads((run_dir / "config.json").read_text())
        records = read_results(run_dir / "results.jsonl")
        stages[stage] = {"config": config, "documents": document_rows(records, config["train_len"])}
    if not stages:
        raise SystemExit(f"error: no finished stage under {args.work}")
    write_json(args.out, {"benchmark": NAME, "machine": machine_info(), "stages": stages})
    print(f"wrote {args.out}")
    return 0


def section(data: dict | None, machine: Callable[[dict], str]) -> list[str]:
    """docs/results.md: the study's tables from ``data`` (``bench/results/context_study.json``, or
    None); ``machine`` says where it was measured."""
    from ropelab.reporting.context import render_context, summarise_rows

    lines = ["## 9. The long-context study: SmolLM2-135M on test projects at 2x and 4x its train length", ""]
    command = "python -m bench context-study && python -m bench context-study --publish"
    if not data:
        return [*lines, f"Not measured yet. Run `{command}` (resumable; about 11 CPU hours on 2 cores).", ""]
    lines += [
        "Every method on the same test projects (`src/ropelab/eval/projects.json`, chosen and split before any "
        "was evaluated), the `context` task: loss inside and beyond L, loss on far-dependent tokens, far needles "
        "and far symbol sites, each against the one-pass window reference (docs/evaluation.md). The document is "
        f"the unit of every interval and test. Machine: {machine(data)}. Regenerate: `{command}`.",
        "",
    ]
    for stage, part in data["stages"].items():
        config = part["config"]
        planned = STAGES[stage][1] if stage in STAGES else config["samples"]
        rows_per_document = Counter(r["index"] for r in part["documents"])
        complete = {i for i, count in rows_per_document.items() if count == len(config["methods"]) + 1}
        summary = summarise_rows(config, [r for r in part["documents"] if r["index"] in complete])
        lines += [f"### Stage {stage}", ""]
        if len(complete) < planned:
            done = Counter(r["method"] for r in part["documents"])
            lines += [
                f"**Partial: {len(complete)} of {planned} documents measured so far** (every method on each); the "
                "tables below use those documents only and will be regenerated when the stage finishes. Records so "
                "far: " + ", ".join(f"`{m}` {done.get(m, 0)}" for m in [*config["methods"], "window"]) + ".",
                "",
            ]
        body = render_context(config, "context", summary)
        lines += [("####" + line[2:]) if line.startswith("## ") else line for line in body]
    return lines
