"""How linear weights are laid out in memory for inference on the CPU.

A linear layer's weight is ``[out, in]``. Stored row-major (PyTorch's default), the one-token
product of decoding, ``x @ W.T``, is a matrix-vector product that the CPU BLAS streams at about
half the memory bandwidth it reaches when the same weight is stored column-major -- as the
transpose of a contiguous ``[in, out]`` matrix, so that the product is a plain ``x @ W'`` (on
the 2-core AMD EPYC of docs/results.md: 1.5-1.8x faster per matrix, 9.7 vs 5.3 ms for
SmolLM2's 49152 x 576 LM head; ``python -m bench hf-speed`` measures the whole decode step).
Multi-token products (prefill, scoring) run at the same speed either way.

:func:`column_major` changes only the strides: shapes, values, parameter names and the state
dict stay the same, so a model laid out this way computes the same numbers and saves the same
checkpoint (``ropelab.model.checkpoint`` writes contiguous copies). A tied LM head shares its
weight with the embedding, whose lookups then read strided rows: a few milliseconds per 8K
tokens of prompt, against milliseconds saved per generated token.
"""

from __future__ import annotations

from torch import nn


def column_major(model: nn.Module) -> int:
    """Store every CPU ``nn.Linear`` weight of ``model`` column-major, in place; returns how many
    weights changed (a weight already laid out so, or on another device, is left as it is).

    The other CPU parameters and buffers are copied into memory of their own: weights loaded from
    a memory-mapped checkpoint view the file's mapping, and one remaining view (a norm's weight)
    would keep the whole mapping -- every page the conversion read -- resident beside the new copy
    (the main job's peak memory grew from 2.6 to 3.2 GB that way)."""
    changed = 0
    seen: set[int] = set()
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        if id(weight) in seen or weight.device.type != "cpu" or weight.dim() != 2 or not weight.is_contiguous():
            continue
        seen.add(id(weight))
        if min(weight.shape) == 1:  # a vector: both layouts are the same memory
            continue
        weight.data = weight.data.t().contiguous().t()
        changed += 1
    if changed:
        for tensor in [*model.parameters(), *model.buffers()]:
            if id(tensor) not in seen and tensor.device.type == "cpu":
                seen.add(id(tensor))
                tensor.data = tensor.data.clone()
    return changed
