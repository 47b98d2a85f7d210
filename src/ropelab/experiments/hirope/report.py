"""The report of ``ropelab experiment hirope`` (:mod:`ropelab.experiments.hirope.run`): loss by position up
to ``L^2`` for every method, with standard errors over 64-token blocks of every held-out document,
paired differences to the window reference, and whether any method keeps the in-length loss.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from pathlib import Path

from ropelab.core.io import atomic_write_text
from ropelab.eval.runner import WINDOW, read_results
from ropelab.experiments.hirope.config import block_size
from ropelab.reporting.eval import diff_text, estimate_text, method_style, region, tokens_text


def bucket_edges(train_len: int, length: int) -> list[int]:
    """Fine where it matters: ``[0, L/2, L, 2L, 4L, ...]`` up to ``length``."""
    edges = [0, train_len // 2, train_len]
    while edges[-1] * 2 < length:
        edges.append(edges[-1] * 2)
    return [*edges, length]


def summarise(config: dict, records: list[dict], block: int) -> dict:
    edges = bucket_edges(config["train_len"], config["length"])
    methods = list(dict.fromkeys(r["method"] for r in records))
    blocks = defaultdict(dict)  # method -> (language, document, first token of the block) -> mean loss
    for r in records:
        for j, value in enumerate(r["blocks"]):
            blocks[r["method"]][(r["language"], r["document"], j * block)] = value
    buckets = [
        {"start": lo, "stop": hi, "cells": region(methods, blocks, lo, hi)} for lo, hi in itertools.pairwise(edges)
    ]
    inside = buckets[1]["cells"] if len(buckets) > 1 else buckets[0]["cells"]  # positions L/2 .. L
    reference = inside.get(WINDOW, inside.get("rope"))
    last = buckets[-1]["cells"]
    keeps = {}
    for m in methods:
        if reference is None or m not in last:
            continue
        keeps[m] = last[m]["mean"] - reference["mean"]
    seconds = defaultdict(float)
    for r in records:
        seconds[r["method"]] += r["seconds"]
    return {"methods": methods, "buckets": buckets, "rise_at_end": keeps, "seconds": dict(seconds)}


def render(config: dict, summary: dict, extra: dict, plot: str | None) -> str:

    train_len, length = config["train_len"], config["length"]
    training = extra.get("training", {})
    model = training.get("model", {})
    resolved = training.get("resolved", {})
    status = extra.get("train_status", {})
    lines = [
        "# ropelab experiment hirope: the HiRoPE paper's ShortLLM study at CPU scale",
        "",
        f"A RoPE code model trained from scratch at L = {train_len} "
        f"({training.get('parameters', 0) / 1e6:.1f}M parameters, head_dim {model.get('head_dim')}, "
        f"RoPE base {model.get('rope_base')}, {resolved.get('steps')} steps of {resolved.get('tokens_per_step')} "
        f"tokens, final validation loss {status.get('val_loss') or float('nan'):.3f}), evaluated under every method "
        f"on {config['documents']} held-out document(s) per language ({', '.join(config['languages'])}) of "
        f"{length} tokens (L^2 = {train_len**2}). A unigram model (no context) scores "
        f"{extra.get('unigram_loss', float('nan')):.3f} on the same tokens.",
        "",
        f"Loss per position bucket: mean ± SE over {block_size(train_len)}-token blocks of every document (n = blocks). "
        "The `window` row "
        f"is the model's own RoPE with attention limited to the previous {train_len} tokens plus 4 sinks, in one "
        "pass: the best a model can do without extrapolating.",
        "",
    ]
    if plot:
        lines += [f"![loss by position]({Path(plot).name})", ""]
    buckets = summary["buckets"]
    lines += [
        "| method | " + " | ".join(f"{tokens_text(b['start'])}-{tokens_text(b['stop'])}" for b in buckets) + " |",
        "|---|" + "---:|" * len(buckets),
    ]
    for m in summary["methods"]:
        name = f"`{m}`" if m != WINDOW else f"*{WINDOW}* (reference)"
        lines.append(f"| {name} | " + " | ".join(estimate_text(b["cells"].get(m)) for b in buckets) + " |")
    lines += ["", "Difference to the window reference (paired by block; negative = lower loss):", ""]
    beyond = [b for b in buckets if b["start"] >= train_len]
    lines += [
        "| method | " + " | ".join(f"{tokens_text(b['start'])}-{tokens_text(b['stop'])}" for b in beyond) + " |",
        "|---|" + "---:|" * len(beyond),
    ]
    for m in summary["methods"]:
        if m == WINDOW:
            continue
        lines.append(f"| `{m}` | " + " | ".join(diff_text(b["cells"].get(m)) for b in beyond) + " |")
    lines += [
        "",
        f"Rise of the loss from the in-length bucket ({train_len // 2}-{train_len}) to the last bucket "
        f"({tokens_text(buckets[-1]['start'])}-{tokens_text(length)}): "
        + ", ".join(f"`{m}` {v:+.3f}" for m, v in sorted(summary["rise_at_end"].items(), key=lambda kv: kv[1]))
        + ". The first buckets are the start of each document (often a licence header like those the model trained "
        "on), so this rise mixes content with position -- the window reference rises too; the paired difference to "
        "the window (same tokens) is what isolates a method.",
        "",
        "Seconds of evaluation per method: " + ", ".join(f"`{m}` {s:.0f}" for m, s in summary["seconds"].items()),
        "",
        "Regenerate: `ropelab experiment hirope --out <this directory>` (resumes; re-renders when done).",
        "",
    ]
    return "\n".join(lines)


def plot(out: Path, config: dict, summary: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_len = config["train_len"]
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for i, m in enumerate(summary["methods"]):
        xs, ys, es = [], [], []
        for b in summary["buckets"]:
            c = b["cells"].get(m)
            if c and c["n"]:
                xs.append(math.sqrt(max(1, b["start"]) * b["stop"]))
                ys.append(c["mean"])
                es.append(c["se"] or 0.0)
        ax.errorbar(xs, ys, yerr=es, label=m, capsize=2, **method_style(m, i))
    ax.set_xscale("log", base=2)
    for x, name in ((train_len, "L"), (train_len**2, "L²")):
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            f"{name} ", (x, 0.98), xycoords=("data", "axes fraction"), ha="right", va="top", fontsize=9, color="grey"
        )
    ax.set_xlabel("position (tokens, log2 scale; bucket midpoints)")
    ax.set_ylabel("next-token loss (±1 SE)")
    ax.set_title(f"ShortLLM at CPU scale: a RoPE model trained at L = {train_len}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    path = out / "loss_by_position.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_report(out: Path, extra: dict) -> Path:

    config = json.loads((out / "experiment.json").read_text())["config"]
    records = read_results(out / "results.jsonl")
    summary = summarise(config, records, block_size(config["train_len"]))
    path = plot(out, config, summary)
    atomic_write_text(out / "summary.json", json.dumps({"config": config, **extra, **summary}, indent=2))
    atomic_write_text(out / "report.md", render(config, summary, extra, path))
    return out / "report.md"
