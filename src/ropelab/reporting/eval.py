"""Turn a run directory's ``results.jsonl`` into ``summary.json``, ``report.md`` and PNG plots.

Tables: one per task, methods as rows, lengths as columns, the task's headline metric averaged
over samples, the best value of each column in bold. The ``window`` row (context truncated to the
train length) is the reference: for every length beyond the train length the report states which
methods beat it. ``ropelab report RUN_A RUN_B`` puts two runs side by side.

A task declares how it is shown (:class:`ropelab.eval.base.Task`): ``report_kind`` picks its
summary, section and plot functions from :data:`KINDS` (``"table"``: the above; ``"context"``: the
``context`` task's sections and figures), ``report_note`` extends its table's heading, and
``grid_key`` adds a heatmap of its headline metric over that recorded key x length.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ropelab.core.errors import RopelabError
from ropelab.core.io import atomic_write_text
from ropelab.eval import TASKS, Task, get_task
from ropelab.eval.runner import REFERENCE, read_results
from ropelab.eval.stats import call, differences, family, holm, interval, paired
from ropelab.reporting.common import (
    length_label,
    method_style,
    methods_order,
    outside_legend,
    save_figure,
    series_labels,
    tokens_text,
)
from ropelab.reporting.context import context_plots, render_context, summarise_context


class ReportKind(NamedTuple):
    """How the tasks of one ``Task.report_kind`` are summarised, rendered and plotted."""

    #: (config, task name, the task's records) -> the task's entry of ``summary.json``
    summarise: Callable[[dict, str, list[dict]], dict]
    #: (config, task name, the task's summary) -> its lines of ``report.md``
    render: Callable[[dict, str, dict], list[str]]
    #: (run directory, config, task name, the task's summary, the task's records) -> PNGs written
    plot: Callable[[Path, dict, str, dict, list[dict]], list[str]]
    #: the stem of a plot shown at the top of the report instead of with the other plots, or ""
    lead: str = ""


def _task_class(name: str) -> type[Task]:
    """The task's class, for what it declares about its report (the base class's defaults for a
    name that is no longer registered, e.g. in an old ``summary.json``)."""
    return TASKS.get(name, Task)


def _kind(name: str) -> ReportKind:
    kind = _task_class(name).report_kind
    if kind not in KINDS:
        raise RopelabError(f"{name}: unknown report kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return KINDS[kind]


def _by_task(records: list[dict]) -> dict[str, list[dict]]:
    by_task: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_task[record["task"]].append(record)
    return by_task


def _load(run: Path) -> tuple[dict, list[dict]]:
    config_path, results_path = run / "config.json", run / "results.jsonl"
    if not config_path.is_file() or not results_path.is_file():
        raise RopelabError(f"{run}: not a ropelab run directory (config.json and results.jsonl expected)")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise RopelabError(f"{config_path}: not valid JSON ({error}); the run's settings cannot be read") from None
    if not isinstance(config, dict):
        raise RopelabError(f"{config_path}: expected a JSON object with the run's settings")
    return config, read_results(results_path)


def summarise(config: dict, records: list[dict]) -> dict:
    """Every task's summary, by its report kind: for ``"table"`` tasks :func:`_summarise_table`,
    for the ``context`` task :func:`summarise_context`."""

    by_task = _by_task(records)
    tasks = {name: _kind(name).summarise(config, name, by_task[name]) for name in config["tasks"]}
    return {"config": config, "tasks": tasks}


def _summarise_table(config: dict, name: str, records: list[dict]) -> dict:
    """Per method x length: the mean of every metric with its 95 % t interval over samples
    (``<metric>_lo`` / ``_hi``; each sample is its own document or haystack), the sample count
    ``n`` and the headline metric per sample index (``values``, for paired comparisons); then the
    table's calls (:func:`_table_calls`)."""

    task = get_task(name)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[(record["method"], record["length"])].append(record)
    cells: dict = {}
    for (method, length), items in groups.items():
        cells.setdefault(method, {})[str(length)] = _table_cell(items, task.metric)
    summary = {"metric": task.metric, "higher_is_better": task.higher_is_better, "cells": cells}
    summary["calls"] = _table_calls(config, summary)
    return summary


