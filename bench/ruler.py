"""RULER (Hsieh et al. 2024, arXiv:2404.06654) on a real model under several position methods, through
lm-evaluation-harness's RULER tasks and ropelab's ``ropelab`` lm-eval model, offline.

    python -m bench ruler [--model smollm2-135m] [--methods rope,self-extend,hirope] [--lengths 1x,2x]
                          [--tasks niah_single_1,...] [--samples 20] [--work runs/ruler]
                          [--out bench/results/ruler.json] [--threads N]

One cell per task x length x method: ``lm_eval.simple_evaluate`` of that task at that length on its
first ``--samples`` inputs, whose per-sample scores go to ``WORK/<task>/<length>/<method>.json``. A
cell whose file holds at least ``--samples`` samples is skipped, so an interrupted run resumes
where it stopped. Each cell runs in its own process: lm-eval seeds its generators before building a
task's inputs but keeps some state between tasks in one process, so this way every method gets the
same inputs (checked by their hashes before any comparison). Tasks that need a download
(:data:`ropelab.integrations.lm_eval_ruler.NEEDS_DOWNLOAD`) are skipped with one line each.

Statistics (``--out``). A sample is its own independent unit (its own haystack, needle and
question). Per cell: n, the mean score and a 95 % interval -- Clopper-Pearson (exact binomial,
scipy) where every score is 0 or 1 (the needle tasks), else the t interval with n - 1 degrees of
freedom (``ruler_vt``, ``ruler_cwe``, ``ruler_fwe`` score the fraction of the answer's words
found). Each method against the first of ``--methods`` on the same samples: the exact sign test
(two-sided binomial on the samples where one scores higher, ties dropped; for 0/1 scores this is
the exact McNemar test), Holm-adjusted over every comparison of the table (Holm 1979).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import at_least, isolated, items, write_json

NAME = "ruler"
DESCRIPTION = "RULER's offline tasks (lm-eval) on a real model under several methods, at 1x and 2x its train length"
OUT = Path("bench/results/ruler.json")
DEFAULT_METHODS = "rope,self-extend,hirope"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ropelab.integrations.lm_eval_ruler import OFFLINE

    parser.add_argument("--model", default="smollm2-135m", help="registry name or checkpoint (default: smollm2-135m)")
    parser.add_argument(
        "--methods", default=DEFAULT_METHODS, help=f"specs; the first is the reference ({DEFAULT_METHODS})"
    )
    parser.add_argument("--lengths", type=items, default="1x,2x", help="1x, 2x (train length multiples), 8k, 8192")
    parser.add_argument(
        "--tasks", type=items, default=",".join(OFFLINE), help="RULER tasks (default: the offline ones)"
    )
    parser.add_argument("--samples", type=at_least(1), default=20, help="samples per cell (default: 20)")
    parser.add_argument("--work", type=Path, default=Path("runs/ruler"), help="one result file per cell (resumable)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch threads (default: torch's)")


def cell_path(work: Path, task: str, label: str, method: str) -> Path:
    from ropelab.reporting.analysis_plots import slug

    return work / task / slug(label) / f"{slug(method)}.json"


def _done(path: Path, samples: int, **expected) -> dict | None:
    """The cell stored at ``path`` when it is the one ``expected`` names and holds ``samples``."""
    try:
        cell = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cell, dict) or any(cell.get(key) != value for key, value in expected.items()):
        return None
    return cell if len(cell.get("records", [])) >= samples else None


def run(args: argparse.Namespace) -> int:
    from ropelab.core.errors import RopelabError
    from ropelab.integrations import lm_eval_ruler as ruler
    from ropelab.pe import canonical_spec, split_specs

    if importlib.util.find_spec("lm_eval") is None:
        raise RopelabError(f"the ruler benchmark needs lm-evaluation-harness: {ruler.INSTALL}")
    methods = split_specs(args.methods)
    unknown = [t for t in args.tasks if t not in ruler.TASKS]
    if unknown:
        raise RopelabError(f"unknown RULER task(s) {', '.join(unknown)}; known: {', '.join(ruler.TASKS)}")
    for task in [t for t in args.tasks if t in ruler.NEEDS_DOWNLOAD]:
        print(f"skipped {task}: needs a download ({ruler.NEEDS_DOWNLOAD[task]})")
    tasks = [t for t in args.tasks if t not in ruler.NEEDS_DOWNLOAD]
    if not tasks:
        raise RopelabError("no offline RULER task left to run")
    for method in methods:
        canonical_spec(method)  # an unknown method or parameter: one error line before any cell runs
    train_len = ruler.train_length(args.model)
    sizes = {label: ruler.lengths(label, train_len)[0] for label in args.lengths}
    ruler.check_lengths(tasks, sizes.values())
    ruler.check_packages()
    cells, failed = {}, []
    for method in methods:
        for task in tasks:
            for label, length in sizes.items():
                path = cell_path(args.work, task, label, method)
                same = {"model": args.model, "method": method, "task": task, "length": length}
                cell = _done(path, args.samples, **same)
                if cell is None:
                    spec = same | {"label": label, "samples": args.samples, "threads": args.threads, "path": str(path)}
                    result = isolated("bench.ruler", [json.dumps(spec)])
                    if "error" in result:
                        print(f"{task} {label} {method}: failed: {result['error']}", flush=True)
                        failed.append((task, label, method))
                        continue
                    print(f"{task} {label} ({length}) {method}: mean {result['mean']:.3f} over {result['n']} "
                          f"in {result['seconds']:.0f} s", flush=True)  # fmt: skip
                    cell = _done(path, args.samples, **same)
                cells[task, label, method] = cell
    if failed:
        print(f"{len(failed)} cell(s) failed; {args.out} not written (rerun to retry them)")
        return 1
    data = summarise(args, methods, tasks, sizes, train_len, cells)
    write_json(args.out, data)
    for line in table(data):
        print(line)
    print(f"wrote {args.out}")
    return 0


def worker(spec: dict) -> dict:
    """One cell, in its own process (:func:`bench.common.isolated`): its inputs then depend only on
    the task, the length and the tokenizer (lm-eval's generators keep state between tasks in one
    process). Writes the cell's file and returns a summary."""
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from ropelab.integrations import lm_eval_ruler as ruler
    from ropelab.integrations.lm_eval_plugin import RopelabLM

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    task, length = spec["task"], spec["length"]
    model_args, metadata = ruler.prepare(
        [task], {"pretrained": spec["model"], "method": spec["method"]}, {"max_seq_lengths": [length]}
    )
    lm = RopelabLM(**model_args, device="cpu", batch_size=1)
    manager = TaskManager(  # RULER's files only, not lm-eval's thousands of tasks
        include_path=str(Path(lm_eval.__file__).parent / "tasks" / "ruler"), include_defaults=False, metadata=metadata
    )
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=manager, limit=spec["samples"], log_samples=True, bootstrap_iters=0
    )
    seconds = time.perf_counter() - start
    records = [
        {
            "doc_id": int(s["doc_id"]),
            "doc_hash": s["doc_hash"],
            "score": float(s[str(length)]),
            "prompt_tokens": s["doc"]["length"],
            "target": s["doc"]["outputs"],
            "response": s["resps"][0][0][:500],
        }
        for s in sorted(results["samples"][task], key=lambda s: int(s["doc_id"]))
    ]
    cell = {key: spec[key] for key in ("task", "label", "length", "method", "model")}
    write_json(spec["path"], cell | {"seconds": seconds, "records": records})
    return {"n": len(records), "mean": sum(r["score"] for r in records) / len(records), "seconds": seconds}


