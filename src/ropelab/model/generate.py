"""Autoregressive decoding: greedy, temperature, top-k and top-p (nucleus) sampling.

With ``use_cache=True`` the prompt is prefilled once and each new token costs one single-token
forward against the KV cache; ``use_cache=False`` recomputes the whole sequence every step. Both
paths draw from the same seeded generator, so they give the same tokens (tested for every method).

Sampling settings are checked before any work (:func:`check_sampling`): ``temperature`` a finite
number >= 0, ``top_p`` in (0, 1], ``top_k`` and ``max_new_tokens`` integers. ``max_prompt_tokens``
bounds the prompt: a longer one is one :class:`RopelabError` before the model runs (no bound by
default in the library -- an evaluation feeds long inputs on purpose; ``ropelab generate`` bounds
prompts at :data:`PROMPT_LIMIT_FACTOR` times the model's training length unless
``--max-prompt-tokens`` says otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ropelab.core.checks import int_between, is_finite, is_int, is_real
from ropelab.core.errors import RopelabError
from ropelab.core.machine import physical_memory
from ropelab.model.inputs import check_inputs
from ropelab.model.positions import extend_positions


def sample_next(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, generator) -> Tensor:
    """Pick the next token from ``[B, vocab]`` logits; ``temperature == 0`` is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.to(torch.float32) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


#: ``ropelab generate``'s default bound on the prompt: this many times the model's training length
PROMPT_LIMIT_FACTOR = 4


def default_prompt_limit(train_len: int) -> int:
    """The longest prompt ``ropelab generate`` takes without ``--max-prompt-tokens``."""
    return PROMPT_LIMIT_FACTOR * train_len


def check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> None:
    """One :class:`RopelabError` for a setting decoding cannot use: ``max_new_tokens`` an integer
    >= 0, ``temperature`` a finite number >= 0 (0 = greedy; NaN or infinity is refused), ``top_k``
    an integer >= 1, ``top_p`` a number in (0, 1]."""
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise RopelabError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not is_finite(temperature) or temperature < 0:
        raise RopelabError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise RopelabError(f"top_k must be an integer >= 1, got {top_k!r}")
    if top_p is not None and (
        not is_real(top_p) or not 0 < top_p <= 1  # NaN fails too
    ):
        raise RopelabError(f"top_p must be in (0, 1], got {top_p!r}")


def check_cache_memory(config, rows: int, tokens: int, element_bytes: int, memory: int | None = None) -> None:
    """One :class:`RopelabError` when a KV cache of ``rows x tokens`` positions cannot fit in this
    machine's memory (:func:`ropelab.core.machine.physical_memory`): per position and layer the
    cache holds keys and values, plus a second key set for a windowed method (its far keys)."""
    memory = physical_memory() if memory is None else memory
    if memory is None:
        return
    per_token = 3 * config.n_layers * config.n_kv_heads * config.head_dim * element_bytes  # k, v, far k
    needed = rows * tokens * per_token
    if needed > memory:
        raise RopelabError(
            f"{tokens} tokens (prompt + max_new_tokens) need a KV cache of {needed / 2**30:.1f} GiB, more than this "
            f"machine's memory ({memory / 2**30:.1f} GiB); ask for fewer new tokens"
        )


def check_prompt_length(length: int, max_prompt_tokens: int | None) -> None:
    """One :class:`RopelabError` when a prompt of ``length`` tokens exceeds ``max_prompt_tokens``."""
    if max_prompt_tokens is None:
        return
    if not is_int(max_prompt_tokens) or max_prompt_tokens < 1:
        raise RopelabError(f"max_prompt_tokens must be a positive integer, got {max_prompt_tokens!r}")
    if length > max_prompt_tokens:
        raise RopelabError(
            f"the prompt is {length} tokens, more than the limit of {max_prompt_tokens}; shorten it or raise the "
            "limit (--max-prompt-tokens)"
        )


#: Prompt tokens per forward pass when a prompt fills a KV cache (:func:`prefill`): the
#: activations of one chunk at a time instead of the whole prompt's.
PREFILL_CHUNK = 2048


