"""Hierarchical methods (HiRoPE): which position level each frequency reads, and the code's
hierarchy drawn over the attention map.

For a source text the model's tokenizer turns into ``T`` tokens, :func:`ropelab.hierarchy.extract`
gives every token its segment (function / class / other code, by the method's ``granularity``;
HiRoPE's ``granularity=chunk`` gets no positions and its fixed chunks, as in the evaluator); a
hierarchical method gets those positions, any other method plain ones. The attention probabilities (softmax of the full
pre-softmax logits, causal) are averaged over heads and the analysed layers. Per layer,
``same_segment_mass`` is the attention a query puts on keys of its own segment, averaged over
queries; ``same_segment_uniform`` is what uniform causal attention would put there (the share of
visible keys in the query's segment), the baseline to read it against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ropelab.analysis.attention import LayerTerms, capture
from ropelab.analysis.components import frequency_table
from ropelab.core.errors import RopelabError
from ropelab.hierarchy import extract


def uses_levels(model) -> bool:
    """True when the method reads hierarchical positions (some frequency reads a higher level)."""
    return model.pe.uses_hierarchy


def _pool(matrix: torch.Tensor, size: int) -> torch.Tensor:
    if matrix.shape[-1] <= size:
        return matrix
    return F.adaptive_avg_pool2d(matrix[None, None], size)[0, 0]


@torch.no_grad()
def hierarchy_analysis(
    model, tokenizer, text: str, language: str, length: int, layers: list[int], map_size: int = 256
) -> dict:

    if tokenizer is None:
        raise RopelabError("the hierarchy analysis needs the model's tokenizer (no tokenizer.json found)")
    pe = model.pe
    levels = pe.levels
    granularity = getattr(pe, "granularity", "function")
    if granularity == "chunk":  # as the evaluator: no positions, the encoding's own fixed chunks
        hierarchy = extract(text, tokenizer, language="text", levels=levels, chunk_size=pe.chunk)
    else:
        hierarchy = extract(text, tokenizer, language=language, granularity=granularity, levels=levels)
    T = min(length, hierarchy.num_tokens)
    if T < 2:
        raise RopelabError("the hierarchy analysis needs a source text of at least 2 tokens")
    ids = torch.tensor([hierarchy.ids[:T]], device=model.embed_tokens.weight.device)
    hierarchical = uses_levels(model) and granularity != "chunk"
    positions = hierarchy.positions()[:T][None].to(ids.device) if hierarchical else None
    segment = torch.tensor(hierarchy.segment_of_token[:T])
    if granularity == "chunk":  # the encoding's chunks (the drawn ones can start a token later at a split character)
        segment = torch.arange(T) // pe.chunk
    same = segment[:, None] == segment[None]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    uniform = ((same & causal).sum(-1).float() / causal.sum(-1).float()).mean()
    total = torch.zeros(T, T)
    mass: list[float] = []

    def on_layer(terms: LayerTerms) -> None:
        nonlocal total
        probs = terms.logits().softmax(-1)[0].mean(0).cpu()  # [T, T], heads averaged
        total += probs
        mass.append(float((probs * same).sum(-1).mean()))

    capture(model, ids, on_layer, positions=positions, layers=layers)
    attention = total / len(layers)
    table = frequency_table(model, T)
    segments = []
    for s in hierarchy.segments:
        if s.start_token >= T:
            break
        segments.append({**s.to_dict(), "end_token": min(s.end_token, T)})
    return {
        "method": pe.spec,
        "uses_hierarchy": uses_levels(model),
        "language": hierarchy.language,
        "length": T,
        "layers": layers,
        "frequency_level": table.get("frequency_level", [0] * (model.config.head_dim // 2)),
        "level_names": table.get("level_names") or ["token-level"],
        "roles": table.get("roles"),
        "window": pe.window,
        "segments": segments,
        "warnings": hierarchy.warnings,
        "same_segment_mass": mass,
        "same_segment_uniform": float(uniform),
        "attention_map_size": min(T, map_size),
        "attention_map": _pool(attention, map_size).tolist(),
    }
