"""The ``context`` task's report: does a method use context beyond the train length ``L``, and
what does it cost inside it? (docs/evaluation.md)

The unit is the **document** (a project of :mod:`ropelab.eval.projects`). Per record (method x
document) :func:`document_rows` keeps the document's means: loss inside and beyond ``L``, loss on
the far-dependent tokens, the far/near needle and symbol rates, and loss per position bucket.
:func:`summarise_rows` compares every method with the ``window`` reference by the paired
difference per document: a t interval with n - 1 degrees of freedom, Holm-adjusted over every
comparison of the overview table (every method x metric x length), and a call only by that rule
(:mod:`ropelab.eval.stats`). Records of two methods pair only when they were measured on the same
sample (``sample_sha256``). The position-bucket table is its own family. Controls (near needles and
symbols, where the window must succeed) are shown, not tested.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from scipy import stats as _st

from ropelab.eval.runner import REFERENCE
from ropelab.eval.stats import block_means, detectable_from, differences, family, interval, paired, wilson
from ropelab.reporting.common import method_style, methods_order, save_figure, series_labels, tokens_text

#: metric -> (label, lower is better, identical below this per-document difference, tested)
METRICS = {
    "loss_inside": ("loss inside L", True, 2e-4, True),
    "loss_beyond": ("loss beyond L", True, 2e-4, True),
    "loss_far": ("loss on far-dependent tokens", True, 2e-4, True),
    "needle_far": ("needles beyond L (%)", False, 0.0, True),
    "symbol_far": ("symbols beyond L (%)", False, 0.0, True),
    "probe_far": ("symbol probes beyond L (%)", False, 0.0, True),
    "needle_near": ("needles within L/2 (control, %)", False, 0.0, False),
    "symbol_near": ("symbols within L/2 (control, %)", False, 0.0, False),
}
RATE_METRICS = ("needle_far", "symbol_far", "probe_far", "needle_near", "symbol_near")
#: position buckets per train length
BUCKETS_PER_L = 4


def document_rows(records: list[dict], train_len: int) -> list[dict]:
    """One compact row per record: the document's means (no per-token losses)."""
    rows = []
    size = max(1, train_len // BUCKETS_PER_L)
    for r in records:
        losses = r["token_losses"]
        metrics = r["metrics"]
        rows.append(
            {
                "method": r["method"],
                "length": r["length"],
                "index": r["index"],
                "document": r.get("document", "?"),
                "language": r.get("language", "?"),
                "era": r.get("era", "old"),
                "sample_sha256": r.get("sample_sha256"),
                "seconds": r.get("seconds", 0.0),
                "metrics": {k: metrics[k] for k in METRICS if k in metrics},
                "counts": {
                    "far_tokens": r.get("far_tokens", 0),
                    **{k: metrics.get(f"{k}_n", 0) for k in RATE_METRICS},
                    **{f"{k}_hits": round(metrics.get(k, 0) * metrics.get(f"{k}_n", 0)) for k in RATE_METRICS},
                },
                "buckets": block_means(losses, 0, len(losses), size),
                "unigram_loss": r.get("unigram_loss"),
            }
        )
    return rows


def summarise_context(config: dict, name: str, records: list[dict]) -> dict:
    return summarise_rows(config, document_rows(records, config["train_len"]))


def summarise_rows(config: dict, rows: list[dict]) -> dict:
    train_len = config["train_len"]
    by_length: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_length[row["length"]].append(row)
    lengths = {str(n): _length_summary(config, items) for n, items in sorted(by_length.items())}
    comparisons = {
        (length, m, metric): cell
        for length, s in lengths.items()
        for m, cells in s["diffs"].items()
        for metric, cell in cells.items()
        if (METRICS[metric][3] and int(length) > train_len) or metric == "loss_inside"
    }
    verdicts = family(
        {k: v["interval"] for k, v in comparisons.items()},
        lower_is_better={k: METRICS[k[2]][1] for k in comparisons},
        atol={k: METRICS[k[2]][2] for k in comparisons},
        unit_diffs={k: v["units"] for k, v in comparisons.items()},
    )
    for (length, m, metric), verdict in verdicts.items():
        cell = lengths[length]["diffs"][m][metric]
        cell["p_holm"], cell["call"] = verdict.adjusted_p, verdict.call
        if lengths[length]["floor"] and verdict.call in ("better", "worse"):
            cell["call"] = (
                "model at floor"  # a model no better than a unigram one: its differences are not about context
            )
    for s in lengths.values():
        for cells in s["diffs"].values():
            for cell in cells.values():
                cell["interval"] = _interval_dict(cell["interval"])
    return {"metric": "loss_beyond", "higher_is_better": False, "bucket": max(1, train_len // BUCKETS_PER_L),
            "family": len(verdicts), "lengths": lengths}  # fmt: skip


def _interval_dict(iv) -> dict:
    return {"mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": iv.n, "p": iv.p, "sd": iv.sd}


def _length_summary(config: dict, items: list[dict]) -> dict:
    methods = methods_order(config, {r["method"] for r in items})
    docs = sorted({(r["index"], r["document"], r["language"], r["era"]) for r in items})
    per = {m: {r["index"]: r for r in items if r["method"] == m} for m in methods}
    reference = per.get(REFERENCE, {})
    values = {m: {metric: {i: r["metrics"].get(metric) for i, r in rows.items()} for metric in METRICS}
              for m, rows in per.items()}  # fmt: skip
    rows_summary, diffs, mismatched = {}, {}, set()
    for m in methods:
        rows_summary[m] = {}
        for metric in METRICS:
            iv = interval([v for v in values[m][metric].values() if v is not None])
            pooled = _pooled(per[m].values(), metric) if metric in RATE_METRICS else None
            rows_summary[m][metric] = {**_interval_dict(iv), "pooled": pooled}
        if m == REFERENCE or not reference:
            continue
        same = {i for i, r in per[m].items() if i in reference and r["sample_sha256"] == reference[i]["sample_sha256"]}
        mismatched |= {per[m][i]["document"] for i in per[m] if i in reference and i not in same}
        diffs[m] = {}
        for metric in METRICS:
            a = {i: values[m][metric][i] for i in same}
            b = {i: values[REFERENCE][metric][i] for i in same}
            units, _ = differences(a, b)
            if not units:
                continue
            diffs[m][metric] = {"interval": paired(a, b), "units": units, "detectable": detectable_from(units)}
    return {
        "documents": [{"index": i, "document": d, "language": lang, "era": e} for i, d, lang, e in docs],
        "methods": methods,
        "rows": rows_summary,
        "diffs": diffs,
        "mismatched": sorted(mismatched),
        "buckets": _buckets(config, per, methods),
        "seconds": {m: sum(r["seconds"] for r in per[m].values()) for m in methods},
        "eras": _eras(per.get(REFERENCE) or per[methods[0]]),
        "floor": _floor(per.get(REFERENCE) or per[methods[0]]),
    }


def _floor(rows: dict) -> dict | None:
    """The reference's loss inside L against a unigram model fitted to each document: a model that
    does no better uses no context, and no difference between methods is about context then."""
    pairs = [(r["metrics"].get("loss_inside"), r.get("unigram_loss")) for r in rows.values()]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None and not math.isnan(b)]
    if not pairs:
        return None
    loss, unigram = (sum(x) / len(pairs) for x in zip(*pairs))
    return {"loss_inside": loss, "unigram": unigram} if loss >= unigram else None


def _pooled(rows, metric: str) -> dict:
    k = sum(r["counts"].get(f"{metric}_hits", 0) for r in rows)
    n = sum(r["counts"].get(metric, 0) for r in rows)
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "lo": lo, "hi": hi}