def prefill(
    model,
    ids: Tensor,
    cache=None,
    *,
    positions: Tensor | None = None,
    attention_mask: Tensor | None = None,
    chunk: int = PREFILL_CHUNK,
) -> Tensor:
    """Run the prompt ``ids [B, T]`` (into ``cache`` when given) and return the logits of its last
    position, ``[B, vocab]`` -- the LM head runs on that position only.

    With a cache the prompt goes in ``chunk`` tokens at a time, each attending to the cached ones:
    the same logits as one pass (to float rounding; tested for every method) with the activation
    memory of one chunk. An encoding whose rotation depends on the input length (dynamic NTK)
    takes the prompt in one pass, as its angles would otherwise change between chunks.
    ``positions`` and ``attention_mask`` are the whole prompt's, checked by the caller
    (:func:`ropelab.model.inputs.check_inputs`).
    """
    T = ids.shape[1]
    step = T if cache is None or model.pe.rotation_depends_on_length else max(1, chunk)
    for start in range(0, T, step):
        end = min(T, start + step)
        hidden = model.hidden_states(
            ids[:, start:end],
            positions=None if positions is None else positions[:, start:end],
            cache=cache,
            attention_mask=None if attention_mask is None else attention_mask[:, :end],
        )
    return model.lm_head(hidden[:, -1])


@torch.no_grad()
def stream(
    model,
    input_ids,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    positions: Tensor | None = None,
    attention_mask: Tensor | None = None,
    max_prompt_tokens: int | None = None,
) -> Iterator[Tensor]:
    """Yield the next token ids ``[B]`` one step at a time.

    ``positions``: the prompt's positions (e.g. HiRoPE's hierarchical ``[B, T, levels]``);
    generated tokens continue them (see :func:`ropelab.model.positions.extend_positions`).
    ``attention_mask``: ``[B, T]`` for a padded prompt (1 = real token, 0 = padding; pad on the
    left, so that every row's next token follows its last real one); generated tokens are real.
    ``max_prompt_tokens``: refuse a longer prompt (default: no bound).
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=model.embed_tokens.weight.device)
    if ids.dim() == 1:
        ids = ids[None]
    check_prompt_length(ids.shape[-1], max_prompt_tokens)
    if use_cache:
        element_bytes = model.embed_tokens.weight.element_size()
        check_cache_memory(model.config, ids.shape[0], ids.shape[-1] + max_new_tokens, element_bytes)
    generator = None
    if seed is not None and not int_between(seed, -(2**63), 2**64 - 1):
        raise RopelabError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
    if temperature > 0:
        generator = torch.Generator(device=ids.device)
        generator.manual_seed(0 if seed is None else seed)
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask, device=ids.device)
        if attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
        if attention_mask.dim() == 2 and attention_mask.shape[1] and not bool((attention_mask[:, -1] != 0).all()):
            raise RopelabError(
                "generate: every row's last prompt token must be real (attention_mask[:, -1] == 1): pad on the left"
            )
    ids, positions, attention_mask = check_inputs(model, ids, positions, None, attention_mask)  # once, here
    last = model.pe.max_position  # a learned table: every position decoding feeds must be in it
    if last is not None and max_new_tokens > 1:
        top = (int(positions.max()) if positions is not None else ids.shape[1] - 1) + max_new_tokens - 1
        if top > last:
            raise RopelabError(
                f"{model.pe.info.name}: decoding {max_new_tokens} tokens reaches position {top}, outside the learned "
                f"table (positions 0..{last}); ask for at most {max_new_tokens - (top - last)} new tokens"
            )
    cache = model.new_cache(capacity=ids.shape[1] + max_new_tokens) if use_cache else None  # written in place
    logits = prefill(model, ids, cache, positions=positions, attention_mask=attention_mask)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for step in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        yield token
        if bool(finished.all()) or step == max_new_tokens - 1:
            return
        if use_cache:
            logits = model(token[:, None], cache=cache)[:, -1]
        else:
            if positions is not None:
                positions = torch.cat((positions, extend_positions(positions, 1)), dim=1)
            ids = torch.cat((ids, token[:, None]), dim=1)
            if attention_mask is not None:  # a bool mask from check_inputs
                attention_mask = torch.cat((attention_mask, attention_mask.new_ones(ids.shape[0], 1)), dim=1)
            logits = prefill(model, ids, positions=positions, attention_mask=attention_mask)


def generate(model, input_ids, max_new_tokens: int, **kwargs) -> Tensor:
    """The new tokens ``[B, n]`` (``n <= max_new_tokens``; shorter if every row hit ``eos_id``)."""
    tokens = list(stream(model, input_ids, max_new_tokens, **kwargs))
    if not tokens:
        ids = torch.as_tensor(input_ids)
        return torch.zeros((1 if ids.dim() == 1 else ids.shape[0], 0), dtype=torch.long)
    return torch.stack(tokens, dim=1)