def _table_cell(items: list[dict], metric: str) -> dict:
    metrics = defaultdict(list)
    for item in items:
        for key, value in item["metrics"].items():
            metrics[key].append(value)
    cell = {"n": len(items), "seconds": sum(i["seconds"] for i in items) / len(items)}
    for key, values in metrics.items():
        found = interval(values)
        cell[key] = found.mean
        cell[f"{key}_lo"], cell[f"{key}_hi"] = (found.lo, found.hi) if found.n > 1 else (None, None)
    cell["values"] = {str(i.get("index", n)): i["metrics"].get(metric) for n, i in enumerate(items)}
    return cell


def _table_calls(config: dict, summary: dict) -> dict:
    """One Holm family per table: every method against the window reference at every length
    beyond the train length, and every pair of rows of a column (for the bold); paired by sample
    (a t interval with n - 1 df). ``{"window": {length: {method: verdict}}, "best": {length: method}}``."""
    cells, higher = summary["cells"], summary["higher_is_better"]
    comparisons = {}
    lengths = sorted({n for c in cells.values() for n in c}, key=int)
    for n in lengths:
        rows = [m for m in cells if n in cells[m]]
        for a, b in itertools.permutations(rows, 2):
            if a != REFERENCE and (b == REFERENCE or a < b):
                x, y = cells[a][n].get("values", {}), cells[b][n].get("values", {})
                comparisons[(n, a, b)] = (paired(x, y), differences(x, y)[0])
    verdicts = family({k: v[0] for k, v in comparisons.items()}, lower_is_better=not higher,
                      unit_diffs={k: v[1] for k, v in comparisons.items()})  # fmt: skip

    def said(n: str, a: str, b: str) -> str:
        if (n, a, b) in verdicts:
            return verdicts[(n, a, b)].call
        flipped = verdicts.get((n, b, a))
        return {"better": "worse", "worse": "better"}.get(flipped.call, flipped.call) if flipped else "-"

    window = {
        n: {m: {"call": verdicts[(n, m, REFERENCE)].call, "p_holm": verdicts[(n, m, REFERENCE)].adjusted_p,
                "diff": verdicts[(n, m, REFERENCE)].diff.mean, "n": verdicts[(n, m, REFERENCE)].diff.n}
            for m in cells if (n, m, REFERENCE) in verdicts}
        for n in lengths
    }  # fmt: skip
    best = {}
    for n in lengths:
        rows = [m for m in cells if n in cells[m]]
        for m in rows:
            if len(rows) > 1 and all(said(n, m, o) == "better" for o in rows if o != m):
                best[n] = m
    return {"window": window, "best": best, "family": len(verdicts)}


def compare_cells(cell: dict, reference: dict, higher: bool) -> str:
    """The call of ``cell`` against ``reference`` alone (paired by sample, t with n - 1 df, a family
    of one): "better", "worse", "within noise", "identical" or "n too small"."""
    diff = paired(cell.get("values", {}), reference.get("values", {}))
    units = differences(cell.get("values", {}), reference.get("values", {}))[0]
    return call(diff, adjusted_p=None, lower_is_better=not higher, diffs=units)


def _methods_order(config: dict, cells: dict) -> list[str]:
    order = [m for m in config["methods"] if m in cells]
    if REFERENCE in cells:
        order.append(REFERENCE)
    return order + sorted(m for m in cells if m not in order)


RATES = ("exact_match", "follow_rate", "accuracy", "recall", "precision", "edit_similarity", "token_accuracy")


