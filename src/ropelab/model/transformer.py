"""A Llama-family decoder (Touvron et al. 2023): RMSNorm, SwiGLU, grouped-query attention,
optional q/k/v biases (Qwen2), tied or untied embeddings.

Parameter names follow Hugging Face's ``LlamaForCausalLM`` (minus the ``model.`` prefix), so HF
weights load by name. The position encoding is one module, ``self.pe``, reached only through
:class:`~ropelab.pe.base.PositionEncoding`'s hooks: rotation tables, an additive bias, an input
embedding. The model never looks at a method's name.

Attention uses ``scaled_dot_product_attention``. RoPE-family methods pass no mask (``is_causal``),
so no ``[T, T]`` float matrix is built; bias methods (ALiBi, KERPLE, FIRE) need their bias as a
float mask, built and used query chunk by query chunk (``ropelab.model.bias_attention``): memory
linear in ``T``, and only the keys each chunk may see.

Padded batches: ``attention_mask`` (``[B, past + T]``, 1 = real token, Hugging Face's convention)
masks padding keys on every attention path (a bool ``[B, 1, T, past + T]`` mask for SDPA, a
``-inf`` fill of each chunk's bias for bias methods, ``key_mask`` for windowed methods) and, when
no positions are given, places each row's real tokens at ``0, 1, 2, ...`` as HF generation does
(``cumsum(mask) - 1``, padding at 0). A padded row then gets, at its real tokens, the logits it
gets alone. A padding query attends only to itself (SDPA/bias paths) or to nothing (windowed
paths, zero output), so no row is ever NaN. Without a mask nothing changes (the mask-free fast
paths); :func:`ropelab.model.inputs.check_inputs` turns an all-ones mask into none.

The forward pass trusts its inputs and reads no tensor value on the host (no GPU stall); inputs
are checked once where they enter (:mod:`ropelab.model.inputs`).

Devices and dtypes: ``model.to(device)`` / ``model.to(torch.bfloat16)`` (or ``load_model(...,
device=, dtype=)``) move and cast the weights; inputs on another device are moved to the model's.
Whatever the dtype, positions and RoPE angles are float32: the cos/sin tables are built in float32
and cast to the activation dtype only at the multiply (Hugging Face Llama's choice, so bf16 logits
match ``transformers`` in bf16); the encoding's buffers stay float32 under a cast
(:meth:`ropelab.pe.base.PositionEncoding._apply`); bias methods attend in float32 so the bias is
never rounded; windowed attention keeps its softmax statistics in float32; RMSNorm normalises in
float32; losses come from float32 logits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ropelab import pe as pe_registry
from ropelab.core.errors import CheckpointError, RopelabError
from ropelab.core.log import log
from ropelab.model.bias_attention import bias_attention, has_bias
from ropelab.model.config import ModelConfig
from ropelab.model.generate import generate
from ropelab.model.inputs import check_inputs, outside_table
from ropelab.model.kv_cache import KVCache
from ropelab.model.positions import extend_positions
from ropelab.model.window_attention import causal_over_cache, windowed_attention
from ropelab.pe.base import PEContext, PositionEncoding, Rotation, WindowedRotation, apply_rotary


def _sdpa_supports_gqa() -> bool:
    q = torch.zeros(1, 2, 1, 2)
    kv = torch.zeros(1, 1, 1, 2)
    try:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
    except (TypeError, RuntimeError):
        return False
    return True


_SDPA_GQA = _sdpa_supports_gqa()


class RMSNorm(nn.Module):
    """Zhang & Sennrich 2019; normalises in float32 like HF Llama, scales in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


