"""PNG plots of ``ropelab analyze``; every subject side by side (matplotlib, Agg backend).

* ``pattern.png`` -- mean last-query logit vs key position, one column per subject, one row per
  length (Figures 2, 6, 8); keys at distance >= L shaded;
* ``pattern_layers.png`` -- the same per layer (dark = first layer, light = last);
* ``components.png`` -- Eq. 4 components vs key position (activated red, lower blue, high grey)
  and, below, the logit pattern with the summed activated components (Figure 3a);
* ``vaf.png`` -- VAF of every component, bars coloured by band, hatched where the method makes
  the component position-independent (Figures 3b, 7);
* ``vaf_training.png`` -- VAF per component over training checkpoints (``--checkpoints all``);
* ``ood.png`` -- first-layer logits vs distance beyond L against the in-range band, and the OOD
  score of every layer (Figure 3c);
* ``hierarchy_<subject>.png`` -- which level each frequency reads, and the attention map with the
  code's segments drawn over it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ropelab.reporting.common import outside_legend

BAND_COLORS = {"high": "#9a9a9a", "activated": "#d62728", "lower": "#1f77b4"}
BAND_LABELS = {
    "high": "high (period <= L)",
    "activated": "activated (pi/L < theta < 2pi/L)",
    "lower": "lower (theta <= pi/L)",
}


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "subject"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, written: list[str]) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    written.append(str(path))


def _with(data: dict, key: str) -> list[dict]:
    """Subjects whose ``key`` analysis ran (not skipped)."""
    return [s for s in data["subjects"] if s.get(key) and not (isinstance(s[key], dict) and "skipped" in s[key])]


def _decorate(ax, title: str, xlabel: str, ylabel: str, *, size: int = 8, grid: str = "both", legend: int = 6) -> None:
    """A panel's title, axis labels, light grid and legend: every panel of these figures has them."""
    ax.set_title(title, fontsize=size)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis=grid)
    ax.legend(fontsize=legend)


def make_plots(out: Path, data: dict) -> list[str]:
    written: list[str] = []
    plt = _plt()
    plt.rcParams.update({"font.size": 8})
    _pattern(out, _with(data, "pattern"), written)
    rotary = _with(data, "components")
    _components(out, rotary, written)
    _vaf(out, rotary, written)
    _vaf_training(out, [s for s in rotary if len(s["components"].get("series", [])) > 1], written)
    _ood(out, _with(data, "ood"), written)
    for subject in _with(data, "hierarchy"):
        _hierarchy(out, subject, written)
    return written


def _grid(rows: int, cols: int, width: float = 3.6, height: float = 2.6):
    plt = _plt()
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.5), squeeze=False)
    fig.subplots_adjust(hspace=0.6, wspace=0.3)
    return fig, axes


def _shade_beyond(ax, length: int, train_len: int, first_key: int) -> None:
    """Shade keys whose distance from the last query is >= the train length."""
    last = length - 1 - train_len
    if last >= first_key:
        ax.axvspan(first_key, last, color="#f4c7c3", alpha=0.5, lw=0, label="distance >= L")