def value_text(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if metric in RATES:
        return f"{100 * value:.1f}"
    return f"{value:.3f}"


def cell_text(cell: dict | None, metric: str) -> str:
    """``mean [95 % t interval]`` over samples (percent for rates), with ``n``; for a 0/1 headline
    metric the pooled hits/n as well."""

    if not cell:
        return "-"
    values = [v for v in cell.get("values", {}).values() if v is not None]
    n = cell.get("n", len(values))
    body = value_text(cell[metric], metric)
    lo, hi = cell.get(f"{metric}_lo"), cell.get(f"{metric}_hi")
    if lo is not None and hi is not None and not math.isnan(lo):
        body += f" [{value_text(lo, metric)}, {value_text(hi, metric)}]"
    if metric in RATES and values and all(v in (0, 1) for v in values):
        body += f" ({int(sum(values))}/{len(values)})"
    return f"{body} (n={n})"


def render_markdown(summary: dict, plots: list[str]) -> str:
    config = summary["config"]
    leads = {kind.lead for kind in KINDS.values() if kind.lead}
    lines = _preamble(config)
    for lead in (p for p in plots if Path(p).stem in leads):
        lines += [f"![{Path(lead).stem}]({Path(lead).name})", ""]
    if config.get("ppl_document") == "haystack" and "ppl" in summary["tasks"]:
        lines += [
            "ppl is scored on the passkey haystacks (the same stdlib code plus the one needle line, whose tokens are "
            "not scored), so one forward pass per method serves both tasks; at the passkey length itself the ppl "
            "input ends where the question starts.",
            "",
        ]
    for name, task in summary["tasks"].items():
        lines += _kind(name).render(config, name, task)
    rest = [p for p in plots if Path(p).stem not in leads]
    if rest:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in rest] + [""]
    lines += ["Regenerate: `ropelab report <this directory>`; raw records in `results.jsonl`.", ""]
    return "\n".join(lines)


def _preamble(config: dict) -> list[str]:
    """The report's title and the paragraphs on the run and on how to read a cell (of a table task:
    the context task's sections explain their own)."""
    tables = any(_task_class(name).report_kind == "table" for name in config["tasks"])
    skipped = [f"{task} at {length}: {why}" for task, cells in config.get("skipped", {}).items()
               for length, why in cells.items()]  # fmt: skip
    not_run = ["Not run (the cell cannot be built at this length): " + "; ".join(skipped) + ".", ""] if skipped else []
    return [
        f"# ropelab evaluation: {config['model']}",
        "",
        *not_run,
        f"Train length {config['train_len']}; methods {', '.join(config['methods'])}"
        + (
            f" and the `{REFERENCE}` reference (attention limited to the train length)"
            if config.get("include_window")
            else ""
        )
        + f"; {config['samples']} sample(s) per cell, seed {config['seed']}."
        + _documents_line(config.get("documents")),
        "",
        "Every cell is a mean over samples [95 % t interval, n - 1 degrees of freedom] with n; each sample is its "
        "own document or haystack, the unit of every test. A method is called better or worse than another only "
        "when the paired difference per sample has a Holm-adjusted p < 0.05 within the task's table (every pair of "
        "rows in a column, and every method against the window reference); *identical* when every paired "
        "difference is zero; no call below 3 samples. A value in bold is better than every other row of its column "
        "by that rule.",
        "",
    ][: None if tables else 4 + len(not_run)]


def _documents_line(documents: list[dict] | None) -> str:
    """The user's documents (``--documents``), named; nothing for the built-in ones."""
    if not documents:
        return ""
    names = ", ".join(f"`{d['name']}` ({d['language']}, {d['files']} file(s))" for d in documents)
    return f" Your documents (--documents): {names}."


def _render_task(config: dict, name: str, task: dict) -> list[str]:
    """A ``"table"`` task's section: its table and the verdicts against the window reference."""
    lengths = sorted(config.get("task_lengths", {}).get(name, config["lengths"]))
    return _task_table(config, name, task, lengths) + _window_verdicts(config, task, lengths)


def _task_table(config: dict, name: str, task: dict, lengths: list[int]) -> list[str]:
    """Methods x lengths of the headline metric; a cell better than every other of its column in bold."""
    train_len = config["train_len"]
    metric, higher = task["metric"], task["higher_is_better"]
    cells = task["cells"]
    unit = " (%)" if metric in RATES else ""
    note = _task_class(name).report_note
    title = f" -- {note}" if note else ""
    lines = [f"## {name}: {metric}{unit}, {'higher' if higher else 'lower'} is better{title}", ""]
    lines.append("| method | " + " | ".join(length_label(n, train_len) for n in lengths) + " |")
    lines.append("|---|" + "---:|" * len(lengths))
    order = methods_order(config, cells)
    best = task.get("calls", {}).get("best", {})
    for method in order:
        row = []
        for n in lengths:
            text = cell_text(cells[method].get(str(n)), metric)
            row.append(f"**{text}**" if best.get(str(n)) == method else text)
        name_cell = f"`{method}`" if method != REFERENCE else f"*{REFERENCE}* (reference)"
        lines.append(f"| {name_cell} | " + " | ".join(row) + " |")
    lines.append("")
    return lines


