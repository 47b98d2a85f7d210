"""Extrapolation out-of-distribution check (HoPE paper, Section 3.3.2 (2), Figure 3c).

The paper observes that past the training length ``L`` RoPE's first-layer logits leave the range
they had inside it (the activated components swing into the upper half of their cosine), and that
later layers' patterns fall apart from there. This module turns that into a number.

**Definition.** Two probe runs with the same inputs: an *in-range* one of length ``T_in <= L`` and
an *extrapolation* one of length ``T_out > L``. For every layer, sample and head:

* the in-range band ``[lo, hi]`` is the min and max of the last query's logits over keys
  ``1 .. T_in-1`` (every distance the model was trained on, up to ``T_in - 1``; key 0, BOS, left
  out), widened by ``tol = 0.01 (hi - lo) + 1e-5 (1 + max(|lo|, |hi|))``;
* the *beyond* logits are the extrapolation run's last-query logits at keys ``n >= 1`` with
  distance ``T_out - 1 - n >= L``.

``ood_fraction`` (the OOD score) = the fraction of beyond logits outside the widened band,
averaged over samples and heads (one scalar per layer; 0 = every beyond-``L`` logit is a value the
layer produced in range, 1 = none is). ``ood_excess`` = the mean distance of beyond logits outside
the band, in units of the band's width (how far out they go). ``ood_ks`` = the Kolmogorov-Smirnov
distance between the in-range and the beyond logits (max gap between their empirical CDFs; 0 =
same distribution, 1 = disjoint), a check that also sees shifts *inside* the band. Layer 0 is the
paper's Figure 3c; in deeper layers the query itself has seen an over-long context, so the score
mixes position and content effects.

**Limitations.** The probe (one token repeated) is the paper's, not natural text. A range test
ignores density: a distribution that shifts inside ``[lo, hi]`` scores 0 (``ood_ks`` sees it),
and one rare in-range extreme widens the band for all. A pattern that keeps a trend (a decay that
goes on decaying past ``L``) scores as OOD too: the values are new to the layer, whether or not
that hurts. The reference is the *method's own* in-range run, i.e. the training distribution
only for the method the checkpoint was trained with; for an inference-time method (YaRN, PI on a
RoPE checkpoint) it measures novelty relative to that method within ``L``. The score depends on ``T_in`` (a shorter in-range run sees fewer
distances, hence a narrower band; use ``T_in = L``). Methods whose layer-0 logits are flat in
position (NoPE: all keys equal under the probe) have a zero-width band and rely on the tolerance.
"""

from __future__ import annotations

import torch

from ropelab.analysis.measure import Measurement
from ropelab.core.errors import RopelabError


def band_tolerance(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return 0.01 * (hi - lo) + 1e-5 * (1 + torch.maximum(lo.abs(), hi.abs()))


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two-sample Kolmogorov-Smirnov statistic over the last axis (batched over the leading ones)."""
    a, b = a.sort(-1).values.contiguous(), b.sort(-1).values.contiguous()
    points = torch.cat((a, b), dim=-1).contiguous()
    cdf_a = torch.searchsorted(a, points, right=True).float() / a.shape[-1]
    cdf_b = torch.searchsorted(b, points, right=True).float() / b.shape[-1]
    return (cdf_a - cdf_b).abs().amax(-1)


def ood_scores(inside: Measurement, outside: Measurement, train_len: int, first_key: int = 1) -> dict:
    """OOD fraction and excess per layer (and per head) of ``outside`` against ``inside``."""
    if inside.length > train_len or outside.length <= train_len:
        raise RopelabError(
            f"the OOD check needs an in-range length <= {train_len} and a longer one; "
            f"got {inside.length} and {outside.length}"
        )
    if inside.logits.shape[:3] != outside.logits.shape[:3] or inside.layers != outside.layers:
        raise RopelabError("the OOD check needs the same layers, samples and heads at both lengths")
    ref = inside.logits[..., first_key:]  # [layers, samples, heads, T_in']
    lo, hi = ref.amin(-1, keepdim=True), ref.amax(-1, keepdim=True)
    tol = band_tolerance(lo, hi)
    last_beyond = outside.length - 1 - train_len  # key index with distance exactly L
    beyond = outside.logits[..., first_key : last_beyond + 1]
    if beyond.shape[-1] == 0:
        raise RopelabError(f"length {outside.length} has no key at distance >= {train_len} after the first")
    below, above = (lo - tol) - beyond, beyond - (hi + tol)
    out = (below > 0) | (above > 0)
    excess = (below.clamp(min=0) + above.clamp(min=0)) / (hi - lo).clamp(min=1e-6)
    fraction_per_head = out.float().mean(dim=(1, 3))  # [layers, heads]
    return {
        "in_range_length": inside.length,
        "length": outside.length,
        "train_len": train_len,
        "layers": inside.layers,
        "beyond_keys": [first_key, last_beyond],
        "ood_fraction": out.float().mean(dim=(1, 2, 3)).tolist(),
        "ood_excess": excess.mean(dim=(1, 2, 3)).tolist(),
        "ood_ks": ks_distance(ref, beyond).mean(dim=(1, 2)).tolist(),
        "ood_fraction_per_head": fraction_per_head.tolist(),
        # the first analysed layer's logits vs distance 0, 1, ... (samples and heads averaged), for the plot
        "first_layer": inside.layers[0],
        "in_range_curve": inside.mean_logits()[0, first_key:].flip(-1).tolist(),
        "curve": outside.mean_logits()[0, first_key:].flip(-1).tolist(),
    }
