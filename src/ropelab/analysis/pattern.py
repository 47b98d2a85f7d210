"""Position-related attention pattern (HoPE paper, Section 3.1-3.2, Figures 2, 6 and 8).

The probe's last query against every key: pre-softmax logits averaged over samples, heads and
layers (and per layer), within and beyond the training length. The summary states the pattern's
shape: mean logit over the first 10% of keys (after BOS), the middle 10% (45-55%) and the last 10%
(the nearest keys); ``u_shape`` is true when both ends lie above the middle -- the paper's
"local decay plus attention to the initial tokens" -- and ``u_depth`` is by how much.
"""

from __future__ import annotations

from torch import Tensor

from ropelab.analysis.measure import Measurement


def shape_of(curve: Tensor) -> dict:
    """Mean of the first, middle and last tenth of ``curve`` and whether it is U-shaped."""
    n = curve.numel()
    tenth = max(1, n // 10)
    first = float(curve[:tenth].mean())
    middle_start = max(0, min(n - tenth, (n - tenth) // 2))
    middle = float(curve[middle_start : middle_start + tenth].mean())
    last = float(curve[-tenth:].mean())
    return {
        "first": first,
        "middle": middle,
        "last": last,
        "u_shape": first > middle and last > middle,
        "u_depth": min(first, last) - middle,
    }


def pattern_summary(measurement: Measurement, train_len: int, first_key: int = 1) -> dict:
    per_layer = measurement.mean_logits()  # [layers, T]
    overall = per_layer.mean(0)
    return {
        "length": measurement.length,
        "beyond_train_len": measurement.length > train_len,
        "first_key": first_key,
        "layers": measurement.layers,
        "first_key_logit": float(overall[:first_key].mean()) if first_key else None,
        "mean": overall[first_key:].tolist(),
        "per_layer": per_layer[:, first_key:].tolist(),
        "shape": shape_of(overall[first_key:]),
        "shape_per_layer": [shape_of(row[first_key:]) for row in per_layer],
    }
