"""The report of ``ropelab experiment hirope`` (:mod:`ropelab.experiments.hirope.run`).

Statistics (docs/evaluation.md, "Verdicts"): every comparison is paired on the same tokens. A
document's value is its mean over the training seeds; the **document** is the unit of the
interval (t, n - 1 degrees of freedom) and of the call, Holm-adjusted within each table. Beside it,
the **seed** view: the same difference per seed (each seed's mean over the documents) with its t
interval over the seeds, and how many seeds agree (their own document-level interval excludes 0
on the same side). A call is "better" / "worse" only by the document rule; the seed columns say
whether it holds for every training run.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from pathlib import Path

from ropelab.core.io import atomic_write_text
from ropelab.eval.runner import REFERENCE, read_results
from ropelab.eval.stats import family, interval, paired
from ropelab.experiments.hirope.config import ablations, block_size
from ropelab.reporting.common import method_style, outside_legend, save_figure, series_labels, tokens_text

METRICS = {"beyond": "loss beyond L", "far": "far-dependent tokens"}


def bucket_edges(train_len: int, length: int) -> list[int]:
    """Fine where it matters: ``[0, L/2, L, 2L, 4L, ...]`` up to ``length``."""
    edges = [0, train_len // 2, train_len]
    while edges[-1] * 2 < length:
        edges.append(edges[-1] * 2)
    return [*edges, length]


def values_by_seed(records: list[dict], metric: str) -> dict:
    """spec -> seed -> document -> value."""
    out = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r.get(metric) is not None:
            out[r["method"]][r["seed"]][r["document"]] = r[metric]
    return out


def document_means(by_seed: dict) -> dict:
    """document -> mean over the seeds that measured it (documents missing a seed are left out)."""
    seeds = list(by_seed)
    docs = set.intersection(*(set(by_seed[s]) for s in seeds)) if seeds else set()
    return {d: sum(by_seed[s][d] for s in seeds) / len(seeds) for d in docs}


def compare(values: dict, spec: str, reference: str) -> dict:
    """``spec - reference``: the document view (seed-averaged documents) and the seed view."""
    a, b = values.get(spec, {}), values.get(reference, {})
    docs = paired(document_means(a), document_means(b))
    per_seed = {}
    for seed in sorted(set(a) & set(b)):
        per_seed[seed] = paired(a[seed], b[seed])
    seeds = interval(iv.mean for iv in per_seed.values())
    side = 1 if docs.mean > 0 else -1
    agree = sum(1 for iv in per_seed.values() if (iv.lo > 0 if side > 0 else iv.hi < 0))
    return {"docs": docs, "seeds": seeds, "agree": agree, "n_seeds": len(per_seed)}


def compare_family(values: dict, pairs: list[tuple[str, str, str]]) -> dict:
    """Comparisons ``(key, spec, reference)`` of one family, each with its Holm call (documents)."""
    cells = {key: compare(values[metric], spec, ref) for key, (metric, spec, ref) in pairs}
    verdicts = family({k: c["docs"] for k, c in cells.items()}, lower_is_better=True)
    for key, cell in cells.items():
        cell["verdict"] = verdicts[key]
    return cells


def summarise(config: dict, records: list[dict], selection: dict, methods: list[str]) -> dict:
    values = {m: values_by_seed(records, m) for m in METRICS}
    chosen = selection["chosen"]
    main = [m for m in methods if m != REFERENCE and not _is_ablation(m, chosen)]
    vs_window = compare_family(
        values, {(metric, m): (metric, m, REFERENCE) for m in main for metric in METRICS}.items()
    )
    vs_chosen = compare_family(
        values, {(metric, m): (metric, m, chosen) for m in main if m != chosen for metric in METRICS}.items()
    )
    ablation_rows = [(name, value, spec) for name, value, spec in ablations(chosen) if spec in methods]
    vs_ablation = compare_family(
        values, {(metric, spec): (metric, spec, chosen) for _, _, spec in ablation_rows for metric in METRICS}.items()
    )
    out_of_range = defaultdict(list)
    for r in records:
        if r.get("out_of_range") is not None and r["seed"] == config["seeds"][0]:
            out_of_range[r["method"]].append(r["out_of_range"])
    buckets = _buckets(config, records, methods)
    return {"main": main, "vs_window": vs_window, "vs_chosen": vs_chosen, "ablations": ablation_rows,
            "vs_ablation": vs_ablation, "out_of_range": dict(out_of_range), "buckets": buckets,
            "n_documents": len({r["document"] for r in records}), "seeds": sorted({r["seed"] for r in records})}  # fmt: skip


def _is_ablation(spec: str, chosen: str) -> bool:
    return spec in {s for _, _, s in ablations(chosen)}


def _buckets(config: dict, records: list[dict], methods: list[str]) -> list[dict]:
    """Mean loss per position bucket and method over every seed and document (a description: the
    plot; the verdicts are the tables)."""
    block = block_size(config["train_len"])
    edges = bucket_edges(config["train_len"], config["length"])
    out = []
    for lo, hi in itertools.pairwise(edges):
        cells = {}
        for m in methods:
            per_doc = [
                _mean(r["blocks"][lo // block : -(-hi // block)]) for r in records if r["method"] == m and r["blocks"]
            ]
            if per_doc:
                cells[m] = _mean(per_doc)
        out.append({"start": lo, "stop": hi, "cells": cells})
    return out


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


# -- rendering ---------------------------------------------------------------------------------------
def _diff(cell: dict | None) -> str:
    if cell is None or cell["docs"].n == 0:
        return "-"
    v = cell["verdict"]
    text = f"{cell['docs'].text()} {v.call}"
    return f"**{text}**" if v.call in ("better", "worse") else text


def _seed_view(cell: dict | None) -> str:
    if cell is None or cell["seeds"].n == 0:
        return "-"
    return f"{cell['seeds'].text()} ({cell['agree']}/{cell['n_seeds']})"


def render(config: dict, summary: dict, extra: dict, selection: dict, plot: str | None) -> str:
    L, length = config["train_len"], config["length"]
    training = extra.get("training", {})
    model = training.get("model", {})
    status = extra.get("train_status", {})
    seeds = summary["seeds"]
    losses = ", ".join(f"seed {s}: {v.get('val_loss') or float('nan'):.3f}" for s, v in status.items())
    n_docs = summary["n_documents"]
    lines = [
        "# ropelab experiment hirope: the HiRoPE paper's ShortLLM study at CPU scale",
        "",
        f"A RoPE code model trained from scratch at L = {L} ({training.get('parameters', 0) / 1e6:.1f}M parameters, "
        f"head_dim {model.get('head_dim')}, RoPE base {model.get('rope_base')}) with **{len(seeds)} seeds** "
        f"({config['steps']} steps each, the same files and split; final validation loss {losses}), evaluated "
        f"under every method on **{n_docs} test projects** ({config['documents']} per language: "
        f"{', '.join(config['languages'])}), each its first {length} tokens (L^2 = {L**2}); no project of the "
        f"corpus is in the training data. A unigram model (no context) scores {extra.get('unigram_loss', math.nan):.3f}.",
        "",
        "Differences are paired on the same tokens. **docs**: a document's difference averaged over the seeds, "
        f"then the mean and 95 % t interval over the {n_docs} documents (n - 1 df), Holm-adjusted within the table; "
        "bold = better/worse by that rule. **seeds**: each seed's mean over the documents, then the t interval over "
        f"the {len(seeds)} seeds, and how many seeds' own document-level intervals exclude 0 on the same side.",
        "",
        *_render_selection(selection, L),
        "## Beyond the train length: each method minus the window reference",
        "",
        "The window reference is the model's own RoPE with attention limited to the previous "
        f"{L} tokens plus 4 sinks: what a model does without extrapolating. On far-dependent tokens it is blind "
        "by construction (their names occur only beyond its reach), so a method below it there uses the far context.",
        "",
        "| method | loss beyond L: docs | seeds | far-dependent tokens: docs | seeds |",
        "|---|---:|---:|---:|---:|",
    ]
    vw = summary["vs_window"]
    for m in summary["main"]:
        b, f = vw.get(("beyond", m)), vw.get(("far", m))
        lines.append(f"| `{m}` | {_diff(b)} | {_seed_view(b)} | {_diff(f)} | {_seed_view(f)} |")
    lines += ["", f"## Against the chosen HiRoPE setting (`{selection['chosen']}`): each method minus it", "",
              "| method | loss beyond L: docs | seeds | far-dependent tokens: docs | seeds |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    vc = summary["vs_chosen"]
    for m in summary["main"]:
        if m != selection["chosen"]:
            b, f = vc.get(("beyond", m)), vc.get(("far", m))
            lines.append(f"| `{m}` | {_diff(b)} | {_seed_view(b)} | {_diff(f)} | {_seed_view(f)} |")
    lines += [
        "",
        "## Ablations: one design choice of the chosen setting changed",
        "",
        "Each row minus the chosen setting. *out of range*: the share of far pairs (distance >= the window) whose "
        f"segment distance, shift included, exceeds {L - 1} (the largest distance seen in training), mean over "
        "the documents [min, max] (first seed).",
        "",
        "| changed | setting | out of range | loss beyond L: docs | seeds | far-dependent tokens: docs |",
        "|---|---|---:|---:|---:|---:|",
        f"| - (chosen) | `{selection['chosen']}` | {_share(summary['out_of_range'].get(selection['chosen']))} | - | - | - |",
    ]
    va = summary["vs_ablation"]
    for name, value, spec in summary["ablations"]:
        b, f = va.get(("beyond", spec)), va.get(("far", spec))
        share = _share(summary["out_of_range"].get(spec))
        lines.append(f"| {name}={value} | `{spec}` | {share} | {_diff(b)} | {_seed_view(b)} | {_diff(f)} |")
    lines += ["", "## Loss by position (mean over seeds and documents; a description)", ""]
    if plot:
        lines += [f"![loss by position]({Path(plot).name})", ""]
    buckets = summary["buckets"]
    lines += ["| method | " + " | ".join(f"{tokens_text(b['start'])}-{tokens_text(b['stop'])}" for b in buckets) + " |",
              "|---|" + "---:|" * len(buckets)]  # fmt: skip
    for m in [*summary["main"], REFERENCE]:
        cells = " | ".join(f"{b['cells'][m]:.3f}" if m in b["cells"] else "-" for b in buckets)
        lines.append(f"| `{m}` | {cells} |")
    lines += ["", "Regenerate: `ropelab experiment hirope --out <this directory>` (resumes; re-renders when done).", ""]
    return "\n".join(lines)


def _share(values: list[float] | None) -> str:
    if not values:
        return "-"
    return f"{100 * _mean(values):.1f} % [{100 * min(values):.0f}, {100 * max(values):.0f}]"


def _render_selection(selection: dict, train_len: int) -> list[str]:
    rows = selection["rows"]
    lines = [
        "## HiRoPE's setting, chosen on development projects",
        "",
        f"Rule (fixed before any test project was evaluated): {selection['rule']}. "
        f"Development: {len(selection['documents'])} projects ({', '.join(selection['documents'])}), "
        f"loss beyond L averaged over seeds {', '.join(map(str, selection['seeds']))}.",
        "",
        "| setting | loss beyond L | minus the leader (docs) | minus window (docs) | tied |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        mark = " **(chosen)**" if r["spec"] == selection["chosen"] else ""
        lines.append(f"| `{r['spec']}`{mark} | {r['mean']:.3f} | {_iv(r['to_leader'])} | {_iv(r['to_reference'])} | "
                     f"{'yes' if r['tied'] else ''} |")  # fmt: skip
    if selection.get("smaller_window"):
        lines += ["", f"The chosen window is at least L/2 = {train_len // 2}: most attended pairs use plain RoPE, "
                  "so the setting is close to the window reference in disguise. The best setting with a smaller window, "
                  f"`{selection['smaller_window']}`, is reported beside it."]  # fmt: skip
    return [*lines, ""]


def _iv(d: dict | None) -> str:
    if d is None:
        return "-"
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d["n"] > 1 else f"{d['mean']:+.3f}"


def plot(out: Path, config: dict, summary: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_len = config["train_len"]
    fig, ax = plt.subplots(figsize=(10.5, 4.6))
    curves = {}
    for m in [*summary["main"], REFERENCE]:
        curves[m] = [(math.sqrt(max(1, b["start"]) * b["stop"]), b["cells"][m])
                     for b in summary["buckets"] if m in b["cells"] and not math.isnan(b["cells"][m])]  # fmt: skip
    labels = series_labels(curves)
    for i, (m, points) in enumerate(curves.items()):
        ax.plot([x for x, _ in points], [y for _, y in points], label=labels[m], **method_style(m, i))
    ax.set_xscale("log", base=2)
    for x, name in ((train_len, "L"), (train_len**2, "L²")):
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"{name} ", (x, 0.98), xycoords=("data", "axes fraction"), ha="right", va="top", fontsize=9,
                    color="grey")  # fmt: skip
    ax.set_xlabel("position (tokens, log2 scale; bucket midpoints)")
    ax.set_ylabel("next-token loss (mean over seeds and documents)")
    ax.set_title(f"ShortLLM at CPU scale: a RoPE model trained at L = {train_len}", fontsize=10)
    ax.grid(alpha=0.3)
    outside_legend(ax)
    return save_figure(fig, out / "loss_by_position.png")


def _jsonable(summary: dict) -> dict:
    def cell(c: dict) -> dict:
        v = c["verdict"]
        return {"docs": c["docs"].__dict__, "seeds": c["seeds"].__dict__, "agree": c["agree"],
                "n_seeds": c["n_seeds"], "adjusted_p": v.adjusted_p, "call": v.call}  # fmt: skip

    out = dict(summary)
    for name in ("vs_window", "vs_chosen", "vs_ablation"):
        out[name] = [{"metric": k[0], "method": k[1], **cell(c)} for k, c in summary[name].items()]
    return out


def write_report(out: Path, extra: dict) -> Path:
    config = json.loads((out / "experiment.json").read_text())["config"]
    records = read_results(out / "results.jsonl")
    selection = extra["selection"]
    summary = summarise(config, records, selection, extra["methods"])
    path = plot(out, config, summary)
    atomic_write_text(out / "summary.json", json.dumps({"config": config, **extra, **_jsonable(summary)}, indent=2))
    atomic_write_text(out / "report.md", render(config, summary, extra, selection, path))
    return out / "report.md"
