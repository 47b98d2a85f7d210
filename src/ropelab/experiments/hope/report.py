"""The experiment report: every model's training and evaluation in one ``report.md``.

Inputs are the run directories the experiment wrote (``models/<pe>/`` training runs,
``eval/<pe>/`` evaluation runs with their ``summary.json`` and ``results.jsonl``); outputs are
``summary.json`` (all cells of all models, the training results and the HoPE-vs-RoPE verdict),
``report.md`` and PNG plots. Plots reuse :func:`ropelab.reporting.eval.make_plots` on the merged
cells; tables follow the paper's layout (methods as rows, lengths as columns, an average column
for the exact-match tasks); every cell carries n and its standard error or Wilson interval, and a
value is bold only when it is better than every other row by the paired rule of
:mod:`ropelab.eval.stats`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ropelab.core.errors import RopelabError
from ropelab.core.io import atomic_write_text
from ropelab.eval.runner import REFERENCE, read_results
from ropelab.experiments.hope import primary, tuning
from ropelab.experiments.hope.config import (
    ANALYSIS_DIR,
    CURVE_FILE,
    CURVE_SAMPLES,
    PAPER_ORDER,
    ExperimentConfig,
    runs,
    seed_counts,
)
from ropelab.pe import format_value
from ropelab.reporting.common import method_style, outside_legend, save_figure, series_labels
from ropelab.reporting.eval import cell_text, length_label, make_plots, value_text
from ropelab.train.trainer import read_log

#: the tasks of the paper's tables, in the report's order, with their headings
HEADINGS = {
    "copy": "Copy (the paper's Table 1): exact match (%) of the queried sequence's 4-token suffix",
    "fewshot": "Few-shot following (the paper's Table 2): follow rate (%), the answer is one of the examples' labels",
    "ppl": "Perplexity (the paper's Figure 5): loss of the last 256 tokens",
    "passkey": "Passkey retrieval: exact match (%)",
}
AVERAGED = ("exact_match", "follow_rate", "accuracy")


def _row_order(pes: list[str], cells: dict) -> list[str]:

    ranked = sorted(pes, key=lambda p: (PAPER_ORDER.index(p) if p in PAPER_ORDER else len(PAPER_ORDER), pes.index(p)))
    rows = []
    for pe in ranked:
        rows += sorted((m for m in cells if m == pe or m.startswith(pe + "+")), key=lambda m: (m != pe, m))
        if f"{REFERENCE}[{pe}]" in cells:
            rows.append(f"{REFERENCE}[{pe}]")
    return rows + sorted(m for m in cells if m not in rows)


def collect(exp: Path) -> dict:
    """Merge the experiment's runs into one summary (cells keyed by method; windows renamed)."""

    record_path = exp / "experiment.json"
    if not record_path.is_file():
        raise RopelabError(f"{exp}: not an experiment directory (experiment.json expected)")
    experiment = json.loads(record_path.read_text())
    config, plan = experiment["config"], experiment["plan"]
    tasks: dict[str, dict] = {}
    records: list[dict] = []
    training = {}
    for model in runs(ExperimentConfig(**config)):
        pe, name, base = model.pe, model.name, model.seed == config["seed"]
        run = exp / "models" / name
        log = read_log(run)
        final = log[-1] if log else {}
        vals = [r for r in log if "val_loss" in r]
        train_config = (
            json.loads((run / "train_config.json").read_text()) if (run / "train_config.json").is_file() else {}
        )
        curve_path = run / CURVE_FILE
        curve = json.loads(curve_path.read_text()) if curve_path.is_file() else []
        training[pe if base else name] = {
            "copy_curve": [(p["step"], p["exact_match"]) for p in curve],
            "parameters": train_config.get("parameters"),
            "lr": train_config.get("requested", {}).get("lr"),
            "steps": final.get("step", 0),
            "planned_steps": train_config.get("resolved", {}).get("steps"),
            "tokens": final.get("tokens", 0),
            "train_loss": final.get("loss"),
            "val_loss": vals[-1]["val_loss"] if vals else None,
            "minutes": final.get("elapsed_s", 0) / 60,
            "curve": [(r["tokens"], r["val_loss"]) for r in vals],
        }
        summary_path = exp / "eval" / name / "summary.json"
        if not base or not summary_path.is_file():
            continue  # the extra seeds' evaluations go to the seed study
        summary = json.loads(summary_path.read_text())
        rename = {REFERENCE: f"{REFERENCE}[{pe}]"}
        for task, data in summary["tasks"].items():
            merged = tasks.setdefault(
                task, {"metric": data["metric"], "higher_is_better": data["higher_is_better"], "cells": {}}
            )
            for method, cells in data["cells"].items():
                merged["cells"][rename.get(method, method)] = cells
        for record in read_results(exp / "eval" / name / "results.jsonl"):
            records.append({**record, "method": rename.get(record["method"], record["method"])})
    methods = [m for task in tasks.values() for m in task["cells"]]
    lengths = sorted({int(n) for task in tasks.values() for cells in task["cells"].values() for n in cells})
    task_lengths = {t: sorted({int(n) for cells in d["cells"].values() for n in cells}) for t, d in tasks.items()}
    merged_config = {
        "model": f"{config['model_config']}, {plan['steps']} steps",
        "methods": list(dict.fromkeys(methods)),
        "tasks": list(tasks),
        "lengths": lengths,
        "task_lengths": {t: [n for n in ns] for t, ns in task_lengths.items()},
        "train_len": config["train_len"],
        "samples": plan["samples"],
        "seed": config["seed"],
        "include_window": config.get("window", False),
    }
    analysis = None
    analysis_path = exp / ANALYSIS_DIR / "analysis.json"
    if analysis_path.is_file():
        try:
            analysis = json.loads(analysis_path.read_text())
            analysis["plots"] = sorted(p.stem for p in analysis_path.parent.glob("*.png"))
        except (OSError, ValueError):
            analysis = None  # a damaged analysis is left out of the report, not fatal
    return {
        "config": merged_config,
        "experiment": experiment,
        "training": training,
        "tasks": tasks,
        "records": records,
        "analysis": analysis,
        "tuning": tuning.load(exp),
    }