# -- statistics -----------------------------------------------------------------------------------


def cell_interval(scores: list[float]) -> dict:
    """n, mean and the 95 % interval of one cell's scores (module docstring)."""
    from scipy import stats as st

    from ropelab.eval.stats import interval

    n = len(scores)
    mean = sum(scores) / n if n else math.nan
    if n and all(s in (0.0, 1.0) for s in scores):
        ci = st.binomtest(int(sum(scores)), n).proportion_ci(confidence_level=0.95, method="exact")
        return {"n": n, "mean": mean, "lo": ci.low, "hi": ci.high, "interval": "clopper-pearson", "df": None}
    t = interval(scores)
    return {"n": n, "mean": mean, "lo": t.lo, "hi": t.hi, "interval": "t", "df": t.df}


def sign_test(a: list[float], b: list[float]) -> dict:
    """Paired exact sign test of ``a`` against ``b`` (same samples, in order); ties dropped."""
    from scipy import stats as st

    wins = sum(x > y for x, y in zip(a, b))
    losses = sum(x < y for x, y in zip(a, b))
    p = st.binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    diff = sum(x - y for x, y in zip(a, b)) / len(a) if a else math.nan
    return {"n": len(a), "wins": wins, "losses": losses, "ties": len(a) - wins - losses, "mean_diff": diff, "p": p}


