"""Checking a forward pass's inputs once, where they enter -- never inside the forward pass.

:class:`~ropelab.model.transformer.Transformer`'s forward trusts its inputs: it reads no tensor
value on the host (no ``int(tensor)``, ``.item()`` or ``bool(tensor)``), so on a GPU a step never
waits for the device. The checks that must read values -- token ids in the vocabulary, a mask of
0 and 1 that repeats the cached one, padding a windowed method can place, positions that are not
negative, inside a learned table -- live here, and the entry points call :func:`check_inputs` once
per input: ``generate`` on its prompt, ``token_losses``, the evaluator's prefill. Code that feeds
the model tensors of its own making (the trainer, from a tokenizer of the model's vocabulary) needs
none. Call it on untrusted input before ``model(...)``; without it an out-of-range token id is
torch's own ``IndexError``.

Two exceptions, both at inference on a *padded* batch, where the numbers require a host read:
windowed methods find each row's run of real keys to attend row by row
(:mod:`ropelab.model.window_attention`), and dynamic NTK reads each row's length (its angles are a
function of it). Unpadded passes, decoding steps and the training step read nothing
(``tests/test_host_sync.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ropelab.core.errors import RopelabError


def check_inputs(
    model, input_ids, positions=None, cache=None, attention_mask=None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(input_ids, positions, attention_mask)`` checked and normalised for ``model``: tensors on
    the model's device, ``input_ids`` ``[B, T]``, ``positions`` ``[B|1, T(, levels)]`` or None, the
    mask as bool ``[B, past + T]`` -- or None when every token is real (the mask-free fast paths).
    One :class:`RopelabError` names the first problem."""
    device = model.device
    input_ids = torch.as_tensor(input_ids, device=device)
    if input_ids.dim() != 2:
        raise RopelabError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    T = input_ids.shape[1]
    if T == 0:
        raise RopelabError("input_ids is empty")
    if input_ids.is_floating_point() or input_ids.is_complex():
        raise RopelabError(f"input_ids must be integer token ids, got {input_ids.dtype}")
    vocab = model.config.vocab_size
    if int(input_ids.max()) >= vocab or int(input_ids.min()) < 0:
        raise RopelabError(f"token ids must be in 0..{vocab - 1}")
    mask = _check_mask(model, attention_mask, input_ids, cache)
    positions = _check_positions(model, input_ids, positions, cache)
    return input_ids, positions, mask


def _check_mask(model, attention_mask, input_ids: Tensor, cache) -> Tensor | None:
    B, T = input_ids.shape
    past = cache.length if cache is not None else 0
    cached = None if cache is None else cache.mask
    if cached is not None and cached.shape[0] != B:
        raise RopelabError(f"the KV cache holds a padded batch of {cached.shape[0]} rows, got {B} rows")
    if attention_mask is None:
        return None
    mask = torch.as_tensor(attention_mask, device=input_ids.device)
    if mask.dim() != 2 or tuple(mask.shape) != (B, past + T):
        covers = f" (the {past} cached tokens, then the {T} new ones)" if past else ""
        raise RopelabError(
            f"attention_mask must have shape [batch, past + seq] = [{B}, {past + T}]{covers}, "
            f"1 = real token and 0 = padding; got shape {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise RopelabError("attention_mask must hold only 0 and 1 (or False/True): 1 = real token, 0 = padding")
        mask = mask != 0
    if past:
        before = cached if cached is not None else mask.new_ones(B, past)
        if not torch.equal(mask[:, :past], before):
            raise RopelabError(
                "attention_mask[:, :past] must repeat the mask of the tokens already in the KV cache "
                f"({past} tokens); it differs"
            )
    if bool(mask.all()):
        return None
    if model.pe.is_windowed:
        contiguous = _contiguous(mask)
        if not bool(contiguous.all()):
            rows = (~contiguous).nonzero()[:, 0].tolist()
            raise RopelabError(
                f"{model.pe.spec}: windowed methods need each row's real tokens to be contiguous (padding only "
                f"before and/or after them); attention_mask row(s) {rows} have padding between real tokens -- "
                "pad on the left to continue a padded batch"
            )
    return mask


def _contiguous(key_mask: Tensor) -> Tensor:
    """Per row: whether the True entries of ``key_mask [B, T]`` form one run (or none)."""
    valid = key_mask.long()
    starts = valid[:, :1] + (valid[:, 1:] > valid[:, :-1]).long().sum(dim=1, keepdim=True)
    return starts[:, 0] <= 1


def _check_positions(model, input_ids: Tensor, positions, cache) -> Tensor | None:
    B, T = input_ids.shape
    past = cache.length if cache is not None else 0
    last = model.pe.max_position
    if positions is None:
        if last is not None and past + T - 1 > last:
            raise outside_table(model, past + T - 1)
        return None
    positions = torch.as_tensor(positions, device=input_ids.device)
    if positions.dim() == 1:
        positions = positions[None]
    if positions.dim() not in (2, 3) or positions.shape[1] != T or positions.shape[0] not in (1, B):
        raise RopelabError(
            f"positions must have shape [batch or 1, {T}] or [batch or 1, {T}, levels], got {tuple(positions.shape)}"
        )
    if positions.is_complex() or (
        positions.is_floating_point() and positions.dtype not in (torch.float32, torch.float64)
    ):
        raise RopelabError("positions must be integers or float32/float64 (never fp16/bf16)")
    if positions.numel() and positions.min() < 0:
        raise RopelabError("positions must be non-negative")
    if cache is not None and cache.positions is not None and cache.positions.shape[2:] != positions.shape[2:]:
        raise RopelabError("positions must have the same number of levels as the cached ones")
    if last is not None and positions.numel() and int(positions.max()) > last:
        raise outside_table(model, int(positions.max()))
    return positions


def outside_table(model, position: int) -> RopelabError:
    """The error of a position beyond the method's last one (a learned table)."""
    last = model.pe.max_position
    return RopelabError(
        f"{model.pe.info.name}: position {position} is outside the learned table (positions 0..{last}); "
        f"learned absolute embeddings cannot extrapolate -- use inputs of at most {last + 1} tokens"
    )