def seed_study(exp: Path, experiment: dict) -> dict | None:
    """Every encoding trained with several seeds: per task, method and length, each seed's cell
    mean (the verdicts over seeds are :mod:`~ropelab.experiments.hope.primary`'s). None without
    extra seeds."""
    config = ExperimentConfig(**experiment["config"])
    counts = seed_counts(config)
    several = [pe for pe in config.pes if counts[pe] > 1]
    if not several:
        return None
    tasks: dict[str, dict] = {}
    for run in runs(config):
        if run.pe not in several:
            continue
        path = exp / "eval" / run.name / "summary.json"
        if not path.is_file():
            continue
        for task, data in json.loads(path.read_text())["tasks"].items():
            entry = tasks.setdefault(
                task, {"metric": data["metric"], "higher_is_better": data["higher_is_better"], "cells": {}}
            )
            for method, cells in data["cells"].items():
                if method == REFERENCE:
                    continue
                for n, cell in cells.items():
                    entry["cells"].setdefault(method, {}).setdefault(n, {})[str(run.seed)] = cell[data["metric"]]
    return {"seeds": {pe: counts[pe] for pe in several}, "pes": several, "tasks": tasks}


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    k = len(values)
    mean = sum(values) / k
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1)) if k > 1 else None)


def seed_section(study: dict | None, train_len: int) -> list[str]:
    """Markdown for :func:`seed_study`."""
    if not study:
        return []
    lines = [
        "## Seed study: " + ", ".join(f"`{p}` ({k} seeds)" for p, k in study["seeds"].items()),
        "",
        "Each cell: mean over seeds of the cell's mean, ± the standard deviation between seeds (k = seeds "
        "measured); every seed is evaluated on the same samples.",
        "",
    ]
    for task in ("copy", "fewshot", "passkey", "ppl"):
        entry = study["tasks"].get(task)
        if not entry:
            continue
        metric, cells = entry["metric"], entry["cells"]
        lengths = sorted({int(n) for c in cells.values() for n in c})
        lines += [
            f"**{task}** ({metric})",
            "",
            "| method | " + " | ".join(length_label(n, train_len) for n in lengths) + " |",
        ]
        lines.append("|---|" + "---:|" * len(lengths))
        for method in sorted(cells, key=lambda m: (m.split("+")[0] != "rope", m)):
            row = []
            for n in lengths:
                values = list(cells[method].get(str(n), {}).values())
                if not values:
                    row.append("-")
                    continue
                mean, sd = _mean_sd(values)
                spread = "" if sd is None else f" ± {value_text(sd, metric)}"
                row.append(f"{value_text(mean, metric)}{spread} (k={len(values)})")
            lines.append(f"| `{method}` | " + " | ".join(row) + " |")
        lines.append("")
    return lines


