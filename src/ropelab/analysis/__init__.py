"""Analyses behind the HoPE paper's argument (Section 3, Figures 2, 3, 6-8), for any ropelab model.

    ropelab analyze runs/exp-hope                      # an experiment: every models/<pe>/ run side by side
    ropelab analyze runs/exp-hope/models/rope --checkpoints all   # VAF over training
    ropelab analyze smollm2-135m --analyses vaf --lengths 4k --documents stdlib --samples 1

* **pattern** (:mod:`~ropelab.analysis.pattern`): the probe ``[BOS] t t ... t``; pre-softmax
  logits of the last query against every key, averaged over samples, heads and layers (and per
  layer), within and beyond the training length -- the U-shape or its absence.
* **vaf** (:mod:`~ropelab.analysis.components`): every logit split into the ``d/2`` per-frequency
  terms ``C_j`` (Eq. 4) and the variance each accounts for (Eq. 5); activated band
  ``pi/L < theta < 2pi/L`` and lower band marked; over a checkpoint series with ``--checkpoints all``.
* **ood** (:mod:`~ropelab.analysis.ood`): how many beyond-``L`` logits leave the range the same
  layer and head produced within ``L`` -- one score per layer (Figure 3c).
* **hierarchy** (:mod:`~ropelab.analysis.levels`): for hierarchical methods (HiRoPE) the level
  each frequency reads, and the code's segments drawn over the attention map.

The logits come from :func:`~ropelab.analysis.attention.capture`: forward pre-hooks rebuild each
layer's rotated queries and keys from the layer's input with the tables the model used, so the
model is unchanged and every method (RoPE family, windowed, bias, NoPE) is covered.
"""

from ropelab.analysis.attention import LayerTerms, capture, pair_products
from ropelab.analysis.components import (
    activated_band,
    band_indices,
    centered_vaf,
    component_analysis,
    frequency_table,
    vaf,
)
from ropelab.analysis.inputs import Inputs, probe_inputs, text_inputs
from ropelab.analysis.levels import hierarchy_analysis
from ropelab.analysis.measure import Measurement, measure
from ropelab.analysis.ood import ood_scores
from ropelab.analysis.pattern import pattern_summary
from ropelab.analysis.pipeline import ANALYSES, AnalyzeConfig, analyze
from ropelab.analysis.sources import Subject, discover

__all__ = [
    "ANALYSES",
    "AnalyzeConfig",
    "Inputs",
    "LayerTerms",
    "Measurement",
    "Subject",
    "activated_band",
    "analyze",
    "band_indices",
    "capture",
    "centered_vaf",
    "component_analysis",
    "discover",
    "frequency_table",
    "hierarchy_analysis",
    "measure",
    "ood_scores",
    "pair_products",
    "pattern_summary",
    "probe_inputs",
    "text_inputs",
    "vaf",
]