def _pattern(out: Path, subjects: list[dict], written: list[str]) -> None:
    if not subjects:
        return
    rows = max(len(s["pattern"]) for s in subjects)
    fig, axes = _grid(rows, len(subjects))
    for col, subject in enumerate(subjects):
        train_len = subject["model"]["train_len"]
        for row in range(rows):
            ax = axes[row][col]
            if row >= len(subject["pattern"]):
                ax.axis("off")
                continue
            entry = subject["pattern"][row]
            length, first = entry["length"], entry["first_key"]
            x = range(first, length)
            _shade_beyond(ax, length, train_len, first)
            ax.plot(x, entry["mean"], color="black", lw=1)
            shape = entry["shape"]
            ax.set_title(
                f"{subject['label']}: T={length} ({length / train_len:g}L)\n"
                f"{'U-shape' if shape['u_shape'] else 'no U-shape'} (ends - middle {shape['u_depth']:+.3g})",
                fontsize=8,
            )
            ax.set_xlabel("key position")
            ax.set_ylabel("logit (mean over layers, heads)")
            ax.grid(alpha=0.3)
            if length > train_len:
                ax.legend(fontsize=6, loc="best")
    fig.suptitle("Position-related attention pattern: last query of [BOS] t t ... t (key 0 left out)", y=1.0)
    _save(fig, out / "pattern.png", written)

    plt = _plt()
    fig, axes = _grid(len(subjects), rows)
    for row, subject in enumerate(subjects):
        for col in range(rows):
            ax = axes[row][col]
            if col >= len(subject["pattern"]):
                ax.axis("off")
                continue
            entry = subject["pattern"][col]
            x = range(entry["first_key"], entry["length"])
            layers = entry["layers"]
            cmap = plt.get_cmap("viridis")
            for i, (layer, curve) in enumerate(zip(layers, entry["per_layer"])):
                ax.plot(x, curve, color=cmap(i / max(1, len(layers) - 1)), lw=0.7, label=f"layer {layer}")
            _shade_beyond(ax, entry["length"], subject["model"]["train_len"], entry["first_key"])
            ax.set_title(f"{subject['label']}: T={entry['length']}, per layer", fontsize=8)
            ax.set_xlabel("key position")
            ax.set_ylabel("logit (mean over heads)")
            ax.grid(alpha=0.3)
            if len(layers) <= 8:
                ax.legend(fontsize=5, ncol=2)
    fig.suptitle("Attention pattern per layer (dark: first layer, yellow: last)", y=1.0)
    _save(fig, out / "pattern_layers.png", written)


def _components(out: Path, subjects: list[dict], written: list[str]) -> None:
    if not subjects:
        return
    plt = _plt()
    fig, axes = plt.subplots(2, len(subjects), figsize=(4.2 * len(subjects), 5.6), squeeze=False)
    fig.subplots_adjust(hspace=0.45, wspace=0.3)
    for col, subject in enumerate(subjects):
        comp = subject["components"]
        x = range(comp["first_key"], comp["length"])
        top, bottom = axes[0][col], axes[1][col]
        order = sorted(range(len(comp["band"])), key=lambda j: comp["band"][j] != "high")  # high drawn first
        seen = set()
        for j in order:
            band = comp["band"][j]
            label = BAND_LABELS[band] if band not in seen else None
            seen.add(band)
            top.plot(
                x,
                comp["curves"]["components"][j],
                color=BAND_COLORS[band],
                lw=0.4 if band == "high" else 1.2,
                alpha=0.45 if band == "high" else 1.0,
                label=label,
            )
        _decorate(
            top,
            f"{subject['label']}: components C_j (T={comp['length']})",
            "key position",
            "C_j (mean over layers, heads)",
        )
        bottom.plot(x, comp["curves"]["logits"], color="black", lw=1.2, label="logit (all components)")
        bottom.plot(x, comp["curves"]["activated_sum"], color=BAND_COLORS["activated"], lw=1.2, label="activated sum")
        bottom.plot(x, comp["curves"]["lower_sum"], color=BAND_COLORS["lower"], lw=1, ls="--", label="lower sum")
        bands = comp["vaf_bands"]
        title = (f"VAF of summed bands: activated {100 * bands['activated']:.1f}%, "
                 f"lower {100 * bands['lower']:.1f}%, high {100 * bands['high']:.1f}%")  # fmt: skip
        _decorate(bottom, title, "key position", "logit", size=7)
    fig.suptitle("RoPE component decomposition (Eq. 4)", y=1.0)
    _save(fig, out / "components.png", written)


