"""Windowed methods (``rerope``, ``self-extend``, ``hirope``) inside a ``transformers`` model.

They score near and far query/key pairs with different rotations, which no rotary table can
express, so ``hf.patch`` goes through transformers' attention hook (``AttentionInterface``,
transformers >= 4.48): the rotary tables become the identity, so queries and keys (and HF's KV
cache) stay unrotated, and the registered attention function :data:`WINDOW_ATTENTION` rotates them
with the method's near/far tables and runs
:func:`ropelab.model.window_attention.windowed_attention`. ``unpatch`` restores the model's own
attention implementation. HiRoPE reads hierarchical positions from an extra forward keyword,
``ropelab_positions`` (``[B|1, T, levels]`` for the whole sequence); without it tokens fall into
HiRoPE's fixed chunks.

The family's own attention settings are honoured or refused, never dropped: the softmax scale
transformers passes (``scaling``: Gemma's ``query_pre_attn_scalar ** -0.5``) scales the queries;
partial rotary (GPT-NeoX) rotates the first ``rotary_dim`` channels only; attention-logit
soft-capping (Gemma 2's ``attn_logit_softcapping``) is refused (:func:`check_model`), since the
windowed attention does not cap; a layer with a sliding window (Gemma 2/3 local layers,
StarCoder2, Mistral) is refused once the input is longer than its window (its mask, and HF's
sliding KV cache, drop the earliest keys, which windowed methods attend to).

Padding comes from the mask transformers hands the attention function (a boolean
``[B, 1, Tq, Tk]`` mask from ``sdpa_mask``, an additive float mask of 0 / -inf or the dtype minimum,
or ``None`` when nothing is masked): a key is real if some query may see it; padding keys are
masked in both score sets, and each row's real tokens are numbered ``0, 1, 2, ...`` (``cumsum -
1``) for the method's tables, whatever ``position_ids`` say, so a padded row gives what it gives
alone. Masks that are not "causal over each row's real tokens" (packed sequences, a sliding window
shorter than the input, custom 4D masks, additive biases), padding between real tokens, a static
cache and ``position_ids`` that match neither the mask nor the column index are refused with one
:class:`~ropelab.core.errors.RopelabError` line.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor, nn

from ropelab.core.errors import RopelabError
from ropelab.integrations.hf_families import attention_layers, body
from ropelab.model.window_attention import windowed_attention
from ropelab.pe import PositionEncoding

#: the name of ropelab's attention function in transformers' ``AttentionInterface``
WINDOW_ATTENTION = "ropelab_window"


def allowed_pairs(attention_mask, batch: int, q_len: int, k_len: int) -> Tensor:
    """The bool ``[B, q_len, k_len]`` "query may attend key" matrix of a mask transformers passes."""
    mask = attention_mask
    if not isinstance(mask, Tensor):
        raise RopelabError(
            f"hf.patch: window attention got an attention mask of type {type(mask).__name__}; it supports "
            "the boolean or additive float tensors of the sdpa/eager mask functions"
        )
    if mask.dim() == 2:  # a plain padding mask [B, k_len] (1 = real token)
        if mask.shape[-1] != k_len or mask.shape[0] not in (1, batch):
            raise RopelabError(f"hf.patch: a 2D attention mask must be [{batch}, {k_len}], got {tuple(mask.shape)}")
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=mask.device).tril(k_len - q_len)
        return causal[None] & (mask != 0)[:, None, :].expand(batch, 1, k_len)
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, batch) or mask.shape[2:] != (q_len, k_len):
        raise RopelabError(
            f"hf.patch: window attention needs a [{batch}, 1, {q_len}, {k_len}] attention mask (one for all "
            f"heads), got {tuple(mask.shape)}"
        )
    mask = mask[:, 0].expand(batch, q_len, k_len)
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        return mask != 0
    allowed = mask == 0
    blocked = mask <= torch.finfo(mask.dtype).min / 2  # HF's additive masks hold 0 or the dtype's minimum (or -inf)
    if not bool((allowed | blocked).all()):
        raise RopelabError(
            "hf.patch: window attention supports additive masks of 0 (attend) and -inf / the dtype minimum "
            "(masked) only; this one holds other values (an additive bias)"
        )
    return allowed


def key_validity(attention_mask, batch: int, q_len: int, k_len: int, position_ids) -> Tensor | None:
    """Which keys are real tokens (bool ``[B, k_len]``), or ``None`` when all are, from the mask
    transformers passes; refuses masks that are not "causal over each row's real tokens"."""
    past = k_len - q_len
    key_valid = None
    if attention_mask is not None:
        allowed = allowed_pairs(attention_mask, batch, q_len, k_len)
        key_valid = allowed.any(dim=1)  # a key is real if some query may see it
        # the mask must be exactly causal & real keys (not packed sequences, a sliding window, ...)
        keys = torch.arange(k_len, device=allowed.device)
        for start in range(0, q_len, 1024):  # bounded temporaries for long prefills
            stop = min(q_len, start + 1024)
            causal = keys[None] <= torch.arange(past + start, past + stop, device=allowed.device)[:, None]
            if not torch.equal(allowed[:, start:stop], causal[None] & key_valid[:, None, :]):
                raise RopelabError(
                    "hf.patch: window attention supports causal attention with padding only; the attention mask "
                    "has another pattern (packed sequences, a sliding window, a static cache or a custom 4D mask)"
                )
        if not bool(key_valid[:, past:].any()):
            raise RopelabError(
                "hf.patch: no query of this step is a real token of the attention mask; window attention supports "
                "transformers' dynamic KV cache only (not cache_implementation='static'), and no all-padding batches"
            )
        valid = key_valid.long()
        runs = valid[:, :1] + (valid[:, 1:] > valid[:, :-1]).long().sum(dim=1, keepdim=True)
        if bool((runs > 1).any()):
            raise RopelabError(
                "hf.patch: windowed methods need each row's real tokens to be contiguous (left or right padding); "
                "the attention mask has padding between real tokens (right-padded generation?) -- pad on the left"
            )
        if bool(key_valid.all()):
            key_valid = None
    if isinstance(position_ids, Tensor) and position_ids.dim() == 2 and position_ids.shape[-1] == q_len:
        # windowed methods place tokens by the mask, never by position_ids; accept the two conventions
        # transformers uses (positions from the mask as in generate, or the plain sequence index)
        column = torch.arange(past, k_len, device=position_ids.device)[None]
        if key_valid is None:
            ok = position_ids == column
        else:
            index = (key_valid.long().cumsum(dim=1) - 1)[:, past:].to(position_ids.device)
            ok = (position_ids == index) | (position_ids == column) | ~key_valid[:, past:].to(position_ids.device)
        if not bool(ok.all()):
            raise RopelabError(
                "hf.patch: windowed methods take each token's position from the attention mask (its index among "
                "its row's real tokens); these position_ids differ (custom positions, packed sequences or a static "
                "cache) and are not supported"
            )
    return key_valid


def _rotate(encoding: PositionEncoding, query: Tensor, key: Tensor, positions, index: Tensor, past: int):
    """``(q_near, q_far, k_near, k_far)``: the method's near and far rotations of the first
    ``rotary_dim`` channels (the whole head but for partial rotary), the others passed through."""
    tables = encoding.windowed_rotation(torch.as_tensor(positions, device=query.device), index)
    width = encoding.ctx.head_dim
    if width == query.shape[-1]:
        return tables.apply(query, key, query_rows=slice(past, None))
    rotated = tables.apply(query[..., :width], key[..., :width], query_rows=slice(past, None))
    rest = (query[..., width:], query[..., width:], key[..., width:], key[..., width:])
    return tuple(torch.cat((part, tail), dim=-1) for part, tail in zip(rotated, rest))


def _check_layer(module, key_len: int, position_ids, softcap, sliding_window) -> None:
    """Refuse what the windowed attention cannot compute for this layer: capped logits, and a
    sliding window shorter than the sequence so far (``max(position_ids) + 1`` counts tokens an
    HF sliding cache has already dropped)."""
    if softcap is not None:
        raise RopelabError(
            f"hf.patch: this model caps its attention logits (softcap={softcap:g}); ropelab's windowed attention does "
            "not, so rerope/self-extend/hirope are refused on it"
        )
    if sliding_window is None:
        return
    length = key_len
    if isinstance(position_ids, Tensor) and position_ids.numel():
        length = max(length, int(position_ids.max()) + 1)
    if length > sliding_window:
        raise RopelabError(
            f"hf.patch: layer {getattr(module, 'layer_idx', '?')} attends only to the last {sliding_window} tokens "
            f"(sliding_window={sliding_window}), and windowed methods attend to every earlier token: inputs longer "
            f"than {sliding_window} tokens ({length} here) are refused; rotary methods keep the sliding window"
        )


def window_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function for windowed methods: q/k arrive unrotated.

    Padding comes from ``attention_mask`` (see :func:`key_validity`): padding keys are masked, and
    each row's real tokens are numbered ``0, 1, 2, ...`` for the method's tables, so a padded row
    gets the result it gets alone."""
    encoding = module._ropelab_window
    if not encoding.is_windowed:  # a layer type that keeps rotary tables (a spec per layer type)
        return _model_attention(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    batch, q_len, k_len = query.shape[0], query.shape[2], key.shape[2]
    past = k_len - q_len
    softcap = kwargs.get("softcap", getattr(module, "attn_logit_softcapping", None))
    _check_layer(module, k_len, kwargs.get("position_ids"), softcap, kwargs.get("sliding_window"))
    key_valid = key_validity(attention_mask, batch, q_len, k_len, kwargs.get("position_ids"))
    if key_valid is None:
        index = torch.arange(k_len, device=query.device)[None]
    else:
        key_valid = key_valid.to(query.device)
        index = (key_valid.long().cumsum(dim=1) - 1).clamp(min=0)
    positions = kwargs.get("ropelab_positions")
    if positions is None or positions.shape[1] != k_len:
        positions = index
    head_dim = query.shape[-1]
    if scaling is not None and not math.isclose(scaling * math.sqrt(head_dim), 1.0, rel_tol=1e-12):
        query = query * (scaling * math.sqrt(head_dim))  # windowed_attention divides by sqrt(head_dim)
    q_near, q_far, k_near, k_far = _rotate(encoding, query, key, positions, index, past)
    out = windowed_attention(
        q_near,
        q_far,
        k_near,
        k_far,
        value,
        encoding.window,
        past,
        key_mask=key_valid,
        far_keys=encoding.far_keys,
    )
    return out.transpose(1, 2).contiguous(), None


#: the model's own attention implementations a layer without a windowed method can fall back to
#: (the masks this hook gets are ``sdpa_mask``'s; an eager function gets them as additive masks)
FALLBACKS = ("sdpa", "eager")


def _model_attention(module, query, key, value, attention_mask, **kwargs):
    """The model's own attention function (:data:`FALLBACKS`) for a layer whose layer type runs a
    rotary method while others run a windowed one (Gemma 3 with a spec per layer type)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = module._ropelab_attention
    if name == "sdpa":
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)
    eager = sys.modules[type(module).__module__].eager_attention_forward  # the family's own (soft-capping...)
    q_len, k_len = query.shape[2], key.shape[2]
    if attention_mask is None:  # sdpa_mask leaves out a plain causal mask; eager attention needs it
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)[None, None]
    if attention_mask.dtype == torch.bool:
        blocked = torch.finfo(query.dtype).min
        attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~attention_mask.to(query.device), blocked
        )
    return eager(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    except ImportError:
        raise RopelabError(
            "hf.patch: windowed methods (rerope, self-extend, hirope) need transformers >= 4.48 "
            "(its AttentionInterface hook); this transformers version has none"
        ) from None
    AttentionInterface.register(WINDOW_ATTENTION, window_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(WINDOW_ATTENTION, sdpa_mask)


def _own_attention(model: nn.Module) -> str | None:
    """The model's attention implementation before any ropelab patch."""
    saved = getattr(body(model), "_ropelab_saved_attn", None)
    return saved if saved is not None else model.config._attn_implementation


def check_model(model: nn.Module, encodings: dict[str, PositionEncoding]) -> None:
    """Refuse, before anything changes, a windowed method on a model whose attention caps its
    logits (Gemma 2's ``attn_logit_softcapping``: the windowed attention computes uncapped ones),
    and a spec per layer type mixing windowed and rotary methods on a model whose attention
    implementation is not one of :data:`FALLBACKS`."""
    windowed = [kind for kind, encoding in encodings.items() if encoding.is_windowed]
    if not windowed:
        return
    caps = {getattr(module, "attn_logit_softcapping", None) for kind, module in attention_layers(model)}
    caps = sorted(cap for cap in caps | {getattr(model.config, "attn_logit_softcapping", None)} if cap is not None)
    if caps:
        raise RopelabError(
            f"hf.patch: {model.config.model_type} caps its attention logits (attn_logit_softcapping={caps[0]:g}) and "
            "ropelab's windowed attention does not, so rerope/self-extend/hirope are refused on it (rotary methods "
            "keep the cap; a model built with attn_logit_softcapping=None runs them uncapped)"
        )
    own = _own_attention(model)
    if len(windowed) < len(encodings) and own not in FALLBACKS:
        raise RopelabError(
            f"hf.patch: windowed methods on some layer types ({', '.join(windowed)}) and rotary ones on the others "
            f"need the model's attention implementation to be {' or '.join(FALLBACKS)}; it is {own!r}"
        )


def set_window(model: nn.Module, encodings: dict[str, PositionEncoding] | None) -> None:
    """Switch the attention implementation to ropelab's window function (or back, with ``None``)
    and give each layer's attention module its layer type's encoding. The implementation it
    replaces is kept on the decoder body, never in the config (which ``save_pretrained`` would
    write)."""
    config = model.config
    decoder = body(model)
    saved = getattr(decoder, "_ropelab_saved_attn", None)
    windowed = encodings is not None and any(encoding.is_windowed for encoding in encodings.values())
    if windowed:
        _register()
        if saved is None:
            decoder._ropelab_saved_attn = config._attn_implementation
        config._attn_implementation = WINDOW_ATTENTION
    elif saved is not None:
        config._attn_implementation = saved
        del decoder._ropelab_saved_attn
    own = _own_attention(model)
    for kind, module in attention_layers(model):
        if windowed:
            module._ropelab_window = encodings[kind]
            module._ropelab_attention = own
        else:
            for name in ("_ropelab_window", "_ropelab_attention"):
                if hasattr(module, name):
                    delattr(module, name)
