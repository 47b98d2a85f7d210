"""What every report shares: method order, labels for lengths and token counts, plot styles."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ropelab.eval.runner import REFERENCE


def methods_order(config: dict, present: Iterable[str]) -> list[str]:
    """The run's methods in its order, the ``window`` reference last, then any others by name."""
    present = set(present)
    order = [m for m in config["methods"] if m in present]
    if REFERENCE in present:
        order.append(REFERENCE)
    return order + sorted(m for m in present if m not in order)


def length_label(length: int, train_len: int) -> str:
    ratio = length / train_len
    return f"{length // 1024}K ({ratio:.3g}x)" if length % 1024 == 0 else f"{length} ({ratio:.3g}x)"


def tokens_text(n: int) -> str:
    """Token counts as people write them: 8K, 1.5K, 640."""
    n = int(n)
    if n >= 1024 and n % 256 == 0:
        return f"{n / 1024:g}K"
    return str(n)


def method_style(method: str, index: int) -> dict:
    markers = "osD^vP*Xh<>"
    if method == REFERENCE:
        return dict(color="black", linestyle="--", linewidth=1.8, marker="x", markersize=6)
    return dict(marker=markers[index % len(markers)], markersize=5, linewidth=1.4, alpha=0.9)


def series_labels(series: dict[str, Sequence]) -> dict[str, str]:
    """Legend labels of plotted series: a series identical to an earlier one (same points) is
    labelled ``name (= earlier)`` -- its line lies under the earlier one's, and the legend says so."""
    labels, seen = {}, []
    for name, points in series.items():
        key = [tuple(p) if isinstance(p, (list, tuple)) else p for p in points]
        twin = next((other for other, values in seen if values == key), None)
        labels[name] = name if twin is None else f"{name} (= {twin})"
        seen.append((name, key))
    return labels


def outside_legend(ax, **kwargs):
    """The legend beside the axes (upper right, outside), never over the data: save the figure with
    :func:`save_figure` (a tight bounding box keeps it)."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **{"fontsize": 7, **kwargs})


def save_figure(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)