def _vaf(out: Path, subjects: list[dict], written: list[str]) -> None:
    if not subjects:
        return
    fig, axes = _grid(1, len(subjects), width=4.2, height=3.0)
    for col, subject in enumerate(subjects):
        ax, comp = axes[0][col], subject["components"]
        values = [100 * v for v in comp["vaf"]]
        roles = subject["model"].get("roles") or ["rotated"] * len(values)
        seen = set()
        for j, value in enumerate(values):
            band = comp["band"][j]
            ax.bar(
                j,
                value,
                color=BAND_COLORS[band],
                hatch="///" if roles[j] == "position-independent" else None,
                edgecolor="white" if roles[j] == "position-independent" else None,
                label=BAND_LABELS[band] if band not in seen else None,
            )
            seen.add(band)
        low = min(values)
        ax.set_ylim(max(-100.0, min(0.0, low * 1.1)), max(5.0, max(values) * 1.15))
        ax.axhline(0, color="black", lw=0.5)
        activated = ", ".join(f"j={a['index']}: {100 * a['vaf']:.1f}%" for a in comp["activated"]) or "none"
        _decorate(
            ax,
            f"{subject['label']} (T={comp['length']})\nactivated: {activated}",
            "frequency index j (high -> low frequency)",
            "VAF (%)",
            size=7,
            grid="y",
        )
    fig.suptitle("Variance accounted for by each component (Eq. 5); hatched: position-independent", y=1.02)
    _save(fig, out / "vaf.png", written)


