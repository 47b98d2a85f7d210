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
from ropelab.eval.runner import WINDOW, read_results
from ropelab.eval.stats import BLOCK, block_means, estimate, is_binary, paired, rate_text, rate_verdict, verdict, wilson


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
    """Per method x length: the mean of every metric, its standard error (``<metric>_se``), the
    sample count ``n`` and the headline metric per sample index (``values``, for paired
    comparisons)."""

    task = get_task(name)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[(record["method"], record["length"])].append(record)
    cells: dict = {}
    for (method, length), items in groups.items():
        cells.setdefault(method, {})[str(length)] = _table_cell(items, task.metric)
    return {"metric": task.metric, "higher_is_better": task.higher_is_better, "cells": cells}


def _table_cell(items: list[dict], metric: str) -> dict:
    metrics = defaultdict(list)
    for item in items:
        for key, value in item["metrics"].items():
            metrics[key].append(value)
    cell = {"n": len(items), "seconds": sum(i["seconds"] for i in items) / len(items)}
    for key, values in metrics.items():
        est = estimate(values)
        cell[key] = est.mean
        cell[f"{key}_se"] = est.se
    cell["values"] = {str(i.get("index", n)): i["metrics"].get(metric) for n, i in enumerate(items)}
    return cell


def _paired_values(cell_a: dict, cell_b: dict) -> tuple[list[float], list[float]]:
    keys = sorted(set(cell_a.get("values", {})) & set(cell_b.get("values", {})), key=int)
    return [cell_a["values"][k] for k in keys], [cell_b["values"][k] for k in keys]


def compare_cells(cell: dict, reference: dict, higher: bool) -> str:
    """ "better" / "worse" / "within noise" / "n < 2" of ``cell`` against ``reference`` (paired by sample)."""

    a, b = _paired_values(cell, reference)
    if len(a) < 2:
        return "n < 2"
    if is_binary(a) and is_binary(b):
        return rate_verdict([int(x) for x in a], [int(x) for x in b])
    return verdict(paired(a, b), lower_is_better=not higher)


def _methods_order(config: dict, cells: dict) -> list[str]:
    order = [m for m in config["methods"] if m in cells]
    if WINDOW in cells:
        order.append(WINDOW)
    return order + sorted(m for m in cells if m not in order)


def length_label(length: int, train_len: int) -> str:
    ratio = length / train_len
    return f"{length // 1024}K ({ratio:g}x)" if length % 1024 == 0 else f"{length} ({ratio:.2g}x)"


RATES = ("exact_match", "follow_rate", "accuracy", "recall", "precision", "edit_similarity", "token_accuracy")