def summarise(args, methods: list[str], tasks: list[str], sizes: dict[str, int], train_len: int, cells: dict) -> dict:
    from bench.common import machine_info
    from ropelab.eval.stats import holm

    rows, comparisons = [], []
    for task in tasks:
        for label, length in sizes.items():
            scored = {}
            for method in methods:
                records = cells[task, label, method]["records"][: args.samples]
                scored[method] = records
                rows.append(
                    {"task": task, "label": label, "length": length, "method": method}
                    | cell_interval([r["score"] for r in records])
                    | {"seconds": cells[task, label, method]["seconds"]}
                )
            reference = methods[0]
            for method in methods[1:]:
                a, b = scored[method], scored[reference]
                if [(r["doc_id"], r["doc_hash"]) for r in a] != [(r["doc_id"], r["doc_hash"]) for r in b]:
                    raise SystemExit(
                        f"error: {task} {label}: {method} and {reference} were scored on different samples"
                    )
                test = sign_test([r["score"] for r in a], [r["score"] for r in b])
                comparisons.append({"task": task, "label": label, "method": method, "reference": reference} | test)
    for comparison, adjusted in zip(comparisons, holm([c["p"] for c in comparisons])):
        comparison["p_holm"] = adjusted
    return {
        "benchmark": NAME,
        "model": args.model,
        "train_len": train_len,
        "methods": methods,
        "lengths": sizes,
        "tasks": tasks,
        "samples": args.samples,
        "cells": rows,
        "comparisons": comparisons,
        "machine": machine_info(),
    }


# -- reporting ------------------------------------------------------------------------------------


def _pct(row: dict) -> str:
    if not row["n"]:
        return "-"
    body = f"{100 * row['mean']:.0f}"
    if math.isnan(row["lo"]) or math.isnan(row["hi"]):
        return body
    return f"{body} [{100 * row['lo']:.0f}, {100 * row['hi']:.0f}]"


def table(data: dict) -> list[str]:
    """Markdown: per task, methods x lengths (mean % [95 % interval]), then the comparisons."""
    labels = list(data["lengths"])
    head = " | ".join(f"{label} ({data['lengths'][label]})" for label in labels)
    lines = []
    for task in data["tasks"]:
        lines += [f"**{task}**", "", f"| method | {head} |", "|---|" + "---:|" * len(labels)]
        for method in data["methods"]:
            found = {r["label"]: r for r in data["cells"] if r["task"] == task and r["method"] == method}
            lines.append(f"| `{method}` | " + " | ".join(_pct(found[label]) for label in labels) + " |")
        lines.append("")
    if data["comparisons"]:
        lines += [
            "| task | length | method - reference | better / worse / tied | mean difference | p | Holm p |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for c in data["comparisons"]:
            lines.append(
                f"| {c['task']} | {c['label']} | `{c['method']}` - `{c['reference']}` | {c['wins']} / {c['losses']} / "
                f"{c['ties']} | {100 * c['mean_diff']:+.0f} | {c['p']:.2g} | {c['p_holm']:.2g} |"
            )
        lines.append("")
    return lines


def section(data: dict | None, machine: Callable[[dict], str]) -> list[str]:
    """docs/results.md: the RULER tables from ``data`` (``bench/results/ruler.json``, or None)."""
    lines = ["## 11. RULER's offline tasks on SmolLM2-135M (lm-eval, through the `ropelab` model)", ""]
    command = "python -m bench ruler"
    if not data:
        return [*lines, f"Not measured yet. Run `{command}` (resumable).", ""]
    lines += [
        f"Scores in % on the first {data['samples']} inputs of each of lm-eval's offline RULER tasks (Hsieh et al. "
        f"2024), model `{data['model']}` (train length {data['train_len']}); each method is compared with "
        f"`{data['methods'][0]}` on the same inputs. Intervals: 95 %, Clopper-Pearson for 0/1 scores, t (n - 1 "
        "df) for fractions; comparisons: exact sign test, Holm-adjusted over the table (docs/evaluation.md, "
        f"'RULER'). Machine: {machine(data)}. Regenerate: `{command}`.",
        "",
    ]
    return lines + table(data)


if __name__ == "__main__":  # one cell: python -m bench.ruler SPEC_JSON (run() starts these)
    print(json.dumps(worker(json.loads(sys.argv[1]))))