def _table(task: str, data: dict, merged: dict, metric: str | None = None) -> list[str]:
    """One task's cells of the base seed's models (one checkpoint each: a description, never bold)."""
    config = merged["config"]
    metric, cells = metric or data["metric"], data["cells"]
    lengths = config["task_lengths"].get(task, [])
    train_len = config["train_len"]
    average = metric in AVERAGED
    header = [length_label(n, train_len) for n in lengths] + (["Avg."] if average else [])
    lines = ["| method | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    rows = _row_order(merged["experiment"]["config"]["pes"], cells)
    values = {m: [cells[m].get(str(n), {}).get(metric) for n in lengths] for m in rows}
    if average:
        for m in rows:
            present = [v for v in values[m] if v is not None]
            values[m].append(sum(present) / len(present) if len(present) == len(lengths) else None)
    columns = len(header)
    for m in rows:
        row = []
        for c in range(columns):
            value = values[m][c]
            if c < len(lengths):  # a measured cell with its sampling interval (this checkpoint only)
                text = cell_text(cells[m].get(str(lengths[c])), metric)
            else:  # the average over lengths
                text = value_text(value, metric)
            row.append(text)
        label = f"*{m}* (reference)" if m.startswith(REFERENCE) else f"`{m}`"
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return lines


def render(merged: dict, plots: list[str], comparisons: dict, study: dict | None = None) -> str:
    config, experiment = merged["config"], merged["experiment"]
    exp_config, plan = experiment["config"], experiment["plan"]
    train_len = config["train_len"]
    data = plan.get("data", {})
    lines = [
        "# HoPE experiment: position encodings trained from scratch under identical settings",
        "",
        f"Model `{exp_config['model_config']}` trained at length {train_len} with "
        f"{', '.join(f'`{p}`' for p in exp_config['pes'])}: {plan['steps']} steps of {exp_config['batch_size']} "
        f"sequences ({plan['tokens_per_model']:,} tokens per model), AdamW (0.9, 0.999), peak lr "
        f"{exp_config['lr']:g}, cosine schedule, gradient clipping 1.0, seed {exp_config['seed']}, the same data "
        f"order for every model. Data: {', '.join(exp_config['data'])} "
        f"({data.get('tokens', {}).get('train', 0):,} train tokens, tokenizer {exp_config['tokenizer']}"
        + (", the files the evaluation reads held out of training" if exp_config.get("holdout_eval") else "")
        + ")"
        + (
            f"; {100 * exp_config['synthetic']:g}% of the training sequences are synthetic record sequences "
            f"(repeat probability {exp_config.get('synthetic_repeat', 0.5):g}, `ropelab.data.synthetic`)."
            if exp_config.get("synthetic")
            else "."
        )
        + (f" Budget {exp_config['budget_minutes']:g} min." if exp_config.get("budget_minutes") else "")
        + f" {plan['samples']} sample(s) per cell; "
        f"At inference `+pi` uses factor max(1, n / L) at each input length n and `+yarn` factor "
        f"{_factor(exp_config):g}.",
        "",
        "## Training",
        "",
        f"*Copy plateau*: copy exact match at the train length over the last {PLATEAU[0]} checkpoints within "
        f"{100 * PLATEAU[1]:g} points (the criterion for a schedule long enough); *learned*: copy at the train length "
        f"at least {100 * LEARNED:g} % at the last checkpoint -- an encoding that did not learn to copy inside L is "
        "left out of the comparisons with that reason.",
        "",
        "| model | parameters | lr | steps | tokens | train loss | val loss | minutes | copy plateau | learned |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for pe, t in merged["training"].items():
        steps = f"{t['steps']}" + (
            f" of {t['planned_steps']}" if t["planned_steps"] and t["steps"] != t["planned_steps"] else ""
        )
        plateau, learned = copy_status(t["copy_curve"])
        lr = "-" if t.get("lr") is None else f"{t['lr']:g}"
        lines.append(
            f"| `{pe}` | {t['parameters'] or 0:,} | {lr} | {steps} | {t['tokens']:,} | {_num(t['train_loss'])} | "
            f"{_num(t['val_loss'])} | {t['minutes']:.1f} | {plateau} | {learned} |"
        )
    lines.append("")
    lines += tuning_section(merged.get("tuning"))
    lines += curve_section(merged["training"], train_len)
    for task in ("copy", "fewshot", "ppl", "passkey", *sorted(set(merged["tasks"]) - set(HEADINGS))):
        if task not in merged["tasks"]:
            continue
        data_task = merged["tasks"][task]
        lines += [f"## {HEADINGS.get(task, task)}", "", BASE_SEED_NOTE.format(seed=exp_config["seed"]), ""]
        lines += _table(task, data_task, merged)
        if task == "fewshot":  # the follow rate measures format; accuracy whether the label is right
            lines += ["", "Few-shot **accuracy** (%): the answer is the query's own label.", ""]
            lines += _table(task, data_task, merged, "accuracy")
        dropped = plan.get("dropped_lengths", {}).get(task)
        if dropped:
            lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in dropped.items())]
        lines.append("")
    lines += primary.section(comparisons["primary"], comparisons["secondary"])
    if comparisons.get("left_out"):
        lines += [
            "Left out of the comparisons: "
            + ", ".join(f"`{pe}`" for pe in comparisons["left_out"])
            + f" (the base seed's model copies under {100 * LEARNED:g} % at the train length: it did not learn "
            "what these tasks measure, so ranking it would measure the recipe, not the encoding).",
            "",
        ]
    lines += seed_section(study, train_len)
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    lines += analysis_section(merged.get("analysis"))
    lines += [
        "Per-model evaluation reports: `eval/<model>/report.md`; training runs: `models/<model>/`. "
        "Regenerate this report with `ropelab experiment hope --report-only --out <this directory>`.",
        "",
    ]
    return "\n".join(lines)