def value_text(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if metric in RATES:
        return f"{100 * value:.1f}"
    return f"{value:.3f}"


def cell_text(cell: dict | None, metric: str) -> str:
    """``mean ± se`` (percent for rates; a Wilson interval for 0/1 outcomes), with ``n``."""

    if not cell:
        return "-"
    values = [v for v in cell.get("values", {}).values() if v is not None]
    n = cell.get("n", len(values))
    if metric in RATES and values and is_binary(values):
        return f"{rate_text(int(sum(values)), len(values))} (n={len(values)})"
    se = cell.get(f"{metric}_se")
    body = value_text(cell[metric], metric)
    if se is not None:
        body += f" ± {value_text(se, metric)}"
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
    """The report's title and the paragraphs on the run and on how to read a cell."""
    return [
        f"# ropelab evaluation: {config['model']}",
        "",
        f"Train length {config['train_len']}; methods {', '.join(config['methods'])}"
        + (
            f" and the `{WINDOW}` reference (attention limited to the train length)"
            if config.get("include_window")
            else ""
        )
        + f"; {config['samples']} sample(s) per cell, seed {config['seed']}.",
        "",
        "Every cell is a mean ± its standard error with n, or for 0/1 outcomes a rate with its Wilson 95 % interval. "
        "A method is called better or worse than another only when the paired difference exceeds two standard "
        "errors (for 0/1 outcomes: exact McNemar test, p < 0.05); otherwise it is within noise. A value in bold "
        "is better than every other row of its column by that rule.",
        "",
    ]


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
    order = _methods_order(config, cells)
    for method in order:
        row = []
        for n in lengths:
            cell = cells[method].get(str(n))
            text = cell_text(cell, metric)
            others = [cells[m][str(n)] for m in order if m != method and str(n) in cells[m]]
            if cell and others and all(compare_cells(cell, other, higher) == "better" for other in others):
                text = f"**{text}**"
            row.append(text)
        name_cell = f"`{method}`" if method != WINDOW else f"*{WINDOW}* (reference)"
        lines.append(f"| {name_cell} | " + " | ".join(row) + " |")
    lines.append("")
    return lines


def _window_verdicts(config: dict, task: dict, lengths: list[int]) -> list[str]:
    """Per length beyond the train length: which methods beat the window reference (paired)."""
    train_len = config["train_len"]
    metric, higher, cells = task["metric"], task["higher_is_better"], task["cells"]
    beyond = [n for n in lengths if n > train_len]
    if WINDOW not in cells or not beyond:
        return []
    lines = [f"Beyond the train length, against the `{WINDOW}` reference (paired by sample):", ""]
    for n in beyond:
        reference = cells[WINDOW].get(str(n))
        if reference is None:
            continue
        verdicts = defaultdict(list)
        for m in cells:
            if m != WINDOW and str(n) in cells[m]:
                verdicts[compare_cells(cells[m][str(n)], reference, higher)].append(f"`{m}`")
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


def method_style(method: str, index: int) -> dict:
    markers = "osD^vP*Xh<>"
    if method == WINDOW:
        return dict(color="black", linestyle="--", linewidth=1.8, marker="x", markersize=6)
    return dict(marker=markers[index % len(markers)], markersize=5, linewidth=1.4, alpha=0.9)


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


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
    lengths = []
    for i, method in enumerate(_methods_order(config, cells)):
        xs, ys, errors = _curve(cells[method], metric, rate)
        lengths += xs
        ax.errorbar(xs, ys, yerr=errors, label=method, capsize=3, **method_style(method, i))
    _length_axis(ax, lengths, config["train_len"])
    if rate:
        ax.set_ylim(-3, 103)
        ax.yaxis.set_major_formatter(PercentFormatter())
    ax.set_xlabel("input length (tokens, log2 scale)")
    ax.set_ylabel(f"{metric} (%)" if rate else metric)
    ax.set_title(f"{name}: {metric} vs input length ({config['model']}); bars: ±1 SE or 95 % interval", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return [_save(fig, run / f"{name}_{metric}.png")]


def _curve(cells: dict, metric: str, rate: bool) -> tuple[list[int], list[float], list[list[float]]]:
    """One method's points (length, mean) and error bars (below, above): a Wilson interval for
    0/1 outcomes, else ±1 SE; rates in percent."""
    xs, ys, errors = [], [], [[], []]
    scale = 100 if rate else 1
    for n, cell in sorted(cells.items(), key=lambda kv: int(kv[0])):
        values = [v for v in cell.get("values", {}).values() if v is not None]
        mean = cell[metric]
        if rate and values and is_binary(values):
            lo, hi = wilson(int(sum(values)), len(values))
            err = (mean - lo, hi - mean)
        else:
            se = cell.get(f"{metric}_se") or 0.0
            err = (se, se)
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
            _methods_order(config, {r["method"]: 1 for r in points}),
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
    """Markdown: every task x method x length present in both runs, side by side."""
    (config_a, records_a), (config_b, records_b) = _load(Path(run_a)), _load(Path(run_b))
    a, b = summarise(config_a, records_a), summarise(config_b, records_b)
    lines = [f"# {Path(run_a).name} vs {Path(run_b).name}", ""]
    for name in a["tasks"]:
        if name not in b["tasks"]:
            continue
        if "cells" not in a["tasks"][name] or "cells" not in b["tasks"][name]:
            lines += [f"## {name}", "", "Not a table task: compare the two runs' own reports.", ""]
            continue
        metric = a["tasks"][name]["metric"]
        lines += [f"## {name}: {metric}", "", "| method | length | A | B | B - A |", "|---|---:|---:|---:|---:|"]
        cells_a, cells_b = a["tasks"][name]["cells"], b["tasks"][name]["cells"]
        for method in cells_a:
            for length, cell in sorted(cells_a[method].items(), key=lambda kv: int(kv[0])):
                other = cells_b.get(method, {}).get(length)
                if other is None:
                    continue
                lines.append(
                    f"| `{method}` | {length} | {value_text(cell[metric], metric)} | {value_text(other[metric], metric)} | "
                    f"{other[metric] - cell[metric]:+.4f} |"
                )
        lines.append("")
    return "\n".join(lines)


# -- the context task: loss by position, fixed targets, needle grid ------------------------------


def _bucket_size(train_len: int) -> int:
    return max(1, train_len // 4)


def summarise_context(config: dict, name: str, records: list[dict]) -> dict:
    """Everything the context report shows, computed from the records (per length): bucket losses
    and their paired differences to the ``window`` reference (units: 128-token blocks of every
    document), inside / beyond the train length, the fixed-target losses per context, and the
    needle grid (rates with Wilson intervals, McNemar against the window)."""

    task = get_task(name)
    size = _bucket_size(config["train_len"])
    out: dict = {"metric": task.metric, "higher_is_better": task.higher_is_better, "block": BLOCK, "bucket": size}
    out["lengths"] = {}
    by_length: dict[int, list[dict]] = defaultdict(list)
    for record in records:
        by_length[record["length"]].append(record)
    for length, items in sorted(by_length.items()):
        out["lengths"][str(length)] = _context_length(config, items, size)
    return out


def _context_length(config: dict, items: list[dict], size: int) -> dict:
    """The context summary of one length: ``items`` are its records (every method and document)."""
    train_len = config["train_len"]
    methods = _methods_order(config, {r["method"]: 1 for r in items})
    horizon = min(len(r["token_losses"]) for r in items)
    edges = [*range(0, horizon, size), horizon]
    blocks = _position_blocks(items, horizon)
    documents = sorted({(r["index"], r.get("document", "?"), r.get("language", "?")) for r in items})
    return {
        "documents": [{"index": i, "document": d, "language": lang} for i, d, lang in documents],
        "horizon": horizon,
        "buckets": [
            {"start": lo, "stop": hi, "cells": region(methods, blocks, lo, hi)} for lo, hi in itertools.pairwise(edges)
        ],
        "inside": region(methods, blocks, 0, min(train_len, horizon)),
        "beyond": region(methods, blocks, train_len, horizon) if horizon > train_len else {},
        "seconds": {m: sum(r["seconds"] for r in items if r["method"] == m) for m in methods},
        "fixed": _fixed_summary(methods, items),
        "needles": _needle_summary(methods, items, train_len),
        "docs": len({r["index"] for r in items}),
    }


def _position_blocks(items: list[dict], horizon: int) -> dict[str, dict[tuple, float | None]]:
    """method -> (document, first token) -> the mean loss of that 128-token block."""
    blocks: dict[str, dict[tuple, float | None]] = defaultdict(dict)
    for r in items:
        for j, value in enumerate(block_means(r["token_losses"], 0, horizon)):
            blocks[r["method"]][(r["index"], j * BLOCK)] = value
    return blocks


def _fixed_summary(methods: list[str], items: list[dict]) -> dict:
    """The fixed-target view: the target span, the shortest whole-document context, and per method
    the loss of the targets per context (:func:`_fixed_cells`)."""
    full_context = [r["fixed"]["contexts"][-1] for r in items if "fixed" in r]
    return {
        "targets": items[0].get("fixed", {}).get("targets"),
        "full_context": min(full_context) if full_context else None,
        "cells": {m: _fixed_cells([r for r in items if r["method"] == m and "fixed" in r]) for m in methods},
    }


def _fixed_cells(rows: list[dict]) -> dict:
    """One method's fixed-target losses per context (``"full"``: the whole document), each with
    the paired difference whole document minus that context."""
    per_context: dict = defaultdict(list)
    for r in rows:
        full = r["fixed"]["contexts"][-1]
        for c, losses in zip(r["fixed"]["contexts"], r["fixed"]["losses"]):
            key = "full" if c == full else c
            per_context[key] += [(r["index"], j, v) for j, v in enumerate(block_means(losses, 0, len(losses)))]
    cells = {}
    for c, values in per_context.items():
        est = estimate([v for _, _, v in values])
        cells[str(c)] = {"mean": est.mean, "se": est.se, "n": est.n}
    if "full" in per_context:
        full_values = {(i, j): v for i, j, v in per_context["full"]}
        for c, values in per_context.items():
            if c == "full":
                continue
            diff = paired([full_values.get((i, j)) for i, j, _ in values], [v for _, _, v in values])
            cells[str(c)].update(full_minus=diff.mean, full_minus_se=diff.se, verdict=verdict(diff))
    return cells


def _needle_summary(methods: list[str], items: list[dict], train_len: int) -> dict:
    """Per method the needle grid's rates (:func:`_needle_cell`)."""
    answers: dict[str, dict] = {m: {} for m in methods}  # method -> (document, cut, needle) -> answer
    for r in items:
        for q in r.get("needles", []):
            answers[r["method"]][(r["index"], q["cut"], q["name"])] = q
    return {m: _needle_cell(answers, m, train_len) for m in methods}


def _needle_cell(answers: dict, method: str, train_len: int) -> dict:
    """One method's exact-match rates: over all answers, per cut (with McNemar against the window),
    per grid depth @ cut, and of the needles at least the train length before the question."""
    per_cut: dict[int, list[int]] = defaultdict(list)
    grid: dict[str, list[int]] = defaultdict(list)
    far: list[int] = []
    for (_, cut, _), q in answers[method].items():
        per_cut[cut].append(q["exact"])
        if q.get("grid_depth") is not None:
            grid[f"{q['grid_depth']}@{cut}"].append(q["exact"])
        if q["distance"] >= train_len:
            far.append(q["exact"])
    cell = {
        "all": _rate([q["exact"] for q in answers[method].values()], wilson),
        "cuts": {str(c): _rate(v, wilson) for c, v in sorted(per_cut.items())},
        "grid": {k: _rate(v, wilson) for k, v in grid.items()},
        "far": _rate(far, wilson),
    }
    if WINDOW in answers and method != WINDOW:
        for c in per_cut:
            keys = [k for k in answers[method] if k[1] == c and k in answers[WINDOW]]
            cell["cuts"][str(c)]["verdict"] = rate_verdict(
                [answers[method][k]["exact"] for k in keys], [answers[WINDOW][k]["exact"] for k in keys]
            )
    return cell


def region(methods: list[str], blocks: dict, lo: int, hi: int) -> dict:
    """Per method: mean ± SE of the block losses whose first token is in ``[lo, hi)``, and the
    paired difference to the window reference over the same blocks. ``blocks[method]`` maps
    ``(document..., first token)`` keys (the last element is the block's first token) to a mean."""

    result = {}
    for m in methods:
        keys = sorted(k for k in blocks[m] if lo <= k[-1] < hi)
        est = estimate([blocks[m][k] for k in keys])
        cell = {"mean": est.mean, "se": est.se, "n": est.n}
        if WINDOW in blocks and m != WINDOW:
            diff = paired([blocks[m][k] for k in keys], [blocks[WINDOW].get(k) for k in keys])
            cell.update(diff=diff.mean, diff_se=diff.se, diff_n=diff.n, verdict=verdict(diff))
        result[m] = cell
    return result


def _rate(values: list[int], wilson) -> dict:
    k, n = int(sum(values)), len(values)
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "lo": lo, "hi": hi}


def estimate_text(cell: dict | None, digits: int = 3) -> str:
    if not cell or not cell.get("n") or math.isnan(cell["mean"]):
        return "-"
    text = f"{cell['mean']:.{digits}f}"
    return text if cell.get("se") is None else f"{text} ± {cell['se']:.{digits}f}"


def diff_text(cell: dict | None) -> str:
    if not cell or cell.get("diff") is None or math.isnan(cell["diff"]):
        return "-"
    se = "" if cell.get("diff_se") is None else f" ± {cell['diff_se']:.3f}"
    mark = {"better": " (better)", "worse": " (worse)"}.get(cell.get("verdict"), "")
    return f"{cell['diff']:+.3f}{se}{mark}"


def _rate_cell(cell: dict | None) -> str:
    if not cell or not cell.get("n"):
        return "-"
    return f"{100 * cell['rate']:.0f} % [{100 * cell['lo']:.0f}, {100 * cell['hi']:.0f}] ({cell['k']}/{cell['n']})"


def tokens_text(n: int) -> str:
    """Token counts as people write them: 8K, 1.5K, 640."""
    n = int(n)
    if n >= 1024 and n % 256 == 0:
        return f"{n / 1024:g}K"
    return str(n)


def render_context(config: dict, name: str, task: dict) -> list[str]:
    """The context task's sections, one per length: the overview table, loss by position, fixed
    targets and the needle grid."""
    lines = []
    for length, s in task["lengths"].items():
        methods = [m for m in _methods_order(config, s["inside"]) if m in s["inside"]]
        lines += _context_overview_table(config, int(length), s, methods)
        lines += _context_verdicts(s, methods)
        lines += _bucket_tables(task["bucket"], s["buckets"], methods)
        lines += _fixed_table(s["fixed"], methods)
        lines += _needle_table(config["train_len"], s["needles"], methods)
    return lines


def _context_overview_table(config: dict, length: int, s: dict, methods: list[str]) -> list[str]:
    """The section's heading, its documents and the table of losses inside / beyond the train
    length, their differences to the window, the needle rates and the time per method."""
    train_len = config["train_len"]
    docs = ", ".join(f"{d['document']} ({d['language']})" for d in s["documents"])
    lines = [
        f"## Long-context use at {tokens_text(length)} tokens ({length / train_len:g}x the train length)",
        "",
        f"Documents: {docs}. Losses are means over 128-token blocks of every document (n = blocks; "
        f"± one standard error); differences are paired by block against the `{WINDOW}` reference: the model's "
        "own method with attention limited to the previous train-length tokens plus 4 sink tokens, in one pass "
        f"(identical to the own method inside the first {tokens_text(train_len)} tokens).",
        "",
        "| method | loss inside L | Δ vs window inside L | loss beyond L | Δ vs window beyond L | "
        "needles, all cuts | needles > L away | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in methods:
        needle = s["needles"].get(m, {})
        name = f"`{m}`" if m != WINDOW else f"*{WINDOW}* (reference)"
        lines.append(
            f"| {name} | {estimate_text(s['inside'].get(m))} | {diff_text(s['inside'].get(m))} | {estimate_text(s['beyond'].get(m))} | "
            f"{diff_text(s['beyond'].get(m))} | {_rate_cell(needle.get('all'))} | {_rate_cell(needle.get('far'))} | "
            f"{s['seconds'].get(m, 0):.0f} |"
        )
    return lines


def _context_verdicts(s: dict, methods: list[str]) -> list[str]:
    """Which methods use the context beyond the train length, and which pay for it inside."""
    users = [m for m in methods if s["beyond"].get(m, {}).get("verdict") == "better"]
    costly = [m for m in methods if s["inside"].get(m, {}).get("verdict") == "worse"]
    return [
        "",
        "- Uses context beyond the train length (loss beyond L below the window's by more than 2 SE): "
        + (", ".join(f"`{m}`" for m in users) if users else "none"),
        "- Costs inside the train length (loss inside L above the window's by more than 2 SE): "
        + (", ".join(f"`{m}`" for m in costly) if costly else "none"),
    ]


def _bucket_tables(bucket: int, buckets: list[dict], methods: list[str]) -> list[str]:
    """Loss by position bucket, and its difference to the window reference."""
    header = [
        "| method | " + " | ".join(f"{tokens_text(b['start'])}-{tokens_text(b['stop'])}" for b in buckets) + " |",
        "|---|" + "---:|" * len(buckets),
    ]
    lines = ["", f"### Loss by position ({tokens_text(bucket)}-token buckets)", "", *header]
    for m in methods:
        lines.append(f"| `{m}` | " + " | ".join(estimate_text(b["cells"].get(m)) for b in buckets) + " |")
    lines += ["", "Difference to the window reference (negative: lower loss):", "", *header]
    for m in methods:
        if m != WINDOW:
            lines.append(f"| `{m}` | " + " | ".join(diff_text(b["cells"].get(m)) for b in buckets) + " |")
    return lines


def _fixed_table(fixed: dict, methods: list[str]) -> list[str]:
    """The fixed targets' loss per context, with whole document minus that context in brackets."""
    if not fixed["cells"]:
        return []
    contexts = sorted({c for cells in fixed["cells"].values() for c in cells if c != "full"}, key=int)
    first, end = fixed["targets"]
    lines = [
        "",
        f"### Fixed targets, growing context: the last {end - first} tokens of each document",
        "",
        "Each column scores the same target tokens with only the previous c tokens as context (a separate "
        f"pass), the last with the whole document ({tokens_text(fixed['full_context'])} tokens before the targets). "
        "In brackets: whole document minus that column, paired by block (negative: the longer context "
        f"helped). The `{WINDOW}` row exists only for the whole document: with at most the train length of "
        "context it is the own method.",
        "",
        "| method | " + " | ".join(f"c = {tokens_text(int(c))}" for c in contexts) + " | whole document |",
        "|---|" + "---:|" * (len(contexts) + 1),
    ]
    for m in methods:
        cells = fixed["cells"].get(m, {})
        row = [_fixed_cell_text(cells.get(c)) for c in contexts]
        lines.append(f"| `{m}` | " + " | ".join(row) + f" | {estimate_text(cells.get('full'))} |")
    return lines


def _fixed_cell_text(cell: dict | None) -> str:
    text = estimate_text(cell)
    if cell and cell.get("full_minus") is not None:
        se = "" if cell.get("full_minus_se") is None else f" ± {cell['full_minus_se']:.3f}"
        text += f" [{cell['full_minus']:+.3f}{se}]"
    return text


def _needle_cuts(needles: dict) -> list[int]:
    return sorted({int(c) for cell in needles.values() for c in cell["cuts"]})


def _needle_table(train_len: int, needles: dict, methods: list[str]) -> list[str]:
    """Needle exact match per method x cut, with the verdict against the window where it is one."""
    cuts = _needle_cuts(needles)
    lines = [
        "",
        "### Needle grid: exact match at each cut length (every needle before the cut; Wilson 95 % interval)",
        "",
        "| method | " + " | ".join(f"{tokens_text(c)} ({c / train_len:g}x)" for c in cuts) + " |",
        "|---|" + "---:|" * len(cuts),
    ]
    for m in methods:
        row = []
        for c in cuts:
            cell = needles.get(m, {}).get("cuts", {}).get(str(c))
            text = _rate_cell(cell)
            if cell and cell.get("verdict") in ("better", "worse"):
                text += f" ({cell['verdict']} than window)"
            row.append(text)
        lines.append(f"| `{m}` | " + " | ".join(row) + " |")
    lines.append("")
    return lines


def _context_plots(run: Path, config: dict, name: str, task: dict, records: list[dict]) -> list[str]:
    """Per length: the overview figure, the loss figure and the needle heatmap (file names get a
    ``_<length>`` suffix when the run has several lengths)."""
    written = []
    for length, s in task["lengths"].items():
        methods = [m for m in _methods_order(config, s["inside"]) if m in s["inside"]]
        suffix = "" if len(task["lengths"]) == 1 else f"_{length}"
        written.append(_overview_figure(run / f"context_overview{suffix}.png", config, s, methods))
        written.append(_loss_figure(run / f"context_loss{suffix}.png", config["train_len"], s, methods))
        at_length = [r for r in records if str(r["length"]) == length]
        written += _needle_heatmap(run / f"context_needles{suffix}.png", config, s, methods, at_length)
    return written


def _overview_figure(path: Path, config: dict, s: dict, methods: list[str]) -> str:
    """The lead figure: cost inside and gain beyond the train length, and retrieval."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.4, 1]})
    _difference_panel(left, s["buckets"], methods, config["train_len"])
    _needle_panel(right, s["needles"], methods, config["train_len"])
    fig.suptitle(
        f"{config['model']}: which method uses context beyond the train length, and what it costs "
        f"inside ({s['docs']} documents)",
        fontsize=10,
    )
    return _save(fig, path)


def _difference_panel(ax, buckets: list[dict], methods: list[str], train_len: int) -> None:
    """Loss minus the window reference per position bucket (±2 SE, paired)."""
    for i, m in enumerate(methods):
        if m == WINDOW:
            continue
        xs = [(b["start"] + b["stop"]) / 2 for b in buckets]
        ys = [b["cells"][m].get("diff", float("nan")) for b in buckets]
        es = [b["cells"][m].get("diff_se") or 0.0 for b in buckets]
        ax.errorbar(xs, ys, yerr=[2 * e for e in es], label=m, capsize=3, **method_style(m, i))
    ax.axhline(0, color="black", linestyle="--", linewidth=1.2, label=f"{WINDOW} reference")
    ax.axvline(train_len, color="grey", linestyle=":", linewidth=1)
    ax.annotate(" train length", (train_len, 1), xycoords=("data", "axes fraction"), va="top", fontsize=8, color="grey")
    ax.set_xlabel("position in the document (tokens)")
    ax.set_ylabel("loss − window reference (nats/token)")
    ax.set_title(
        "below 0 beyond the train length: uses the longer context;\nabove 0 inside it: costs quality "
        "(bars: ±2 SE, paired)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _needle_panel(ax, needles: dict, methods: list[str], train_len: int) -> None:
    """Needle exact match against the cut length (95 % Wilson intervals)."""
    from matplotlib.ticker import PercentFormatter

    cuts = _needle_cuts(needles)
    for i, m in enumerate(methods):
        cells = needles.get(m, {}).get("cuts", {})
        xs = [c for c in cuts if str(c) in cells]
        ys = [100 * cells[str(c)]["rate"] for c in xs]
        lo = [100 * (cells[str(c)]["rate"] - cells[str(c)]["lo"]) for c in xs]
        hi = [100 * (cells[str(c)]["hi"] - cells[str(c)]["rate"]) for c in xs]
        ax.errorbar(xs, ys, yerr=[lo, hi], label=m, capsize=3, **method_style(m, i))
    _length_axis(ax, cuts, train_len)
    ax.set_ylim(-3, 103)
    ax.yaxis.set_major_formatter(PercentFormatter())
    ax.set_xlabel("prompt length (tokens, log2 scale)")
    ax.set_ylabel("needle exact match")
    ax.set_title("needle retrieval (every needle before the cut; 95 % Wilson intervals)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _loss_figure(path: Path, train_len: int, s: dict, methods: list[str]) -> str:
    """Absolute loss by position, and the fixed-target curve."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    _position_panel(left, s["buckets"], methods, train_len)
    _fixed_panel(right, s["fixed"], methods, train_len)
    return _save(fig, path)


def _position_panel(ax, buckets: list[dict], methods: list[str], train_len: int) -> None:
    """Next-token loss per position bucket (±1 SE)."""
    for i, m in enumerate(methods):
        ax.errorbar(
            [(b["start"] + b["stop"]) / 2 for b in buckets],
            [b["cells"][m]["mean"] for b in buckets],
            yerr=[b["cells"][m]["se"] or 0.0 for b in buckets],
            label=m,
            capsize=3,
            **method_style(m, i),
        )
    ax.axvline(train_len, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("position in the document (tokens)")
    ax.set_ylabel("next-token loss (±1 SE)")
    ax.set_title("loss by position", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _fixed_panel(ax, fixed: dict, methods: list[str], train_len: int) -> None:
    """The fixed targets' loss against the context before them (the whole document at its length)."""

    def context(c: str) -> int:
        return int(c) if c != "full" else fixed["full_context"]

    for i, m in enumerate(methods):
        points = sorted((context(c), cell) for c, cell in fixed["cells"].get(m, {}).items())
        ax.errorbar(
            [p[0] for p in points],
            [p[1]["mean"] for p in points],
            yerr=[p[1]["se"] or 0.0 for p in points],
            label=m,
            capsize=3,
            **method_style(m, i),
        )
    _length_axis(ax, sorted({context(c) for cells in fixed["cells"].values() for c in cells}), train_len)
    ax.set_xlabel("context before the targets (tokens, log2 scale)")
    ax.set_ylabel("loss of the fixed targets (±1 SE)")
    ax.set_title("same targets, growing context", fontsize=9)
    ax.grid(alpha=0.3)


def _needle_heatmap(path: Path, config: dict, s: dict, methods: list[str], records: list[dict]) -> list[str]:
    """Needle exact match per grid depth x cut, one panel per method (each needle asked at its own
    cut); ``records`` are the length's. Nothing unless both axes have several values."""
    values: dict = defaultdict(list)
    for r in records:
        for q in r.get("needles", []):
            if q.get("grid_depth") is not None:
                values[(r["method"], q["grid_depth"], q["cut"])].append(q["exact"])
    depths = sorted({k[1] for k in values})
    cuts = _needle_cuts(s["needles"])
    if len(depths) < 2 or len(cuts) < 2:
        return []
    title = f"needle grid ({config['model']}, train length {config['train_len']}): each needle asked at its own cut"
    return [_heatmaps(path, methods, depths, cuts, values, title)]


#: report kind (``Task.report_kind``) -> its functions; the plots come kind by kind in this order
#: (the context figures first: the report opens with their lead)
KINDS: dict[str, ReportKind] = {
    "context": ReportKind(summarise_context, render_context, _context_plots, lead="context_overview"),
    "table": ReportKind(_summarise_table, _render_task, _table_plot),
}
