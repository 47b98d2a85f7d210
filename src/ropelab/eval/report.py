"""Turn a run directory's ``results.jsonl`` into ``summary.json``, ``report.md`` and PNG plots.

Tables: one per task, methods as rows, lengths as columns, the task's headline metric averaged
over samples, the best value of each column in bold. The ``window`` row (context truncated to the
train length) is the reference: for every length beyond the train length the report states which
methods beat it. ``ropelab report RUN_A RUN_B`` puts two runs side by side.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

from ropelab.errors import RopelabError
from ropelab.eval.runner import WINDOW, read_results


def _load(run: Path) -> tuple[dict, list[dict]]:
    config_path, results_path = run / "config.json", run / "results.jsonl"
    if not config_path.is_file() or not results_path.is_file():
        raise RopelabError(f"{run}: not a ropelab run directory (config.json and results.jsonl expected)")
    return json.loads(config_path.read_text()), read_results(results_path)


def summarise(config: dict, records: list[dict]) -> dict:
    """Mean of every metric per task x method x length (and the sample count)."""
    from ropelab.eval import get_task

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[(record["task"], record["method"], record["length"])].append(record)
    tasks = {}
    for name in config["tasks"]:
        task = get_task(name)
        cells = {}
        for (task_name, method, length), items in groups.items():
            if task_name != name:
                continue
            metrics = defaultdict(list)
            for item in items:
                for key, value in item["metrics"].items():
                    metrics[key].append(value)
            cells.setdefault(method, {})[str(length)] = {
                "n": len(items),
                **{key: sum(values) / len(values) for key, values in metrics.items()},
                "seconds": sum(i["seconds"] for i in items) / len(items),
            }
        tasks[name] = {"metric": task.metric, "higher_is_better": task.higher_is_better, "cells": cells}
    return {"config": config, "tasks": tasks}


def _methods_order(config: dict, cells: dict) -> list[str]:
    order = [m for m in config["methods"] if m in cells]
    if WINDOW in cells:
        order.append(WINDOW)
    return order + sorted(m for m in cells if m not in order)


def _label(length: int, train_len: int) -> str:
    ratio = length / train_len
    return f"{length // 1024}K ({ratio:g}x)" if length % 1024 == 0 else f"{length} ({ratio:.2g}x)"


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if metric in ("exact_match", "follow_rate", "accuracy", "recall", "precision", "edit_similarity", "token_accuracy"):
        return f"{100 * value:.1f}"
    return f"{value:.3f}"


def render_markdown(summary: dict, plots: list[str]) -> str:
    config = summary["config"]
    train_len = config["train_len"]
    lines = [
        f"# ropelab evaluation: {config['model']}",
        "",
        f"Train length {train_len}; methods {', '.join(config['methods'])}"
        + (
            f" and the `{WINDOW}` reference (context truncated to the train length)"
            if config.get("include_window")
            else ""
        )
        + f"; {config['samples']} sample(s) per cell, seed {config['seed']}.",
        "",
    ]
    if config.get("ppl_document") == "haystack":
        lines += [
            "ppl is scored on the passkey haystacks (the same stdlib code plus the one needle line, whose tokens are "
            "not scored), so one forward pass per method serves both tasks; at the passkey length itself the ppl "
            "input ends where the question starts.",
            "",
        ]
    for name, task in summary["tasks"].items():
        metric, higher = task["metric"], task["higher_is_better"]
        cells = task["cells"]
        lengths = sorted(config.get("task_lengths", {}).get(name, config["lengths"]))
        unit = " (%)" if _fmt(0.5, metric).endswith(".0") else ""
        lines += [f"## {name}: {metric}{unit}, {'higher' if higher else 'lower'} is better", ""]
        lines.append("| method | " + " | ".join(_label(n, train_len) for n in lengths) + " |")
        lines.append("|---|" + "---:|" * len(lengths))
        best = {}
        for n in lengths:
            values = [
                cells[m][str(n)][metric]
                for m in cells
                if str(n) in cells[m] and not math.isnan(cells[m][str(n)][metric])
            ]
            if values:
                best[n] = max(values) if higher else min(values)
        for method in _methods_order(config, cells):
            row = []
            for n in lengths:
                cell = cells[method].get(str(n))
                text = _fmt(cell[metric] if cell else None, metric)
                if cell and n in best and cell[metric] == best[n]:
                    text = f"**{text}**"
                row.append(text)
            name_cell = f"`{method}`" if method != WINDOW else f"*{WINDOW}* (reference)"
            lines.append(f"| {name_cell} | " + " | ".join(row) + " |")
        lines.append("")
        beyond = [n for n in lengths if n > train_len]
        if WINDOW in cells and beyond:
            lines.append(
                f"Beyond the train length, does a method beat the `{WINDOW}` reference (i.e. use the longer context)?"
            )
            lines.append("")
            for n in beyond:
                reference = cells[WINDOW].get(str(n), {}).get(metric)
                if reference is None:
                    continue
                winners = [
                    m
                    for m in cells
                    if m != WINDOW
                    and str(n) in cells[m]
                    and (cells[m][str(n)][metric] > reference if higher else cells[m][str(n)][metric] < reference)
                ]
                verdict = ", ".join(f"`{m}`" for m in winners) if winners else "none"
                lines.append(f"- {_label(n, train_len)}: window = {_fmt(reference, metric)}; better: {verdict}")
            lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    lines += ["Regenerate: `ropelab report <this directory>`; raw records in `results.jsonl`.", ""]
    return "\n".join(lines)


def make_plots(run: Path, summary: dict, records: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = summary["config"]
    train_len = config["train_len"]
    written = []
    for name, task in summary["tasks"].items():
        metric, cells = task["metric"], task["cells"]
        if not cells:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for method in _methods_order(config, cells):
            points = sorted((int(n), v[metric]) for n, v in cells[method].items())
            style = dict(color="black", linestyle="--", linewidth=2) if method == WINDOW else dict(marker="o")
            ax.plot([p[0] for p in points], [p[1] for p in points], label=method, **style)
        ax.axvline(train_len, color="grey", linestyle=":", linewidth=1)
        ax.text(train_len, ax.get_ylim()[1], " train length", va="top", fontsize=8, color="grey")
        ax.set_xlabel("input length (tokens)")
        ax.set_ylabel(metric)
        ax.set_title(f"{name}: {metric} vs input length ({config['model']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        path = run / f"{name}_{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    passkey = [r for r in records if r["task"] == "passkey" and "depth" in r]
    if passkey:
        methods = _methods_order(config, {r["method"]: 1 for r in passkey})
        depths = sorted({r["depth"] for r in passkey})
        lengths = sorted({r["length"] for r in passkey})
        cols = min(4, len(methods))
        rows = math.ceil(len(methods) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows + 0.6), squeeze=False)
        fig.subplots_adjust(hspace=0.55, wspace=0.35)
        for ax, method in zip(axes.flat, methods):
            grid = [[float("nan")] * len(lengths) for _ in depths]
            for r in passkey:
                if r["method"] == method:
                    grid[depths.index(r["depth"])][lengths.index(r["length"])] = r["metrics"]["exact_match"]
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
            for i, row in enumerate(grid):
                for j, value in enumerate(row):
                    if not math.isnan(value):
                        ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8)
            ax.set_title(method, fontsize=9)
            ax.set_xticks(range(len(lengths)), [f"{n / 1024:g}K" for n in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths], fontsize=7)
            ax.set_xlabel("length", fontsize=8)
            ax.set_ylabel("depth", fontsize=8)
        for ax in list(axes.flat)[len(methods) :]:
            ax.axis("off")
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="exact match")
        fig.suptitle(f"passkey retrieval ({config['model']}, train length {train_len})", fontsize=10, y=1.0)
        path = run / "passkey_heatmap.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def write_report(run: str | os.PathLike) -> Path:
    from ropelab.model.checkpoint import atomic_write_text

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
        metric = a["tasks"][name]["metric"]
        lines += [f"## {name}: {metric}", "", "| method | length | A | B | B - A |", "|---|---:|---:|---:|---:|"]
        cells_a, cells_b = a["tasks"][name]["cells"], b["tasks"][name]["cells"]
        for method in cells_a:
            for length, cell in sorted(cells_a[method].items(), key=lambda kv: int(kv[0])):
                other = cells_b.get(method, {}).get(length)
                if other is None:
                    continue
                lines.append(
                    f"| `{method}` | {length} | {_fmt(cell[metric], metric)} | {_fmt(other[metric], metric)} | "
                    f"{other[metric] - cell[metric]:+.4f} |"
                )
        lines.append("")
    return "\n".join(lines)