def _analysis_row(subject: dict) -> dict:
    """The headline numbers of one model's analysis (``ropelab.analysis``), or blanks."""
    components = subject.get("components") or {}
    bands = components.get("vaf_bands") or {}
    ood = subject.get("ood") or {}
    fractions = ood.get("ood_fraction") or []
    layers = ood.get("layers") or []
    patterns = {p["beyond_train_len"]: p for p in subject.get("pattern") or [] if isinstance(p, dict)}

    def u(beyond: bool) -> str:
        shape = (patterns.get(beyond) or {}).get("shape") or {}
        return "-" if not shape else f"{'yes' if shape['u_shape'] else 'no'} ({shape['u_depth']:+.3f})"

    return {
        "label": subject.get("label", "?"),
        "step": subject.get("step"),
        "activated": [f"{a['index']}" for a in components.get("activated", [])],
        "vaf_activated": bands.get("activated"),
        "vaf_lower": bands.get("lower"),
        "ood_first": fractions[layers.index(0)] if 0 in layers else None,
        "ood_mean": sum(fractions) / len(fractions) if fractions else None,
        "ks_first": (ood.get("ood_ks") or [None])[layers.index(0)] if 0 in layers else None,
        "u_within": u(False),
        "u_beyond": u(True),
    }


def analysis_section(analysis: dict | None) -> list[str]:
    """Markdown for the experiment's ``analysis/`` (written by ``ropelab analyze``), if present."""
    if not analysis:
        return []

    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    lines = [
        "## Why: attention pattern, RoPE components (VAF) and OOD logits",
        "",
        "`ropelab analyze` on every trained model (the HoPE paper's Section 3 analyses; definitions and "
        "limitations in `docs/analysis.md`, everything in `analysis/analysis.md`). Probe input `[BOS] t t ... t`; "
        "U-shape = the last query's logits are higher at the first and the nearest keys than in the middle. VAF = "
        "share of the layer-averaged logit pattern one band of frequency components explains (Eq. 5); the activated "
        "band is pi/L < theta < 2pi/L. OOD = share of first-layer logits at distance >= L (input 2L) outside the "
        "range the same layer and head produced within L; KS = Kolmogorov-Smirnov distance of the two sets.",
        "",
        "| model | step | activated j | VAF activated | VAF lower band | U-shape within L | U-shape at 2L "
        "| OOD layer 0 | OOD mean of layers | KS layer 0 |",
        "|---|---:|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for subject in analysis.get("subjects", []):
        r = _analysis_row(subject)
        lines.append(
            f"| `{r['label']}` | {r['step'] if r['step'] is not None else '-'} | {', '.join(r['activated']) or '-'} "
            f"| {pct(r['vaf_activated'])} | {pct(r['vaf_lower'])} | {r['u_within']} | {r['u_beyond']} "
            f"| {pct(r['ood_first'])} | {pct(r['ood_mean'])} "
            f"| {'-' if r['ks_first'] is None else format(r['ks_first'], '.2f')} |"
        )
    lines.append("")
    for name in ("pattern", "vaf", "vaf_training", "ood"):
        if name in analysis.get("plots", []):
            lines.append(f"![{name}]({ANALYSIS_DIR}/{name}.png)")
    lines.append("")
    return lines


def _factor(config: dict) -> float:

    return ExperimentConfig(**config).factor


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _diff(v: dict, metric: str) -> str:
    if metric in AVERAGED:
        return f"{100 * v['difference']:+.1f} points +/- {100 * v['standard_error']:.1f}"
    return f"{v['difference']:+.4f} +/- {v['standard_error']:.4f}"


def curve_section(training: dict, train_len: int) -> list[str]:
    """When copying appears: copy exact match at the train length over every model's checkpoints."""
    curves = {name: t["copy_curve"] for name, t in training.items() if t.get("copy_curve")}
    if not curves:
        return []
    steps = sorted({step for curve in curves.values() for step, _ in curve})
    lines = [
        "## When copying appears",
        "",
        f"Copy exact match (%) at the train length ({train_len} tokens) of every checkpoint, teacher-forced, "
        f"the same {CURVE_SAMPLES} samples for every model (`models/<model>/{CURVE_FILE}`, with Wilson intervals).",
        "",
        "| model | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|" + "---:|" * len(steps),
    ]
    for name, curve in curves.items():
        by_step = dict(curve)
        lines.append(
            f"| `{name}` | " + " | ".join("-" if s not in by_step else f"{100 * by_step[s]:.0f}" for s in steps) + " |"
        )
    return [*lines, "", "![copy_curve](copy_curve.png)", ""]


def _line_plot(path: Path, curves: dict, xlabel: str, ylabel: str, title: str, scale: float = 1.0) -> str | None:
    """One line per model (``curves``: name -> [(x, y)]), written to ``path``; None without data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: curve for name, curve in curves.items() if curve}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels = series_labels(curves)
    for i, (name, curve) in enumerate(curves.items()):
        ax.plot([c[0] for c in curve], [scale * c[1] for c in curve], label=labels[name], **method_style(name, i))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    outside_legend(ax)
    return save_figure(fig, path)


def _curve_plot(exp: Path, merged: dict) -> str | None:
    curves = {name: t.get("copy_curve") for name, t in merged["training"].items()}
    return _line_plot(
        exp / "copy_curve.png", curves, "training step", "copy exact match at 1x (%)", "when copying appears", 100
    )


def _training_plot(exp: Path, merged: dict) -> str | None:
    curves = {name: t["curve"] for name, t in merged["training"].items()}
    return _line_plot(
        exp / "training_val_loss.png", curves, "training tokens", "validation loss", "validation loss during training"
    )


#: the copy curve has plateaued when its last PLATEAU[0] checkpoints lie within PLATEAU[1]
PLATEAU = (3, 0.03)
#: an encoding learned to copy inside L when its last checkpoint copies at least this often
LEARNED = 0.2


def copy_status(curve: list) -> tuple[str, str]:
    """("yes"/"no"/"-", "yes"/"no"/"-"): has the copy curve plateaued, and did the model learn to copy."""
    values = [v for _, v in curve]
    if not values:
        return "-", "-"
    tail = values[-PLATEAU[0] :]
    plateau = "-" if len(tail) < PLATEAU[0] else ("yes" if max(tail) - min(tail) <= PLATEAU[1] else "no")
    return plateau, "yes" if values[-1] >= LEARNED else "no"


def tuning_section(found: dict | None) -> list[str]:
    """The learning-rate sweep's development losses and choices."""
    if not found:
        return []
    grid = [f"{lr:g}" for lr in found["grid"]]
    lines = [
        "## Learning rate, tuned per encoding",
        "",
        f"Development loss (nats) after {found['steps']} steps at each learning rate, on {found['development_files']} "
        "validation files no evaluation reads; the lowest picks the rate every seed of the encoding trains with.",
        "",
        "| encoding | " + " | ".join(grid) + " | chosen |",
        "|---|" + "---:|" * len(grid) + "---:|",
    ]
    for pe, scores in found["scores"].items():
        cells = [f"{scores[lr]:.3f}" if lr in scores else "-" for lr in grid]
        lines.append(f"| `{pe}` | " + " | ".join(cells) + f" | {found['chosen'][pe]:g} |")
    return [*lines, ""]


BASE_SEED_NOTE = (
    "*Seed {seed}'s models, one checkpoint per encoding, with intervals over this checkpoint's samples: a "
    "description, not a finding (no bold). The verdicts are the seed-level primary comparisons below.*"
)


def primary_comparisons(exp: Path, merged: dict) -> dict:
    """The primary and secondary comparisons (:mod:`~ropelab.experiments.hope.primary`) over seeds."""
    config = ExperimentConfig(**merged["experiment"]["config"])
    values = primary.seed_values(exp, runs(config), format_value(float(f"{config.factor:g}")))
    lengths = {task: [int(n) for n in ns] for task, ns in merged["config"]["task_lengths"].items()}
    # an encoding whose base-seed model never learned to copy inside L is not ranked
    failed = {pe for pe in config.pes if copy_status(merged["training"].get(pe, {}).get("copy_curve", []))[1] == "no"}
    kept = {}
    for name, against in (("primary", primary.PRIMARY), ("secondary", primary.SECONDARY)):
        kept[name] = tuple(a for a in against if "hope" not in failed and a.split("+")[0] not in failed)
    return {
        "primary": primary.comparisons(values, config.train_len, lengths, kept["primary"]),
        "secondary": primary.comparisons(values, config.train_len, lengths, kept["secondary"]),
        "left_out": sorted(failed & {"hope", *(a.split("+")[0] for a in primary.PRIMARY + primary.SECONDARY)}),
    }


def write_experiment_report(exp: str | os.PathLike) -> Path:
    exp = Path(exp)
    merged = collect(exp)
    summary_for_plots = {"config": merged["config"], "tasks": merged["tasks"]}
    plots = []
    training_plot = _training_plot(exp, merged)
    if training_plot:
        plots.append(training_plot)
    if merged["tasks"]:
        plots += make_plots(exp, summary_for_plots, merged["records"])
    _curve_plot(exp, merged)  # shown in its own section, not with the other plots
    comparisons = primary_comparisons(exp, merged)
    study = seed_study(exp, merged["experiment"])
    summary = {
        "config": merged["config"],
        "experiment": merged["experiment"],
        "training": merged["training"],
        "tasks": merged["tasks"],
        "comparisons": comparisons,
        "seed_study": study,
    }
    atomic_write_text(exp / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(exp / "report.md", render(merged, plots, comparisons, study))
    return exp / "report.md"