@dataclass(kw_only=True)
class AttentionInputs:
    """What every layer needs from the position encoding for one forward pass."""

    q_positions: Tensor
    k_positions: Tensor
    q_rotation: Rotation | None = None
    k_rotation: Rotation | None = None
    rotate_cached_keys: bool = False
    causal_mask: Tensor | None = None  # bool [Tq, Tk] or [B, 1, Tq, Tk]; None: "plain causal" or "no mask needed"
    is_causal: bool = False
    windowed: WindowedRotation | None = None  # near/far tables of a windowed method
    past: int = 0
    key_mask: Tensor | None = None  # bool [B, Tk], True = real token; None = no padding
    consecutive: bool = False  # every position (cached ones too) is the default 0, 1, 2, ...: known, not read
    cached_block: bool = False  # several new tokens after cached ones, plain causal: no padding


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.layout = config.rope_layout
        self.q_proj = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        if config.qk_norm:  # Qwen3: each head's query and key normalised before the rotation
            self.q_norm = RMSNorm(config.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.norm_eps)

    def forward(
        self, x: Tensor, layer: int, pe: PositionEncoding, inputs: AttentionInputs, cache: KVCache | None
    ) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if inputs.windowed is not None:
            out = self._windowed(q, k, v, layer, pe, inputs, cache)
            return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        if inputs.q_rotation is not None:
            q = apply_rotary(q, inputs.q_rotation, self.layout)
            if not inputs.rotate_cached_keys:
                k = apply_rotary(k, inputs.k_rotation, self.layout)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if inputs.rotate_cached_keys:
            k = apply_rotary(k, inputs.k_rotation, self.layout)

        if self.n_kv_heads != self.n_heads and not _SDPA_GQA:
            repeat = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        gqa = _SDPA_GQA and self.n_kv_heads != self.n_heads
        out = None
        if has_bias(pe):  # query chunk by query chunk: never a [heads, T, T] bias
            out = bias_attention(
                q,
                k,
                v,
                lambda q_pos, k_pos: pe.attention_bias(layer, q_pos, k_pos),
                inputs.q_positions,
                inputs.k_positions,
                causal=inputs.is_causal or inputs.causal_mask is not None,
                allowed=inputs.causal_mask,
                gqa=gqa,
                distance_bias=lambda distance: pe.distance_bias(layer, distance),
                consecutive=inputs.consecutive,
            )
        if out is None and inputs.cached_block:
            out = causal_over_cache(q, k, v)
        if out is None:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=inputs.causal_mask,
                is_causal=inputs.is_causal and inputs.causal_mask is None,
                **({"enable_gqa": True} if gqa else {}),
            )
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _windowed(self, q, k, v, layer, pe, inputs, cache):
        q_near, q_far, k_near, k_far = inputs.windowed.apply(q, k, self.layout)
        if cache is not None:
            k_near, v = cache.update(layer, k_near, v)
            k_far = cache.update_far(layer, k_far)
        return windowed_attention(
            q_near, q_far, k_near, k_far, v, pe.window, inputs.past, key_mask=inputs.key_mask, far_keys=pe.far_keys
        )


def _causal(q_len: int, k_len: int, device) -> Tensor:
    """Bool ``[q_len, k_len]``: query i (the last q_len of k_len tokens) sees keys 0..past+i."""
    past = k_len - q_len
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=past)


def _padded_causal(key_mask: Tensor, q_len: int) -> Tensor:
    """Bool ``[B, 1, q_len, k_len]``: causal, and only real keys -- plus each query's own key, so a
    padding query attends to itself and its row stays finite (its output is never used)."""
    k_len = key_mask.shape[1]
    past = k_len - q_len
    keys = torch.arange(k_len, device=key_mask.device)
    own = torch.arange(past, k_len, device=key_mask.device)[:, None] == keys[None]
    return _causal(q_len, k_len, key_mask.device) & (key_mask[:, None, None, :] | own)


