"""The rotary tables ``hf.patch`` hands a ``transformers`` model, and the encodings behind them.

:class:`RopelabRotaryEmbedding` replaces a model's ``*RotaryEmbedding`` module: it computes HF's
``(cos, sin)`` from ropelab encodings (float32 angles, ropelab's ``rotation`` with the attention
factor, duplicated to HF's rotate-half layout ``cat((c, c), -1)`` and cast to the dtype of ``x``,
as HF does). :func:`layer_encodings` builds those encodings from a model's config: one per layer
type (:func:`ropelab.integrations.hf_families.layer_ropes`), each composed over that type's own rope
by :func:`ropelab.pe.compose`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ropelab import pe as pe_registry
from ropelab.core.checks import int_between
from ropelab.core.errors import RopelabError, SpecError
from ropelab.integrations.hf_families import ALL_LAYERS, PARTIAL_ROTARY, layer_ropes
from ropelab.model.config import LIMITS
from ropelab.pe import PEContext, PositionEncoding, RotaryEncoding
from ropelab.pretrained.hf_dir import HFRope, hf_rope, native_method, unpatched


class RopelabRotaryEmbedding(nn.Module):
    """Drop-in replacement for HF's ``*RotaryEmbedding``: ``(cos, sin)`` from ropelab encodings.

    ``forward(x, position_ids)`` returns ``[B, T, rotary_dim]`` tables (transformers >= 4.38);
    ``forward(x, position_ids, layer_type)`` those of one layer type (Gemma 3);
    ``forward(x, seq_len=N)`` returns ``[N, rotary_dim]`` tables for positions ``0..N-1`` (Mistral /
    Qwen2 before 4.45). ``encoding`` is a :class:`~ropelab.pe.base.PositionEncoding`, or a mapping
    ``{layer type: encoding}``; ``original`` is the HF module it replaced, restored by
    :func:`ropelab.integrations.hf.unpatch`; ``spec`` is what :func:`ropelab.integrations.hf.patched_spec`
    reports (default: the encoding's own spec).
    """

    def __init__(
        self, encoding: PositionEncoding | Mapping[str, PositionEncoding], original: nn.Module, spec=None
    ) -> None:
        super().__init__()
        encodings = dict(encoding) if isinstance(encoding, Mapping) else {ALL_LAYERS: encoding}
        self.encodings = nn.ModuleDict(encodings)
        self.original = original
        self.head_dim = self.encoding.ctx.head_dim
        self._spec = spec

    @property
    def encoding(self) -> PositionEncoding:
        """The encoding of the model's full-attention layers (of every layer, with one rope)."""
        encodings = self.encodings
        return encodings["full_attention"] if "full_attention" in encodings else next(iter(encodings.values()))

    @property
    def spec(self):
        return self._spec if self._spec is not None else self.encoding.spec

    def forward(
        self,
        x: Tensor,
        position_ids: Tensor | int | None = None,
        layer_type: str | None = None,
        seq_len: int | Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        if position_ids is not None and not isinstance(position_ids, Tensor):
            seq_len, position_ids = position_ids, None  # an old-style positional seq_len
        table = position_ids is None
        if table:
            if seq_len is None:
                raise RopelabError("rotary embedding called without position_ids or seq_len")
            position_ids = torch.arange(int(seq_len), device=x.device)[None]
        cos, sin = self._tables(self._encoding_of(layer_type), position_ids)
        if table:
            cos, sin = cos[0], sin[0]
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    def _encoding_of(self, layer_type: str | None) -> PositionEncoding:
        if layer_type is None or len(self.encodings) == 1:
            return self.encoding
        if layer_type not in self.encodings:
            raise RopelabError(f"hf.patch: no encoding for layer type {layer_type!r}; have {', '.join(self.encodings)}")
        return self.encodings[layer_type]

    @staticmethod
    def _tables(encoding: PositionEncoding, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """float32 ``[..., T, rotary_dim]`` cos/sin in HF's rotate-half layout."""
        if isinstance(encoding, RotaryEncoding) and not encoding.is_windowed:
            if encoding.inv_freq.device != position_ids.device:
                encoding.to(position_ids.device)
            rotation = encoding.rotation(position_ids)
            cos, sin = rotation.cos, rotation.sin
        else:  # nope, or a windowed method (it rotates inside the attention function)
            shape = (*position_ids.shape, encoding.ctx.head_dim // 2)
            cos = torch.ones(shape, dtype=torch.float32, device=position_ids.device)
            sin = torch.zeros(shape, dtype=torch.float32, device=position_ids.device)
        return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)

    def _apply(self, fn, recurse: bool = True):
        """``model.to(dtype)`` must not round the angles: rebuild them in float32 after a cast."""
        super()._apply(fn, recurse)
        for encoding in self.encodings.values():
            if isinstance(encoding, RotaryEncoding) and encoding.inv_freq.dtype != torch.float32:
                theta = encoding.plan(encoding.ctx.train_len).theta
                encoding.inv_freq = theta.to(device=encoding.inv_freq.device, dtype=torch.float32)
        return self

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, head_dim={self.head_dim}"


# -- config -> encodings ------------------------------------------------------------------------


def hf_pe_context(config, train_len: int | None = None, layer_type: str | None = None) -> PEContext:
    """The :class:`~ropelab.pe.base.PEContext` ropelab builds for an HF config (a ``transformers``
    ``PretrainedConfig``; its fields are read by :func:`ropelab.pretrained.hf_dir.hf_rope`, as for a
    model directory's ``config.json``): ``head_dim`` is the rotated width (GPT-NeoX: its
    ``rotary_dim``). ``layer_type`` picks one layer type's rope (Gemma 3; default: the
    full-attention layers').

    A config that carries a ``ropelab`` entry (written by :func:`ropelab.integrations.hf.patch`) is
    read with its original rope fields, the ones the recorded method was built from."""
    hf, _ = unpatched(config.to_dict())
    ropes = layer_ropes(hf)
    key = layer_type or ("full_attention" if "full_attention" in ropes else next(iter(ropes)))
    if key not in ropes:
        raise RopelabError(f"hf.patch: this config has no layer type {key!r}; it has {', '.join(ropes)}")
    return pe_context(ropes[key], train_len)


def _rope(hf: dict) -> HFRope:
    """The rope fields of a config dict with one rope, partial rotary allowed where the family has it."""
    return hf_rope(hf, "hf.patch", partial_rotary=hf.get("model_type") in PARTIAL_ROTARY)


def pe_context(hf: dict, train_len: int | None) -> PEContext:
    """:func:`hf_pe_context` of a config dict with one rope (one layer type's)."""
    rope = _rope(hf)
    if train_len is None:
        train_len = rope.train_len
    if not int_between(train_len, 1, LIMITS["train_len"]):
        raise RopelabError(f"hf.patch: train_len must be an integer from 1 to {LIMITS['train_len']}, got {train_len!r}")
    return PEContext(
        head_dim=rope.rotary_dim,
        n_heads=rope.n_heads,
        train_len=train_len,
        rope_base=rope.base,
        dim=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]),
    )


def build_encoding(spec: str, ctx: PEContext) -> PositionEncoding:
    """``pe.build(spec, ctx)`` for a method ``hf.patch`` can run: RoPE-family, NoPE or windowed."""
    encoding = pe_registry.build(spec, ctx)
    if isinstance(encoding, RotaryEncoding):
        if int(encoding.frequency_level.max()) > 0:
            raise RopelabError(
                f"hf.patch: {encoding.spec!r} reads multi-level position vectors, which HF's position_ids "
                "cannot carry; it needs the attention-function hook (not yet supported)"
            )
        return encoding
    if encoding.info.family == "none" or encoding.is_windowed:
        return encoding
    rotary = ", ".join(m.name for m in pe_registry.methods() if m.kind == "rotary")
    raise RopelabError(
        f"hf.patch supports RoPE-family methods only ({rotary}, optionally followed by "
        f"pi/ntk/dynamic-ntk/yarn) and nope; {encoding.info.name!r} is a {encoding.info.family} method "
        "that cannot be expressed as rotary cos/sin tables"
    )


def layer_encodings(
    hf: dict, spec: str | Mapping[str, str], train_len: int | None
) -> tuple[dict[str, PositionEncoding], list[str]]:
    """``{layer type: encoding}`` for the config dict ``hf`` (its own rope fields, never a patched
    one's) under ``spec``, and the notes :func:`ropelab.pe.compose` made.

    ``spec`` is one spec for every layer, each layer type's composed over its own rope (a windowed
    method runs over a type's own scaling), or, for a model with per-layer-type rope, a mapping
    ``{layer type: spec}`` (a type it leaves out keeps its own rope)."""
    ropes = layer_ropes(hf)
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(ropes))
        if ALL_LAYERS in ropes or unknown:
            have = "one rope for every layer" if ALL_LAYERS in ropes else f"layer types {', '.join(ropes)}"
            raise SpecError(
                f"hf.patch: a spec per layer type ({', '.join(map(str, spec))}) needs those layer types; "
                f"this {hf.get('model_type')} model has {have}"
            )
    encodings, notes = {}, []
    for kind, own in ropes.items():
        try:
            native = native_method(_rope(own), "hf.patch")
            wanted = spec.get(kind, native) if isinstance(spec, Mapping) else spec
            composed, note = pe_registry.compose(native, wanted)
            encodings[kind] = build_encoding(composed, pe_context(own, train_len))
        except RopelabError as error:
            if kind == ALL_LAYERS:
                raise
            hint = "" if isinstance(spec, Mapping) else " (a mapping {layer type: spec} patches layer types apart)"
            raise type(error)(f"{kind} layers: {error}{hint}") from None
        if note:
            notes.append(note if kind == ALL_LAYERS else f"{kind} layers: {note}")
    return encodings, notes


def recorded_spec(encodings: Mapping[str, PositionEncoding]):
    """What a patch records and :func:`ropelab.integrations.hf.patched_spec` reports: the one
    spec every layer runs, or ``{layer type: spec}`` where layer types run different ones."""
    specs = {kind: encoding.spec for kind, encoding in encodings.items()}
    return next(iter(specs.values())) if len(set(specs.values())) == 1 else specs
