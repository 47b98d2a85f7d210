"""The HoPE experiment's primary comparisons, stated before the runs (docs/training.md, "Primary
comparisons"), and their seed-level verdicts.

HoPE's claim (Chen et al. 2024, arXiv 2410.21216) is that removing RoPE's low frequencies improves
context awareness and extrapolation. Beating plain RoPE beyond the train length says little
(plain RoPE collapses there), so the **primary** comparisons are HoPE against the alternatives a
practitioner would pick instead: ``rope+yarn`` (RoPE with YaRN at inference), ``kerple-log`` and
``fire``. HoPE vs plain ``rope`` is **secondary**. Each is made on copy (exact match), few-shot
accuracy (the gold label, not only the follow rate), passkey (exact match) and the loss (``ppl``),
within L (lengths <= L) and beyond it.

Unit: the training **seed**. A seed's value is its model's cell mean averaged over the region's
lengths; the comparison pairs the seeds both encodings were trained with (every encoding trained
with seed s reads the same data in the same order); the interval is t with k - 1 degrees of
freedom over the k paired seeds; Holm within the primary family (every primary comparison x task
x region), and separately within the secondary one. "better"/"worse" only when the adjusted p is
below 0.05; otherwise the interval and the smallest difference the design could detect (80 %
power, from the measured spread) say whether "no difference" is a tight zero or a wide unknown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ropelab.eval.stats import detectable_from, differences, family, paired

#: (task, the metric compared, higher is better)
METRICS = (("copy", "exact_match", True), ("fewshot", "accuracy", True), ("passkey", "exact_match", True),
           ("ppl", "loss", False))  # fmt: skip
#: the alternatives HoPE is measured against (``rope+yarn`` gets its factor from the experiment)
PRIMARY = ("rope+yarn", "kerple-log", "fire")
SECONDARY = ("rope",)
REGIONS = ("within", "beyond")


def seed_values(exp: Path, runs: list, factor: str) -> dict:
    """``(method, task, metric, length) -> {seed: cell mean}`` from every model's evaluation summary
    (``eval/<run>/summary.json``); ``rope+yarn`` is stored under that name (its factor dropped)."""
    out: dict = {}
    for run in runs:
        path = exp / "eval" / run.name / "summary.json"
        if not path.is_file():
            continue
        for task, data in json.loads(path.read_text())["tasks"].items():
            for method, cells in data["cells"].items():
                name = "rope+yarn" if method == f"rope+yarn:factor={factor}" else method
                for length, cell in cells.items():
                    for metric, value in cell.items():
                        if isinstance(value, int | float) and not isinstance(value, bool):
                            out.setdefault((name, task, metric, int(length)), {})[run.seed] = float(value)
    return out


def region_values(values: Mapping, method: str, task: str, metric: str, lengths: list[int]) -> dict[int, float]:
    """Per seed: the mean of its cell values over ``lengths`` (seeds missing a length are left out)."""
    cells = [values.get((method, task, metric, n), {}) for n in lengths]
    if not lengths or not all(cells):
        return {}
    seeds = set.intersection(*(set(c) for c in cells))
    return {s: sum(c[s] for c in cells) / len(cells) for s in sorted(seeds)}


def comparisons(
    values: Mapping, train_len: int, lengths: Mapping[str, list[int]], against: tuple[str, ...]
) -> list[dict]:
    """``hope`` minus each of ``against`` on every task metric and region, one Holm family."""
    cells, keys = {}, []
    for other in against:
        for task, metric, higher in METRICS:
            for region in REGIONS:
                chosen = [n for n in lengths.get(task, []) if (n <= train_len) == (region == "within")]
                a = region_values(values, "hope", task, metric, chosen)
                b = region_values(values, other, task, metric, chosen)
                if not a or not b:
                    continue
                key = (other, task, region)
                cells[key] = (paired(a, b), higher, differences(a, b)[0], chosen, a, b)
                keys.append(key)
    calls = family({k: cells[k][0] for k in keys}, lower_is_better={k: not cells[k][1] for k in keys},
                   unit_diffs={k: cells[k][2] for k in keys})  # fmt: skip
    rows = []
    for key in keys:
        diff, higher, per_seed, chosen, a, b = cells[key]
        rows.append({"against": key[0], "task": key[1], "metric": _metric(key[1]), "region": key[2],
                     "lengths": chosen, "seeds": sorted(set(a) & set(b)), "per_seed": per_seed,
                     "hope": sum(a.values()) / len(a), "other": sum(b.values()) / len(b),
                     "diff": {"mean": diff.mean, "lo": diff.lo, "hi": diff.hi, "n": diff.n, "p": diff.p},
                     "adjusted_p": calls[key].adjusted_p, "call": calls[key].call,
                     "detectable": detectable_from(per_seed), "higher_is_better": higher})  # fmt: skip
    return rows


def _metric(task: str) -> str:
    return next(metric for t, metric, _ in METRICS if t == task)


def section(primary: list[dict], secondary: list[dict]) -> list[str]:
    """Markdown: the primary table, then the secondary one."""
    lines = [
        "## Primary comparisons (stated before the runs)",
        "",
        "`hope` minus each alternative; a seed's value is its model's mean over the region's lengths; paired by "
        "training seed (k = seeds both were trained with), 95 % t interval with k - 1 df, Holm-adjusted over the "
        "table; bold = better/worse for `hope` by that rule. Rates in points, loss in nats. *detectable*: the "
        "smallest difference this many seeds would detect with 80 % power, from the spread measured.",
        "",
    ]
    for title, rows in (("Primary", primary), ("Secondary: `hope` vs plain `rope`", secondary)):
        if not rows:
            continue
        lines += [f"**{title}**", "", "| vs | task (metric) | region | k | hope | other | hope - other [95 %] | "
                  "Holm p | call | detectable |", "|---|---|---|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip
        for r in rows:
            scale, digits = (1, 3) if r["metric"] == "loss" else (100, 1)
            d = r["diff"]
            interval = "-" if d["n"] < 2 else f"[{scale * d['lo']:+.{digits}f}, {scale * d['hi']:+.{digits}f}]"
            call = r["call"]
            if call in ("better", "worse"):
                call = f"**{call}**"
            p = "-" if r["adjusted_p"] is None else f"{r['adjusted_p']:.2g}"
            detect = "-" if r["detectable"] is None else f"{scale * r['detectable']:.{digits}f}"
            lines.append(
                f"| `{r['against']}` | {r['task']} ({r['metric']}) | {r['region']} L | {d['n']} | "
                f"{scale * r['hope']:.{digits}f} | {scale * r['other']:.{digits}f} | "
                f"{scale * d['mean']:+.{digits}f} {interval} | {p} | {call} | {detect} |"
            )
        lines.append("")
    return lines