def _vaf_training(out: Path, subjects: list[dict], written: list[str]) -> None:
    if not subjects:
        return
    from matplotlib.ticker import MaxNLocator

    fig, axes = _grid(1, len(subjects), width=4.2, height=3.0)
    for col, subject in enumerate(subjects):
        ax, comp = axes[0][col], subject["components"]
        series = comp["series"]
        steps = [entry["step"] if entry["step"] is not None else i for i, entry in enumerate(series)]
        seen = set()
        order = sorted(range(len(comp["band"])), key=lambda j: comp["band"][j] != "high")
        for j in order:
            band = comp["band"][j]
            ax.plot(
                steps,
                [100 * entry["vaf"][j] for entry in series],
                color=BAND_COLORS[band],
                lw=0.6 if band == "high" else 1.3,
                marker="o" if band == "activated" else None,
                ms=3,
                label=BAND_LABELS[band] if band not in seen else None,
            )
            seen.add(band)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{subject['label']}: VAF over training (T={comp['length']})", fontsize=8)
        ax.set_xlabel("training step")
        ax.set_ylabel("VAF (%)")
        low = min(100 * v for entry in series for v in entry["vaf"])
        ax.set_ylim(bottom=max(-100.0, min(0.0, low * 1.1)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("Component VAF across checkpoints (Figure 3b)", y=1.02)
    _save(fig, out / "vaf_training.png", written)


def _ood(out: Path, subjects: list[dict], written: list[str]) -> None:
    if not subjects:
        return
    plt = _plt()
    cols = len(subjects)
    fig = plt.figure(figsize=(4.2 * max(cols, 2), 6.2))
    grid = fig.add_gridspec(2, cols, hspace=0.5, wspace=0.3)
    for col, subject in enumerate(subjects):
        ood = subject["ood"]
        ax = fig.add_subplot(grid[0, col])
        train_len = ood["train_len"]
        inside, curve = ood["in_range_curve"], ood["curve"]
        lo, hi = min(inside), max(inside)
        ax.axhspan(lo, hi, color="#c7e9c0", alpha=0.7, lw=0, label="in-range min..max")
        ax.plot(range(len(curve)), curve, color="black", lw=0.8, label=f"T={ood['length']}")
        out_x = [d for d in range(train_len, len(curve)) if not lo <= curve[d] <= hi]
        if out_x:
            ax.scatter(out_x, [curve[d] for d in out_x], s=2, color="#d62728", label="beyond L, outside band", zorder=3)
        ax.axvline(train_len, color="grey", ls=":", lw=1)
        title = (f"{subject['label']}: layer {ood['first_layer']}: OOD {100 * ood['ood_fraction'][0]:.1f}%, "
                 f"KS {ood['ood_ks'][0]:.2f}\n(curve: mean over heads; scores: per head)")  # fmt: skip
        _decorate(ax, title, "distance from the last query (m - n)", "logit (mean over heads)")
    ax = fig.add_subplot(grid[1, :])
    width = 0.8 / cols
    for col, subject in enumerate(subjects):
        ood = subject["ood"]
        xs = [i + (col - (cols - 1) / 2) * width for i in range(len(ood["layers"]))]
        ax.bar(xs, [100 * v for v in ood["ood_fraction"]], width=width, label=subject["label"])
    layers = subjects[0]["ood"]["layers"]
    step = max(1, math.ceil(len(layers) / 30))
    ax.set_xticks(range(0, len(layers), step), [str(layer) for layer in layers[::step]])
    ax.set_xlabel("layer")
    ax.set_ylabel("beyond-L logits outside the in-range band (%)")
    ax.set_title("OOD score per layer (probe, last query, keys at distance >= L)", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.suptitle("Extrapolation OOD check (Figure 3c)", y=0.98)
    _save(fig, out / "ood.png", written)


def _hierarchy(out: Path, subject: dict, written: list[str]) -> None:
    import numpy as np

    plt = _plt()
    h = subject["hierarchy"]
    fig = plt.figure(figsize=(11, 6.2))
    grid = fig.add_gridspec(1, 2, width_ratios=[1, 3.2], wspace=0.4)
    ax = fig.add_subplot(grid[0, 0])
    levels = h["frequency_level"]
    names = h["level_names"]
    bands = subject["model"]["bands"]
    colors = plt.get_cmap("Set2")
    roles = h.get("roles") or [None] * len(levels)
    for j, level in enumerate(levels):
        ax.barh(j, 1, color=colors(level), edgecolor="white")
        if roles[j] == "position-independent":
            ax.text(0.5, j, "pos.-indep.", ha="center", va="center", fontsize=5)
    for band in ("activated", "lower"):
        for j in bands[band]:
            ax.barh(j, 0.12, left=1.0, color=BAND_COLORS[band])
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors(i)) for i in range(max(levels) + 1)]
    handles += [plt.Rectangle((0, 0), 1, 1, color=BAND_COLORS[b]) for b in ("activated", "lower")]
    outside_legend(ax, handles=handles, labels=[*names[: max(levels) + 1], "activated band", "lower band"], fontsize=6)
    ax.set_xlim(0, 1.15)
    ax.set_ylim(len(levels) - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_ylabel("frequency index j (high -> low)")
    ax.set_title(f"{h['method']}:\nposition level read by frequency j", fontsize=8)

    ax = fig.add_subplot(grid[0, 1])
    attention = np.array(h["attention_map"], dtype=float)
    length = h["length"]
    image = ax.imshow(
        np.log10(np.maximum(attention, 1e-6)), cmap="magma", extent=(0, length, length, 0), vmin=-4, vmax=0
    )
    fig.colorbar(image, ax=ax, shrink=0.8, label="log10 attention (mean over heads, layers)")
    starts = [s["start_token"] for s in h["segments"]][1:]
    for start in starts:
        ax.axhline(start, color="cyan", lw=0.4, alpha=0.7)
        ax.axvline(start, color="cyan", lw=0.4, alpha=0.7)
    big = [s for s in h["segments"] if s["end_token"] - s["start_token"] >= length / 25]
    ax.set_yticks(
        [(s["start_token"] + s["end_token"]) / 2 for s in big],
        [f"{s['kind'][:1]}:{s['name'] or '-'}"[:18] for s in big],
        fontsize=5,
    )
    if h.get("window") and h["window"] < length:
        ax.plot([0, length - h["window"]], [h["window"], length], color="white", ls="--", lw=0.6)
    mass = h["same_segment_mass"]
    ax.set_title(
        f"{subject['label']}: {length} tokens of {Path(h['source']).name if h.get('source') else 'code'}; "
        f"{len(h['segments'])} segments (cyan); attention on own segment "
        f"{100 * sum(mass) / len(mass):.0f}% (uniform {100 * h['same_segment_uniform']:.0f}%)",
        fontsize=7,
    )
    ax.set_xlabel("key token")
    ax.set_ylabel("query token (segments labelled kind:name)")
    _save(fig, out / f"hierarchy_{slug(subject['label'])}.png", written)
