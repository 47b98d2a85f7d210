"""NoPE -- no position encoding (Kazemnejad et al. 2023, "The Impact of Positional Encoding on
Length Generalization in Transformers", arXiv 2305.19466). A causal decoder can still infer
positions from the causal mask; every hook of the interface returns ``None``.
"""

from __future__ import annotations

from ropelab.pe.base import MethodInfo, PEContext, PositionEncoding


class NoPE(PositionEncoding):
    pass


def _build(ctx: PEContext, spec: str) -> NoPE:
    return NoPE(ctx, spec)


METHODS = [
    MethodInfo(
        name="nope",
        family="none",
        kind="encoding",
        description="No position encoding; order comes only from the causal mask.",
        paper="Kazemnejad et al. 2023, The Impact of Positional Encoding on Length Generalization in Transformers (arXiv 2305.19466)",
        factory=_build,
    )
]