class MLP(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.down_proj = nn.Linear(config.hidden_dim, config.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, layer, pe, inputs, cache):
        x = x + self.self_attn(self.input_layernorm(x), layer, pe, inputs, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """The decoder. ``model(input_ids)`` returns logits ``[batch, seq, vocab]``."""

    def __init__(self, config: ModelConfig, init_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        # without init (loading weights), hand the embedding an empty table: its own reset would
        # run normal_, which on the meta device imports torch's compiler stack (seconds)
        table = None if init_weights else torch.empty(config.vocab_size, config.dim)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim, _weight=table)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if init_weights:
            self._init_weights()
        self.pe = self._build_pe(config.pe)
        #: the method the model was built (or trained, or loaded) with: :meth:`with_method` keeps its
        #: frequency scaling (``ropelab.pe.compose``)
        self.native_spec = self.pe.spec
        self.native = pe_registry.spec_of(self.native_spec)  # parsed once

    @classmethod
    def from_state_dict(cls, config: ModelConfig, state: dict[str, Tensor]) -> Transformer:
        """A model holding ``state``, built without random initialisation.

        The skeleton is made on the meta device and the tensors are assigned, so loading a
        checkpoint costs no init time and no second copy of the weights. Weights that do not fit
        the config (missing, unexpected, wrong shape) raise :class:`CheckpointError` naming them.
        """
        with torch.device("meta"):
            model = cls(config, init_weights=False)
        if config.tie_embeddings:
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}  # the embedding serves
        problems = state_problems(model.state_dict(), state, config.tie_embeddings)
        if problems:
            raise CheckpointError("; ".join(problems))
        model.load_state_dict(state, strict=False, assign=True)
        if config.tie_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        # the encoding's angle tables are not stored: rebuild it for real, then give it its weights
        model.pe = model._build_pe(config.pe)
        model.pe.load_state_dict({k.removeprefix("pe."): v for k, v in state.items() if k.startswith("pe.")})
        left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise RopelabError(f"weights missing for: {', '.join(left[:5])}")
        return model

    # -- construction --------------------------------------------------------------------------
    def _init_weights(self) -> None:
        """N(0, init_std); residual projections scaled by 1/sqrt(2*n_layers) (GPT-2)."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = 1 / math.sqrt(2 * self.config.n_layers) if name.endswith(("o_proj", "down_proj")) else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)

    def pe_context(self) -> PEContext:
        c = self.config
        return PEContext(
            head_dim=c.head_dim,
            n_heads=c.n_heads,
            train_len=c.train_len,
            rope_base=c.rope_base,
            dim=c.dim,
            n_layers=c.n_layers,
        )

    def _build_pe(self, spec: str | pe_registry.Spec) -> PositionEncoding:
        encoding = pe_registry.build(spec, self.pe_context())
        device = self.embed_tokens.weight.device
        return encoding.to(device)

    def with_method(self, spec: str | pe_registry.Spec) -> Transformer:
        """Switch the position method in place, keeping the weights; returns ``self``.

        Methods with learned parameters (learned, KERPLE, FIRE) are freshly initialised when
        switched to, so switching makes sense between parameter-free methods (the RoPE family,
        NoPE, ALiBi) or onto a model trained with that method. Switching to the method the model
        already runs changes nothing (a trained KERPLE or FIRE keeps its parameters).

        The model's own frequency scaling (a checkpoint's rope type, e.g. ``rope+llama3:factor=8``)
        is kept or replaced only as :func:`ropelab.pe.compose` says: a windowed method runs over it,
        a spec naming another base replaces it with a log line, a lone transform that would drop it
        is refused.
        """
        composed, note = pe_registry.compose(self.native, spec)
        if self.pe.spec == composed.text:
            return self
        said = self.__dict__.setdefault("_notes_said", set())
        if note and note not in said:  # once per model: the runner switches methods often
            said.add(note)
            log(note)
        self.pe = self._build_pe(composed)
        self.config.pe = self.pe.spec
        return self

    def use(self, encoding: PositionEncoding) -> Transformer:
        """Run ``encoding`` from now on (an encoding object kept elsewhere, e.g. the model's own with
        its trained parameters); ``config.pe`` follows. Returns ``self``."""
        self.pe = encoding
        self.config.pe = encoding.spec
        return self

    @contextmanager
    def using(self, encoding: PositionEncoding) -> Iterator[Transformer]:
        """Run ``encoding`` inside the block only (the sliding-window reference of an evaluation),
        the encoding before it again afterwards; ``config.pe`` is not touched."""
        found = self.pe
        self.pe = encoding
        try:
            yield self
        finally:
            self.pe = found

    @property
    def device(self) -> torch.device:
        """The device of the weights (``model.to(device)`` moves the model; inputs follow it)."""
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights and activations (``model.to(torch.bfloat16)``); positions,
        angles, attention biases and losses stay float32 whatever it is."""
        return self.embed_tokens.weight.dtype

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    # -- forward -------------------------------------------------------------------------------
    def _attention_inputs(
        self,
        positions: Tensor,
        T: int,
        cache: KVCache | None,
        key_mask: Tensor | None = None,
        consecutive: bool = False,
    ) -> AttentionInputs:
        """The rotation tables and masks of one forward pass; ``consecutive``: the positions are
        known to be the default ``0, 1, 2, ...`` (cached ones too), so no method reads them."""
        past = cache.length if cache is not None else 0
        if past == 0:
            k_positions = positions
        else:
            cached = cache.positions
            if cached.shape[0] != positions.shape[0]:  # one shared row and a per-row batch
                rows = max(cached.shape[0], positions.shape[0])
                cached = cached.expand(rows, *cached.shape[1:])
                positions = positions.expand(rows, *positions.shape[1:])
            k_positions = torch.cat((cached, positions), dim=1)
        pe = self.pe
        rotate_cached = pe.rotation_depends_on_length
        if pe.is_windowed:
            if key_mask is None:
                index = torch.arange(past, past + T, device=positions.device)[None]
            else:  # each row's own sequence index: its real tokens are 0, 1, 2, ... (padding 0)
                index = (key_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, past:]
            windowed = pe.windowed_rotation(positions, index)
            return AttentionInputs(
                q_positions=positions,
                k_positions=k_positions,
                windowed=windowed,
                past=past,
                key_mask=key_mask,
                consecutive=consecutive,
            )
        if rotate_cached:  # one table for all keys, queries take its tail
            k_rot = pe.rotation(k_positions, length=past + T if consecutive else None)
            q_rot = None if k_rot is None else k_rot.rows(slice(past, None))
        else:
            q_rot = pe.rotation(positions)
            k_rot = q_rot
        if key_mask is not None:
            causal_mask, is_causal = _padded_causal(key_mask, T), False
        elif past == 0:
            causal_mask, is_causal = None, T > 1
        elif T == 1:
            causal_mask, is_causal = None, False
        else:
            causal_mask, is_causal = _causal(T, past + T, positions.device), False
        cached_block = key_mask is None and past > 0 and T > 1
        return AttentionInputs(
            cached_block=cached_block,
            q_positions=positions,
            k_positions=k_positions,
            q_rotation=q_rot,
            k_rotation=k_rot,
            rotate_cached_keys=rotate_cached,
            causal_mask=causal_mask,
            is_causal=is_causal,
            past=past,
            key_mask=key_mask,
            consecutive=consecutive,
        )

    @staticmethod
    def _key_mask(attention_mask, input_ids: Tensor, cache: KVCache | None) -> Tensor | None:
        """The bool key mask ``[B, past + T]`` (True = real token) of this call, or ``None`` when
        no mask was given and the cache holds none (checked at the boundary:
        :func:`ropelab.model.inputs.check_inputs`)."""
        cached = None if cache is None else cache.mask
        if attention_mask is None:
            if cached is None:
                return None
            return torch.cat((cached, cached.new_ones(input_ids.shape[0], input_ids.shape[1])), dim=1)
        mask = torch.as_tensor(attention_mask, device=input_ids.device)
        return mask if mask.dtype == torch.bool else mask != 0

    @staticmethod
    def _mask_positions(key_mask: Tensor, T: int, cache: KVCache | None) -> Tensor:
        """Positions ``[B, T]`` of the new tokens from the key mask, as Hugging Face generation
        makes them: each row's real tokens count 0, 1, 2, ... (continuing after the real cached
        tokens' positions), padding gets 0."""
        past = key_mask.shape[1] - T
        new = key_mask[:, past:]
        steps = new.long().cumsum(dim=1) - 1
        if past == 0:
            start = 0
        else:
            cached = cache.positions.expand(key_mask.shape[0], -1)
            real = key_mask[:, :past]
            last = torch.where(real, cached, torch.full_like(cached, -1)).amax(dim=1, keepdim=True)
            start = last + 1
        return torch.where(new, start + steps, torch.zeros_like(steps))

    @staticmethod
    def _positions(input_ids: Tensor, positions: Tensor | None, cache: KVCache | None) -> Tensor:
        T = input_ids.shape[1]
        past = cache.length if cache is not None else 0
        if positions is None:
            if cache is not None and cache.positions is not None and cache.positions.dim() == 3:
                return extend_positions(cache.positions, T)
            return torch.arange(past, past + T, device=input_ids.device)[None]
        positions = torch.as_tensor(positions, device=input_ids.device)
        return positions[None] if positions.dim() == 1 else positions

    def hidden_states(
        self,
        input_ids: Tensor,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Final normed hidden states ``[B, T, dim]``; the cache (if any) is extended in place.

        ``attention_mask``: ``[B, past + T]``, 1 (True) for a real token and 0 for padding (left
        or right), covering the cached tokens too; a cache remembers it, so later calls may omit
        it (their tokens are real). Without ``positions`` each row's real tokens are at
        ``0, 1, 2, ...`` (continuing after the cache); padding tokens' outputs are meaningless.

        The inputs are trusted: nothing here reads a tensor's value on the host (a GPU never
        waits). Untrusted input goes through :func:`ropelab.model.inputs.check_inputs` first, as
        ``generate``, :meth:`token_losses` and the evaluator do.
        """
        input_ids = torch.as_tensor(input_ids, device=self.device)  # inputs on any device follow the model
        T = input_ids.shape[1]
        key_mask = self._key_mask(attention_mask, input_ids, cache)
        hierarchical_cache = cache is not None and cache.length > 0 and cache.positions.dim() == 3
        default = positions is None and key_mask is None and (cache is None or cache.default_positions)
        past = cache.length if cache is not None else 0
        if default and self.pe.max_position is not None and past + T - 1 > self.pe.max_position:
            raise outside_table(self, past + T - 1)  # known from the shapes: no value is read
        if positions is None and key_mask is not None and not hierarchical_cache:  # (those extend the last segment)
            positions = self._mask_positions(key_mask, T, cache)
        positions = self._positions(input_ids, positions, cache)
        inputs = self._attention_inputs(positions, T, cache, key_mask, consecutive=default)
        x = self.embed_tokens(input_ids)
        extra = self.pe.input_embedding(positions)
        if extra is not None:
            x = x + extra.to(x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, i, self.pe, inputs, cache)
        if cache is not None:
            cache.positions = inputs.k_positions
            cache.mask = key_mask
            cache.default_positions = default
        return self.norm(x)

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Logits ``[B, T, vocab]``; ``attention_mask`` as in :meth:`hidden_states`."""
        return self.lm_head(self.hidden_states(input_ids, positions, cache, attention_mask))

    def token_losses(
        self,
        input_ids: Tensor,
        positions: Tensor | None = None,
        chunk_size: int = 1024,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Next-token negative log-likelihood ``[B, T-1]`` (float32): entry t scores token t+1.

        The LM head and the loss run over ``chunk_size`` positions at a time, so a long input
        never holds ``[T, vocab]`` float32 logits (16K tokens x 49K vocab would be 3 GB).
        With ``attention_mask`` (``[B, T]``, 1 = real token), entry t is 0 unless tokens t and
        t+1 are both real.
        """
        if chunk_size <= 0:  # checked before the forward pass
            raise RopelabError(f"chunk_size must be positive, got {chunk_size}")
        input_ids, positions, attention_mask = check_inputs(self, input_ids, positions, None, attention_mask)
        hidden = self.hidden_states(input_ids, positions, attention_mask=attention_mask)[:, :-1]
        losses = self.losses_from_hidden(hidden, input_ids[:, 1:], chunk_size)
        if attention_mask is not None:
            real = torch.as_tensor(attention_mask, device=losses.device) != 0
            losses = losses.masked_fill(~(real[:, :-1] & real[:, 1:]), 0.0)
        return losses

    def losses_from_hidden(self, hidden: Tensor, targets: Tensor, chunk_size: int = 1024) -> Tensor:
        """Negative log-likelihood ``[B, T]`` (float32) of ``targets [B, T]`` given final hidden
        states ``[B, T, D]``, the LM head run ``chunk_size`` positions at a time."""
        if chunk_size <= 0:
            raise RopelabError(f"chunk_size must be positive, got {chunk_size}")
        targets = torch.as_tensor(targets, device=hidden.device)
        losses = []
        for start in range(0, targets.shape[1], chunk_size):
            logits = self.lm_head(hidden[:, start : start + chunk_size]).float()
            target = targets[:, start : start + chunk_size]
            nll = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
            losses.append(nll.view(target.shape))
        if not losses:
            return hidden.new_zeros(targets.shape[0], 0, dtype=torch.float32)
        return torch.cat(losses, dim=1)

    def new_cache(self, capacity: int | None = None) -> KVCache:
        """An empty KV cache; ``capacity``: the tokens it will hold in all (prompt and new tokens),
        allocated exactly at the first write (without it, room for an eighth more, grown as needed)."""
        return KVCache(self.config.n_layers, capacity=capacity)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, **kwargs) -> Tensor:
        """Shorthand for :func:`ropelab.model.generate.generate`."""

        return generate(self, input_ids, max_new_tokens, **kwargs)


def state_problems(expected: dict[str, Tensor], state: dict[str, Tensor], tied: bool = False) -> list[str]:
    """What keeps ``state`` from loading where ``expected`` (a model's state dict) is: missing or
    unexpected tensors, wrong shapes (``tied``: the LM head shares the embedding, never stored)."""
    expected = dict(expected)
    if tied:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        shapes = ", ".join(f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in wrong[:3])
        problems.append(f"shape mismatch: {shapes}")
    return problems