def _buckets(config: dict, per: dict, methods: list[str]) -> dict:
    """Mean loss per position bucket over documents, and each method's paired difference to the
    window per bucket (its own Holm family)."""
    size = max(1, config["train_len"] // BUCKETS_PER_L)
    count = min((len(r["buckets"]) for rows in per.values() for r in rows.values()), default=0)
    out: dict = {"size": size, "starts": [j * size for j in range(count)], "mean": {}, "diff": {}}
    for m in methods:
        out["mean"][m] = [interval([r["buckets"][j] for r in per[m].values()]).mean for j in range(count)]
    reference = per.get(REFERENCE)
    if not reference:
        return out
    comparisons = {}
    for m in methods:
        if m == REFERENCE:
            continue
        for j in range(count):
            a = {i: r["buckets"][j] for i, r in per[m].items() if i in reference}
            b = {i: reference[i]["buckets"][j] for i in a}
            comparisons[(m, j)] = (paired(a, b), differences(a, b)[0])
    verdicts = family({k: v[0] for k, v in comparisons.items()}, lower_is_better=True, atol=2e-4,
                      unit_diffs={k: v[1] for k, v in comparisons.items()})  # fmt: skip
    for m in methods:
        if m != REFERENCE:
            out["diff"][m] = [
                {**_interval_dict(verdicts[(m, j)].diff), "call": verdicts[(m, j)].call} for j in range(count)
            ]
    return out


def _eras(rows: dict) -> dict:
    """In-length loss per document by era (old: stdlib/JDK, surely in the training data; new:
    packages first released after the model's data was collected), and Welch's t test between them."""
    groups = {era: [(r["document"], r["metrics"].get("loss_inside")) for r in rows.values() if r["era"] == era]
              for era in ("old", "new")}  # fmt: skip
    out = {era: {**_interval_dict(interval([v for _, v in g])), "documents": dict(g)} for era, g in groups.items()}
    old, new = [v for _, v in groups["old"]], [v for _, v in groups["new"]]
    if len(old) >= 2 and len(new) >= 2:
        test = _st.ttest_ind(new, old, equal_var=False)
        out["welch"] = {"difference": sum(new) / len(new) - sum(old) / len(old), "p": float(test.pvalue)}
    return out


# -- rendering ----------------------------------------------------------------------------------------


def _fmt(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.0f}" if metric in RATE_METRICS else f"{value:.3f}"


def _span(metric: str, cell: dict, signed: bool = False) -> str:
    if not cell or not cell.get("n"):
        return "-"
    scale = 100 if metric in RATE_METRICS else 1
    digits = 0 if metric in RATE_METRICS else 3
    sign = "+" if signed else ""
    mean = f"{scale * cell['mean']:{sign}.{digits}f}"
    if cell["n"] < 2 or cell["lo"] is None or math.isnan(cell["lo"]):
        return mean
    lo, hi = cell["lo"], cell["hi"]
    if metric in RATE_METRICS:  # a t interval of a rate may pass its bounds: shown clipped to them
        lo, hi = max(lo, -1.0 if signed else 0.0), min(hi, 1.0)
    return f"{mean} [{scale * lo:{sign}.{digits}f}, {scale * hi:{sign}.{digits}f}]"


def _row_cell(metric: str, cell: dict) -> str:
    text = _span(metric, cell)
    pooled = cell.get("pooled")
    if pooled and pooled["n"]:
        text += f" ({pooled['k']}/{pooled['n']})"
    return text


def _diff_cell(metric: str, cell: dict | None) -> str:
    if not cell:
        return "-"
    text = _span(metric, cell["interval"], signed=True)
    called = cell.get("call")
    if called in ("better", "worse"):
        return f"**{text} {called}**"
    return f"{text} {called}" if called in ("identical", "n too small", "model at floor") else text


def render_context(config: dict, name: str, task: dict) -> list[str]:
    lines = []
    split = "" if name == "context" else ", development projects"
    for length, s in task["lengths"].items():
        lines += _overview(config, int(length), s, task["family"], split)
        lines += _verdicts(config, int(length), s)
        lines += _detectable(s)
        lines += _bucket_table(config, s)
        lines += _era_table(s)
    return lines


def _overview(config: dict, length: int, s: dict, family_size: int, split: str = "") -> list[str]:
    train_len = config["train_len"]
    docs = s["documents"]
    languages = defaultdict(int)
    for d in docs:
        languages[d["language"]] += 1
    beyond = length > train_len
    tested = [m for m in METRICS if METRICS[m][3] and (beyond or m == "loss_inside")]
    shown = tested + ([m for m in METRICS if not METRICS[m][3]] if beyond else [])
    lines = [
        f"## Long-context use at {tokens_text(length)} tokens ({length / train_len:.3g}x the train length){split}",
        "",
        f"**{len(docs)} document{'s' if len(docs) != 1 else ''}** "
        f"({', '.join(f'{n} {lang}' for lang, n in sorted(languages.items()))}): "
        + ", ".join(f"`{d['document']}`" for d in docs)
        + ". Each cell: the mean over documents [95 % t interval, n - 1 df]; rates also pooled (hits/asked). "
        f"Δ: the paired difference to the `{REFERENCE}` reference per document (the model's own method with attention "
        f"limited to the previous {tokens_text(train_len)} tokens plus 4 sink tokens, in one pass). **better** / "
        f"**worse** only when the Holm-adjusted p < 0.05 over the {family_size} comparisons of the run's overview "
        "tables; *identical*: every per-document difference at numerical precision; *n too small*: fewer than 3 "
        "documents.",
        "",
    ]
    if not beyond:
        lines += ["Every position lies within the train length: no row can differ from the reference beyond it.", ""]
    if s.get("floor"):
        lines += [
            f"**The model is at floor:** the reference's loss inside L ({s['floor']['loss_inside']:.3f}) is no lower "
            f"than a unigram model fitted to each document ({s['floor']['unigram']:.3f}), so it uses no context and "
            "no difference below is about context: no call is made (*model at floor*).",
            "",
        ]
    if s["mismatched"]:
        lines += [f"Left out of the pairs (measured on different samples): {', '.join(s['mismatched'])}.", ""]
    header = "| method | " + " | ".join(METRICS[m][0] for m in shown) + " | seconds |"
    lines += [header, "|---|" + "---:|" * (len(shown) + 1)]
    for m in s["methods"]:
        label = f"*{m}* (reference)" if m == REFERENCE else f"`{m}`"
        cells = [_row_cell(metric, s["rows"][m].get(metric, {})) for metric in shown]  # an older summary may lack one
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {s['seconds'].get(m, 0):.0f} |")
    lines += ["", "Paired difference to the window reference (method minus window):", ""]
    lines += ["| method | " + " | ".join(f"Δ {METRICS[m][0]}" for m in tested) + " |", "|---|" + "---:|" * len(tested)]
    for m in s["methods"]:
        if m != REFERENCE:
            lines.append(f"| `{m}` | " + " | ".join(_diff_cell(metric, s["diffs"].get(m, {}).get(metric))
                                                     for metric in tested) + " |")  # fmt: skip
    return [*lines, ""]


def _verdicts(config: dict, length: int, s: dict) -> list[str]:
    if length <= config["train_len"]:
        return []

    def named(metric: str, word: str) -> str:
        found = [f"`{m}`" for m, cells in s["diffs"].items() if cells.get(metric, {}).get("call") == word]
        return ", ".join(found) if found else "none"

    return [
        f"- Uses context beyond L (lower loss beyond L than the window): {named('loss_beyond', 'better')}; "
        f"on far-dependent tokens: {named('loss_far', 'better')}; finds more needles beyond L: "
        f"{named('needle_far', 'better')}; picks more symbols beyond L: {named('symbol_far', 'better')} "
        f"(probes: {named('probe_far', 'better')}).",
        f"- Worse than the window beyond L: {named('loss_beyond', 'worse')}.",
        f"- Costs inside L (higher loss inside L than the window): {named('loss_inside', 'worse')}.",
        "",
    ]


def _detectable(s: dict) -> list[str]:
    """The smallest difference each comparison could detect (80 % power, two-sided 0.05, unadjusted)."""
    metrics = [m for m in ("loss_beyond", "loss_far", "needle_far", "symbol_far", "probe_far") if any(
        (cells.get(m) or {}).get("detectable") for cells in s["diffs"].values())]  # fmt: skip
    if not metrics:
        return []
    lines = [
        "Smallest difference each comparison detects with 80 % power (paired t, two-sided 0.05 before Holm; from "
        "the per-document spread measured here): a *within noise* smaller than this is absence of evidence.",
        "",
        "| method | " + " | ".join(METRICS[m][0] for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for m, cells in s["diffs"].items():
        row = [_fmt(metric, (cells.get(metric) or {}).get("detectable")) for metric in metrics]
        lines.append(f"| `{m}` | " + " | ".join(row) + " |")
    return [*lines, ""]


def _bucket_table(config: dict, s: dict) -> list[str]:
    b = s["buckets"]
    if not b["diff"]:
        return []
    heads = [f"{tokens_text(a)}-{tokens_text(a + b['size'])}" for a in b["starts"]]
    lines = [
        f"Loss by position ({tokens_text(b['size'])}-token buckets), minus the window per document [95 % t "
        "interval]; bold: Holm-adjusted p < 0.05 within this table:",
        "",
        "| method | " + " | ".join(heads) + " |",
        "|---|" + "---:|" * len(heads),
    ]
    for m, cells in b["diff"].items():
        row = []
        for cell in cells:
            text = _span("loss", cell, signed=True)
            row.append(f"**{text}**" if cell["call"] in ("better", "worse") else text)
        lines.append(f"| `{m}` | " + " | ".join(row) + " |")
    return [*lines, ""]


def _era_table(s: dict) -> list[str]:
    eras = s["eras"]
    if not eras.get("new", {}).get("n"):
        return []
    lines = [
        "Memorisation check: loss inside L of the reference per document, code surely in the training data "
        "(stdlib, JDK) vs packages first released after the model's data was collected:",
        "",
        "| era | documents | loss inside L |",
        "|---|---:|---:|",
    ]
    for era in ("old", "new"):
        lines.append(f"| {era} | {eras[era]['n']} | {_span('loss', eras[era])} |")
    if "welch" in eras:
        lines += ["", f"New minus old: {eras['welch']['difference']:+.3f} (Welch t test p = {eras['welch']['p']:.2g})."]
    return [*lines, ""]


# -- plots ------------------------------------------------------------------------------------------


def context_plots(run: Path, config: dict, name: str, task: dict, records: list[dict]) -> list[str]:
    written = []
    for length, s in task["lengths"].items():
        suffix = "" if len(task["lengths"]) == 1 else f"_{length}"
        written.append(_overview_figure(run / f"context_overview{suffix}.png", config, int(length), s))
    return written


def _overview_figure(path: Path, config: dict, length: int, s: dict) -> str:
    import matplotlib.pyplot as plt

    train_len = config["train_len"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.4, 1]})
    b = s["buckets"]
    labels = series_labels({m: [c["mean"] for c in cells] for m, cells in b["diff"].items()})
    for i, (m, cells) in enumerate(b["diff"].items()):
        xs = [a + b["size"] / 2 for a in b["starts"]]
        ys = [c["mean"] for c in cells]
        lo = [c["mean"] - c["lo"] if c["n"] > 1 else 0.0 for c in cells]
        hi = [c["hi"] - c["mean"] if c["n"] > 1 else 0.0 for c in cells]
        left.errorbar(xs, ys, yerr=[lo, hi], label=labels[m], capsize=3, **method_style(m, i))
    left.axhline(0, color="black", linewidth=0.8)
    left.axvline(train_len, color="grey", linestyle=":")
    left.set_xlabel("position (tokens)")
    left.set_ylabel("loss minus window (nats)")
    left.set_title("loss per position bucket minus the window (95 % t interval over documents)", fontsize=9)
    if b["diff"]:
        left.legend(fontsize=8)
    metrics = [m for m in ("needle_far", "symbol_far", "probe_far", "needle_near", "symbol_near")
               if any(s["rows"][k].get(m, {}).get("n") for k in s["methods"])]  # fmt: skip
    width = 0.8 / max(1, len(s["methods"]))
    for i, m in enumerate(s["methods"]):
        xs = [j + (i - (len(s["methods"]) - 1) / 2) * width for j in range(len(metrics))]
        cells = [s["rows"][m][metric] for metric in metrics]
        ys = [100 * c["mean"] if c["n"] else 0.0 for c in cells]
        err = [[100 * (c["mean"] - max(c["lo"], 0.0)) if c["n"] > 1 else 0.0 for c in cells],
               [100 * (min(c["hi"], 1.0) - c["mean"]) if c["n"] > 1 else 0.0 for c in cells]]  # fmt: skip
        style = method_style(m, i)
        right.bar(xs, ys, width, yerr=err, capsize=2, label=m, color=style.get("color"),
                  hatch="//" if m == REFERENCE else None, alpha=0.85)  # fmt: skip
    labels = [METRICS[m][0].replace(" (%)", "").replace(" (control", "\n(control") for m in metrics]
    right.set_xticks(range(len(metrics)), labels, fontsize=7)
    right.set_ylim(0, 122)  # room above 100 % for the legend
    right.set_yticks(range(0, 101, 20))
    right.set_ylabel("% correct (mean over documents)")
    right.set_title("found beyond L, and within-L controls (95 % t interval, clipped)", fontsize=9)
    right.legend(fontsize=7, loc="upper center", ncol=len(s["methods"]))
    fig.suptitle(f"{config['model']} at {tokens_text(length)} tokens ({length / train_len:g}x L): "
                 f"{len(s['documents'])} documents", fontsize=10)  # fmt: skip
    return save_figure(fig, path)
