"""RoPE component decomposition and Variance Accounted For (HoPE paper, Section 3.3, Eq. 4-5).

The probe's logit pattern ``y_n`` (last query against key ``n``, averaged over samples, heads and
layers -- or over samples and heads for one layer) is split into the ``d/2`` per-frequency
components ``C_j,n`` of Eq. 4 (:mod:`ropelab.analysis.attention`), so ``y = sum_j C_j``.

``VAF_j = 1 - sum_n (y_n - C_j,n)^2 / sum_n y_n^2`` (Eq. 5; reported as a fraction, x100 for the
paper's percent). It is 1 when component ``j`` alone is the whole pattern and 0 for a component
that is identically zero; it goes negative for a component larger than, or opposed to, the
pattern. Eq. 5 is uncentred, so a component that carries a constant offset of the pattern also
scores: ``vaf_centered`` applies the same formula to ``y`` and ``C_j`` with their means over keys
removed, i.e. to how the pattern *varies* with position. Key 0 (BOS) is left out.

Bands, from the checkpoint's RoPE angles ``theta_j = base^(-2j/d)`` and training length ``L``
(one source of truth: :func:`ropelab.pe.hope.frequency_bands`): **activated** ``pi/L < theta_j
< 2pi/L`` (period between ``L`` and ``2L``: half to one cycle inside the training length),
**lower** ``theta_j <= pi/L``, **high** the rest. Bands are marked by frequency index even when the
method changes the angle of that index (HoPE's dropped components are position-independent,
YaRN rescales them); ``theta`` in the output is the angle actually used.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ropelab.analysis.measure import Measurement
from ropelab.pe.hope import frequency_bands
from ropelab.pe.rope import rope_theta

BANDS = ("high", "activated", "lower")


def vaf(y: Tensor, component: Tensor) -> Tensor:
    """Eq. 5 over the last axis: ``1 - sum((y - c)^2) / sum(y^2)`` (broadcasts over leading axes)."""
    y = y.to(torch.float64)
    component = component.to(torch.float64)
    return 1.0 - ((y - component) ** 2).sum(-1) / (y**2).sum(-1)


def centered_vaf(y: Tensor, component: Tensor) -> Tensor:
    """Eq. 5 applied to ``y`` and ``component`` with their means over the last axis removed."""
    return vaf(y - y.mean(-1, keepdim=True), component - component.mean(-1, keepdim=True))


def band_indices(head_dim: int, base: float, train_len: int) -> dict[str, list[int]]:
    """Frequency indices of each band for RoPE angles ``base^(-2j/head_dim)`` and length ``train_len``."""
    masks = frequency_bands(rope_theta(head_dim, base), train_len)
    return {name: torch.nonzero(masks[name]).flatten().tolist() for name in BANDS}


def activated_band(head_dim: int, base: float, train_len: int) -> list[int]:
    """Indices ``j`` with ``pi/L < base^(-2j/d) < 2pi/L``."""
    return band_indices(head_dim, base, train_len)["activated"]


def frequency_table(model, length: int | None = None) -> dict:
    """Angles, periods, roles, position levels and bands of the model's current method."""
    config, pe = model.config, model.pe
    plan = pe.plan(length or config.train_len)
    base = plan.base if plan is not None else config.rope_base
    theta_rope = rope_theta(config.head_dim, base)
    table = {
        "method": pe.spec,
        "head_dim": config.head_dim,
        "base": base,
        "train_len": config.train_len,
        "theta_rope": theta_rope.tolist(),
        "bands": band_indices(config.head_dim, base, config.train_len),
        "band_limits": {"activated": [math.pi / config.train_len, 2 * math.pi / config.train_len]},
    }
    if plan is not None:
        theta = plan.theta.tolist()
        table.update(
            theta=theta,
            period=[2 * math.pi / t if t > 0 else None for t in theta],
            roles=plan.roles(),
            attention_factor=plan.attention_factor,
        )
        if plan.frequency_level is not None:
            table["frequency_level"] = plan.frequency_level.tolist()
            table["level_names"] = list(plan.level_names)
    return table


def band_of(table: dict) -> list[str]:
    """The band name of every frequency index."""
    names = ["high"] * (table["head_dim"] // 2)
    for band in ("activated", "lower"):
        for j in table["bands"][band]:
            names[j] = band
    return names


def component_analysis(measurement: Measurement, table: dict, first_key: int = 1) -> dict:
    """VAF of every component (all layers averaged, and per layer) and the curves behind it."""
    comps = measurement.components[:, first_key:]  # [layers, T', d/2]
    per_layer_y = measurement.mean_logits()[:, first_key:]
    if measurement.bias is not None:  # VAF is about the rotary part; the bias is not a component
        per_layer_y = per_layer_y - measurement.bias[:, first_key:]
    y, mean_comps = per_layer_y.mean(0), comps.mean(0)  # [T'], [T', d/2]
    vaf_all = vaf(y, mean_comps.T)
    bands = table["bands"]
    band_sums = {band: mean_comps[:, bands[band]].sum(-1) for band in BANDS}
    names = band_of(table)
    theta = table.get("theta", table["theta_rope"])
    rope = table["theta_rope"]
    return {
        "length": measurement.length,
        "first_key": first_key,
        "layers": measurement.layers,
        "vaf": vaf_all.tolist(),
        "vaf_centered": centered_vaf(y, mean_comps.T).tolist(),
        "vaf_per_layer": vaf(per_layer_y[:, None, :], comps.transpose(1, 2)).tolist(),
        "vaf_bands": {band: float(vaf(y, band_sums[band])) for band in BANDS},
        "band": names,
        "activated": [
            {
                "index": j,
                "theta_rope": rope[j],
                "theta": theta[j],
                "period_rope": 2 * math.pi / rope[j],
                "vaf": float(vaf_all[j]),
            }
            for j in bands["activated"]
        ],
        "ranking": torch.argsort(vaf_all, descending=True).tolist(),
        "curves": {
            "logits": y.tolist(),
            "components": mean_comps.T.tolist(),
            **{f"{band}_sum": band_sums[band].tolist() for band in BANDS},
        },
    }
