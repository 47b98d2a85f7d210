"""The last query's pre-softmax logits over every key, per layer, head and sample (the paper's probe).

One :class:`Measurement` per input length: the logits ``[layers, samples, heads, T]`` of the last
query against keys ``0 .. T-1`` and, for RoPE-family methods, their Eq. 4 components averaged over
samples and heads ``[layers, T, d/2]`` (averaging commutes with the sum, so the averaged
components still sum to the averaged logits minus the averaged bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ropelab.analysis.attention import LayerTerms, capture
from ropelab.analysis.inputs import Inputs


@dataclass
class Measurement:
    length: int
    layers: list[int]
    logits: Tensor  # [n_layers, samples, heads, T] float32
    components: Tensor | None  # [n_layers, T, d/2] mean over samples and heads; None without rotation
    bias: Tensor | None  # [n_layers, T] mean over samples and heads; None without a bias

    def mean_logits(self) -> Tensor:
        """``[n_layers, T]``: averaged over samples and heads."""
        return self.logits.mean(dim=(1, 2))


def has_rotation(model) -> bool:
    """True for RoPE-family and windowed methods: their logits have per-frequency components."""
    return model.pe.plan() is not None


@torch.no_grad()
def measure(
    model, inputs: Inputs, length: int, layers: list[int], batch_tokens: int = 16384, components: bool = True
) -> Measurement:
    components = components and has_rotation(model)
    logits: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    sums: dict[int, Tensor] = {}
    bias_sums: dict[int, Tensor] = {}

    def on_layer(terms: LayerTerms) -> None:
        batch = terms.q.shape[0]
        logits[terms.layer].append(terms.logits()[:, :, 0].cpu())
        if components:
            part = terms.components()[:, :, 0].sum(dim=0).mean(dim=0).cpu()  # [T, d/2]
            sums[terms.layer] = sums.get(terms.layer, 0) + part
        if terms.bias is not None:
            bias = terms.bias[:, :, 0].expand(batch, -1, -1).sum(dim=0).mean(dim=0).cpu()  # [T]
            bias_sums[terms.layer] = bias_sums.get(terms.layer, 0) + bias

    for batch in inputs.batches(length, batch_tokens):
        capture(model, batch.to(model.embed_tokens.weight.device), on_layer, layers=layers, queries="last")
    samples = inputs.samples
    return Measurement(
        length=length,
        layers=list(layers),
        logits=torch.stack([torch.cat(logits[layer]) for layer in layers]),
        components=torch.stack([sums[layer] / samples for layer in layers]) if components else None,
        bias=torch.stack([bias_sums[layer] / samples for layer in layers]) if bias_sums else None,
    )