def _window_verdicts(config: dict, task: dict, lengths: list[int]) -> list[str]:
    """Per length beyond the train length: which methods beat the window reference (paired)."""
    train_len = config["train_len"]
    metric, cells = task["metric"], task["cells"]
    beyond = [n for n in lengths if n > train_len]
    if REFERENCE not in cells or not beyond:
        return []
    calls = task.get("calls", {}).get("window", {})
    lines = [
        f"Beyond the train length, against the `{REFERENCE}` reference (paired by sample, Holm within the table):",
        "",
    ]
    for n in beyond:
        reference = cells[REFERENCE].get(str(n))
        if reference is None:
            continue
        verdicts = defaultdict(list)
        for m, said in calls.get(str(n), {}).items():
            verdicts[said["call"]].append(f"`{m}`")
        text = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(verdicts.items()))
        lines.append(f"- {length_label(n, train_len)}: window = {cell_text(reference, metric)}; {text}")
    lines.append("")
    return lines


def _length_axis(ax, lengths: list[int], train_len: int) -> None:
    """log2 length axis with tick labels in tokens and the train length marked."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(lengths))
    ax.set_xticks(ticks, [tokens_text(n) for n in ticks])
    ax.minorticks_off()
    ax.axvline(train_len, color="grey", linestyle=":", linewidth=1)
    ax.annotate(" train length", (train_len, 1), xycoords=("data", "axes fraction"), va="top", fontsize=8, color="grey")


def make_plots(run: Path, summary: dict, records: list[dict]) -> list[str]:
    """Every plot of the report, in its order: the plots of each report kind (kinds in the order
    of :data:`KINDS`, tasks in the summary's), then the heatmaps of tasks with a ``grid_key``."""
    import matplotlib

    matplotlib.use("Agg")

    config = summary["config"]
    by_task = _by_task(records)
    written = []
    for kind_name, kind in KINDS.items():
        for name, task in summary["tasks"].items():
            if _task_class(name).report_kind == kind_name:
                written += kind.plot(run, config, name, task, by_task[name])
    for name in summary["tasks"]:
        written += _grid_plot(run, config, name, by_task[name])
    return written


def _table_plot(run: Path, config: dict, name: str, task: dict, records: list[dict]) -> list[str]:
    """A ``"table"`` task's figure: the headline metric against the input length, a curve per method."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    metric, cells = task["metric"], task["cells"]
    if not cells:
        return []
    rate = metric in RATES
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lengths, curves = [], {method: _curve(cells[method], metric, rate) for method in methods_order(config, cells)}
    labels = series_labels({method: list(zip(xs, ys)) for method, (xs, ys, _) in curves.items()})
    for i, (method, (xs, ys, errors)) in enumerate(curves.items()):
        lengths += xs
        ax.errorbar(xs, ys, yerr=errors, label=labels[method], capsize=3, **method_style(method, i))
    _length_axis(ax, lengths, config["train_len"])
    if rate:
        ax.set_ylim(-3, 103)
        ax.yaxis.set_major_formatter(PercentFormatter())
    ax.set_xlabel("input length (tokens, log2 scale)")
    ax.set_ylabel(f"{metric} (%)" if rate else metric)
    ax.set_title(
        f"{name}: {metric} vs input length ({config['model']}); bars: 95 % t interval over samples", fontsize=9
    )
    ax.grid(alpha=0.3)
    outside_legend(ax)
    return [save_figure(fig, run / f"{name}_{metric}.png")]


def _curve(cells: dict, metric: str, rate: bool) -> tuple[list[int], list[float], list[list[float]]]:
    """One method's points (length, mean) and error bars (below, above): the 95 % t interval over
    samples; rates in percent."""
    xs, ys, errors = [], [], [[], []]
    scale = 100 if rate else 1
    for n, cell in sorted(cells.items(), key=lambda kv: int(kv[0])):
        mean = cell[metric]
        lo, hi = cell.get(f"{metric}_lo"), cell.get(f"{metric}_hi")
        err = (0.0, 0.0) if lo is None or hi is None or math.isnan(lo) else (mean - lo, hi - mean)
        xs.append(int(n))
        ys.append(scale * mean)
        errors[0].append(scale * err[0])
        errors[1].append(scale * err[1])
    return xs, ys, errors


def _grid_plot(run: Path, config: dict, name: str, records: list[dict]) -> list[str]:
    """The heatmap of a task with a ``grid_key``: its headline metric over that key x length,
    one panel per method -- a real grid only (several values on both axes)."""
    task = _task_class(name)
    key = task.grid_key
    if key is None:
        return []
    points = [r for r in records if key in r]
    keys = sorted({r[key] for r in points})
    lengths = sorted({r["length"] for r in points})
    if len(keys) < 2 or len(lengths) < 2:
        return []
    keys, bin_of = _grid_bins(keys)
    values: dict[tuple, list[float]] = defaultdict(list)
    for r in points:  # every sample of a cell (passkey has one per depth and length)
        values[(r["method"], bin_of(r[key]), r["length"])].append(r["metrics"][task.metric])
    return [
        _heatmaps(
            run / f"{name}_heatmap.png",
            methods_order(config, {r["method"] for r in points}),
            keys,
            lengths,
            values,
            f"{task.grid_title or name} ({config['model']}, train length {config['train_len']})",
        )
    ]


#: a grid key with more distinct values than this is shown in this many equal-width bins
GRID_BINS = 5


def _grid_bins(keys: list) -> tuple[list, Callable]:
    """The rows of a grid heatmap and the row of each key value: the values themselves, or (many
    numeric values, e.g. one needle depth per passkey sample) ``GRID_BINS`` equal-width bins, each
    labelled by its centre, so each cell pools the samples of a range of depths."""
    if len(keys) <= GRID_BINS or not all(isinstance(k, int | float) for k in keys):
        return keys, lambda value: value
    low, high = min(keys), max(keys)
    width = (high - low) / GRID_BINS
    centres = [round(low + (i + 0.5) * width, 4) for i in range(GRID_BINS)]
    return centres, lambda value: centres[min(GRID_BINS - 1, int((value - low) / width))]


def _heatmaps(path: Path, methods: list[str], depths: list, lengths: list[int], values: dict, title: str) -> str:
    """One depth x length panel per method: exact match in percent, each cell's value and n printed."""
    import matplotlib.pyplot as plt

    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows + 0.6), squeeze=False)
    fig.subplots_adjust(hspace=0.6, wspace=0.35)
    image = None
    for ax, method in zip(axes.flat, methods):
        grid = [[float("nan")] * len(lengths) for _ in depths]
        counts = [[0] * len(lengths) for _ in depths]
        for i, d in enumerate(depths):
            for j, n in enumerate(lengths):
                cell = values.get((method, d, n))
                if cell:
                    grid[i][j] = 100 * sum(cell) / len(cell)
                    counts[i][j] = len(cell)
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto", origin="lower")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    ax.text(j, i, f"{value:.0f}%\nn={counts[i][j]}", ha="center", va="center", fontsize=7)
        ax.set_title(method, fontsize=9)
        ax.set_xticks(range(len(lengths)), [tokens_text(n) for n in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths], fontsize=7)
        ax.set_xlabel("length (tokens)", fontsize=8)
        ax.set_ylabel("needle depth (bin centre)" if len(depths) == GRID_BINS else "needle depth", fontsize=8)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    from matplotlib.ticker import PercentFormatter

    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="exact match", format=PercentFormatter())
    fig.suptitle(title, fontsize=10, y=1.0)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def write_report(run: str | os.PathLike) -> Path:

    run = Path(run)
    config, records = _load(run)
    summary = summarise(config, records)
    plots = make_plots(run, summary, records)
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(run / "report.md", render_markdown(summary, plots))
    return run / "report.md"


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike) -> str:
    """Markdown: every table task x method x length present in both runs, side by side, with B - A
    and its Welch 95 % interval over the two runs' samples (the runs may be different models, so
    samples are not paired), Holm-adjusted over each task's table; a warning when the models were
    trained at different lengths (the same token length is then a different multiple of L)."""
    from scipy import stats as _st

    (config_a, records_a), (config_b, records_b) = _load(Path(run_a)), _load(Path(run_b))
    a, b = summarise(config_a, records_a), summarise(config_b, records_b)
    lines = [f"# {Path(run_a).name} (A) vs {Path(run_b).name} (B)", ""]
    if config_a.get("train_len") != config_b.get("train_len"):
        lines += [f"**Warning**: A's model was trained at {config_a.get('train_len')} tokens and B's at "
                  f"{config_b.get('train_len')}: a length in tokens is a different multiple of each one's train "
                  "length, so beyond-L cells do not line up.", ""]  # fmt: skip
    shared = 0
    for name in a["tasks"]:
        if name not in b["tasks"]:
            continue
        if "cells" not in a["tasks"][name] or "cells" not in b["tasks"][name]:
            lines += [f"## {name}", "", "Not a table task: compare the two runs' own reports.", ""]
            shared += 1
            continue
        metric, higher = a["tasks"][name]["metric"], a["tasks"][name]["higher_is_better"]
        values_a, values_b = _per_cell(records_a, name, metric), _per_cell(records_b, name, metric)
        rows = []
        for key in sorted(set(values_a) & set(values_b), key=lambda k: (k[0], k[1])):
            xa, xb = values_a[key], values_b[key]
            diff = sum(xb) / len(xb) - sum(xa) / len(xa)
            if len(xa) > 1 and len(xb) > 1:
                test = _st.ttest_ind(xb, xa, equal_var=False)
                ci = test.confidence_interval(0.95)
                rows.append((key, xa, xb, diff, (float(ci.low), float(ci.high)), float(test.pvalue)))
            else:
                rows.append((key, xa, xb, diff, None, None))
        if not rows:
            continue
        shared += 1
        adjusted = holm([row[5] for row in rows])
        lines += [f"## {name}: {metric}", "", "| method | length | A | B | B - A [95 %] | n (A / B) | Holm p | call |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for ((method, length), xa, xb, diff, ci, _), p in zip(rows, adjusted):
            interval_text = "" if ci is None or math.isnan(ci[0]) else f" [{ci[0]:+.4f}, {ci[1]:+.4f}]"
            said = "n too small" if p is None or math.isnan(p) else "within noise"
            if p is not None and p < 0.05 and diff != 0:
                said = "B better" if (diff > 0) == higher else "B worse"
            lines.append(
                f"| `{method}` | {length} | {value_text(sum(xa) / len(xa), metric)} | "
                f"{value_text(sum(xb) / len(xb), metric)} | {diff:+.4f}{interval_text} | {len(xa)} / {len(xb)} | "
                f"{'-' if p is None or math.isnan(p) else f'{p:.2g}'} | {said} |"
            )
        lines.append("")
    if not shared:
        lines += ["The two runs share no task, method and length: nothing to compare.", ""]
    return "\n".join(lines)


def _per_cell(records: list[dict], task: str, metric: str) -> dict[tuple[str, int], list[float]]:
    """(method, length) -> the per-sample values of ``metric`` (None/NaN left out)."""
    out: dict[tuple[str, int], list[float]] = {}
    for r in records:
        value = r.get("metrics", {}).get(metric) if r.get("task") == task else None
        if value is not None and not math.isnan(value):
            out.setdefault((r["method"], r["length"]), []).append(float(value))
    return out


#: report kind (``Task.report_kind``) -> its functions; the plots come kind by kind in this order
#: (the context figures first: the report opens with their lead)
KINDS: dict[str, ReportKind] = {
    "context": ReportKind(summarise_context, render_context, context_plots, lead="context_overview"),
    "table": ReportKind(_summarise_table, _render_task, _table_plot),
}
