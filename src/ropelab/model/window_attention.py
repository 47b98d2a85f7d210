"""Attention for windowed methods (ReRoPE, Self-Extend, HiRoPE): two score sets merged by distance.

For query ``m`` and key ``n <= m`` (sequence indices) the logit is ``q_near[m] . k_near[n]`` when
``m - n < window`` and ``q_far[m] . k_far[n]`` otherwise.

Without padding (the common case: one unpadded sequence) the near band runs in PyTorch's fused
CPU kernel in query chunks under an additive distance mask, and the far part for all queries in one
causal call shifted by the window, or with sinks one small masked block over the sink keys
(:func:`_fused_cpu`). Otherwise:

Queries are processed in chunks ``[s, e)``. Keys before ``s - window + 1`` are far from every
query of the chunk and fully visible: that block is plain unmasked attention with the far
tables, done by a fused kernel that also returns its log-sum-exp (PyTorch's CPU flash kernel;
elsewhere a plain computation). The remaining *band* of keys ``[s - window + 1, e)`` (width
``chunk + window``) gets both score sets, merged by the distance mask and the causal mask. The two
blocks are combined exactly through their log-sum-exps. Memory is ``O(chunk x (chunk + window))``
per head beyond the kernel's own tiles: a 16K-token prefill never materialises ``T x T`` scores.
Softmax statistics are float32.

Two optional restrictions on which keys a query sees:

* ``key_mask`` (bool ``[B, Tk]``, True = a real token): padding keys are masked in both blocks. The
  fused kernel takes no mask: when the far block holds a padding key it runs row by row over each
  row's run of real keys (left or right padding), or, for any other mask, as a masked plain
  computation (``chunk x keys`` scores per head). Without padding the fused path is unchanged. A
  query that sees no key at all (a left-padding query) gets a zero output, never NaN.
* ``far_keys``: beyond the window only the first ``far_keys`` keys stay visible ("attention sinks",
  Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks", arXiv 2309.17453);
  ``far_keys=0`` is plain sliding-window attention. With a ``key_mask`` these are the first
  ``far_keys`` *real* keys of each row, so a padded row sees the sinks it would see alone.

Kernels (:data:`KERNEL`). On CUDA a prefill (at least :data:`FLEX_MIN_QUERIES` queries, nothing
recording gradients) runs as two compiled FlexAttention calls (``torch.nn.attention.flex_attention``):
the near tables under a block mask of the band ``0 <= distance < window``, the far tables under
``distance >= window``, each with the padding and sink masks, each returning its log-sum-exp; the
two are merged exactly as above. Both are fused kernels that skip fully masked blocks, so the work
is one causal attention plus a band of ``window`` keys per query, in ``O(T)`` memory. Everything
else (CPU, decoding, training) runs the chunked computation above, which needs no compiler. If
FlexAttention fails to compile under ``"auto"``, one ``ropelab:`` line says so and the process
runs chunked from then on.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch
from torch import Tensor

from ropelab.core.checks import is_int
from ropelab.core.errors import RopelabError
from ropelab.core.log import log

#: Queries per chunk; the band costs ``chunk x (chunk + window)`` scores per head.
CHUNK = 256

#: Which kernel runs windowed attention: ``"auto"`` (FlexAttention for a CUDA prefill, else
#: chunked), ``"chunked"``, ``"flex"`` (compiled FlexAttention wherever allowed: needs a compiler on
#: CPU) or ``"flex-eager"`` (FlexAttention uncompiled: dense scores, for checks on small inputs).
KERNEL = "auto"
KERNELS = ("auto", "chunked", "flex", "flex-eager")
#: "auto" picks FlexAttention only for at least this many queries (a decoding step stays chunked:
#: a compiled kernel per new key length would cost more than it saves).
FLEX_MIN_QUERIES = 128
_HAS_FLEX = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
#: head dimensions FlexAttention's compiled kernels take
_FLEX_HEAD_DIMS = (16, 32, 64, 128, 256)

_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _flash_cpu_ok(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether PyTorch's fused CPU attention kernel may run: its log-sum-exp carries no gradient,
    so only when nothing needs one."""
    return (
        _FLASH_CPU is not None
        and not _needs_grad(q, k, v)
        and q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.bfloat16)
    )


def _block(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Unmasked attention of ``q`` [B, H, C, d] over ``k``/``v`` [B, H, N, d]: (output, logsumexp)."""
    if _flash_cpu_ok(q, k, v):
        out, lse = _FLASH_CPU(q, k, v, 0.0, False, scale=scale)
        return out, lse.float()
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul((scores - lse[..., None]).exp().to(v.dtype), v), lse


def _masked_block(q: Tensor, k: Tensor, v: Tensor, scale: float, visible: Tensor) -> tuple[Tensor, Tensor]:
    """Attention of ``q`` over the keys where ``visible`` ([B, N] bool) is True: (output, logsumexp).

    A row with no visible key gets output 0 and log-sum-exp ``-inf`` (it then adds nothing when
    merged), with finite gradients."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scale)
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    top = scores.amax(dim=-1, keepdim=True)
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = (scores - shift).exp()
    total = weights.sum(dim=-1, keepdim=True)
    seen = total > 0
    total = torch.where(seen, total, 1.0)  # a row that sees nothing: weights 0, output 0
    out = torch.matmul((weights / total).to(v.dtype), v)
    lse = torch.where(seen, total.log() + shift, float("-inf"))
    return out, lse[..., 0]


def _runs(visible: Tensor) -> list[tuple[int, int]] | None:
    """Per row of ``visible [B, N]``: ``(first, stop)`` of its one run of True entries (``(0, 0)``
    for none), or ``None`` when some row has more than one run."""
    flags = visible.long()
    starts = flags[:, :1] + (flags[:, 1:] > flags[:, :-1]).long().sum(dim=1, keepdim=True)
    if bool((starts > 1).any()):
        return None
    index = torch.arange(visible.shape[1], device=visible.device)
    first = torch.where(visible, index, visible.shape[1]).amin(dim=1)
    stop = torch.where(visible, index + 1, 0).amax(dim=1)
    return [(int(a), int(b)) if b > a else (0, 0) for a, b in zip(first.tolist(), stop.tolist())]


def _far_block(
    q: Tensor, k: Tensor, v: Tensor, scale: float, visible: Tensor | None, runs: list[tuple[int, int]] | None
) -> tuple[Tensor, Tensor]:
    """The far block over keys ``[0, N)`` where ``visible`` ([B|1, N]) allows: the fused kernel when
    every key is visible, or row by row over each row's one run of visible keys (left/right
    padding, sinks), else the masked plain computation."""
    if visible is None or bool(visible.all()):
        return _block(q, k, v, scale)
    if runs is None or visible.shape[0] != q.shape[0]:
        return _masked_block(q, k, v, scale, visible)
    N = k.shape[2]
    outs, lses = [], []
    for row, (first, stop) in enumerate(runs):
        stop = min(stop, N)
        if stop > first:
            out, lse = _block(q[row : row + 1], k[row : row + 1, :, first:stop], v[row : row + 1, :, first:stop], scale)
        else:  # this row sees no far key
            out = torch.zeros_like(q[row : row + 1])
            lse = torch.full(q.shape[1:3], float("-inf"), device=q.device)[None]
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def kernel_for(q: Tensor, k: Tensor, v: Tensor) -> str:
    """The kernel :func:`windowed_attention` uses for queries ``q`` and keys ``k`` (see :data:`KERNEL`)."""
    if KERNEL not in KERNELS:
        raise RopelabError(f"window_attention.KERNEL must be one of {', '.join(KERNELS)}, got {KERNEL!r}")
    if KERNEL == "chunked" or _needs_grad(q, k, v) or not _HAS_FLEX:
        return "chunked"  # the merged log-sum-exps are not differentiated through FlexAttention here
    if KERNEL == "auto":
        fits = q.device.type == "cuda" and q.shape[2] >= FLEX_MIN_QUERIES and q.shape[-1] in _FLEX_HEAD_DIMS
        return "flex" if fits and not _FLEX_FAILED else "chunked"
    if KERNEL == "flex" and q.device.type == "cpu":
        # torch's compiled CPU FlexAttention returns no log-sum-exp, which the merge needs
        raise RopelabError('window_attention.KERNEL="flex" runs on CUDA only; on CPU use "chunked" or "flex-eager"')
    return KERNEL


#: set when FlexAttention failed under "auto": the process runs chunked from then on
_FLEX_FAILED: list[str] = []


@functools.cache
def _flex_attention(compiled: bool):
    """``flex_attention``, compiled once per process when ``compiled``."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if compiled else flex_attention


def _flex_windowed(
    q_near: Tensor,
    q_far: Tensor,
    k_near: Tensor,
    k_far: Tensor,
    value: Tensor,
    window: int,
    past: int,
    key_mask: Tensor | None,
    far_visible: Tensor | None,
    compiled: bool,
) -> Tensor:
    """:func:`windowed_attention` as two FlexAttention calls (near band, far part) merged through
    their log-sum-exps. ``far_visible``: bool ``[B|1, Tk]``, the keys visible beyond the window."""
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask

    flex = _flex_attention(compiled)
    B, H, Tq, _ = q_near.shape
    Tk = k_near.shape[2]
    gqa = H != k_near.shape[1]
    batch = None if key_mask is None and far_visible is None else B
    if key_mask is not None:
        key_mask = key_mask.expand(B, Tk)
    if far_visible is not None:
        far_visible = far_visible.expand(B, Tk)

    def near(b, h, m, n):
        distance = m + past - n
        seen = (distance >= 0) & (distance < window)
        return seen if key_mask is None else seen & key_mask[b, n]

    def far(b, h, m, n):
        seen = m + past - n >= window
        return seen if far_visible is None else seen & far_visible[b, n]

    def attend(q, k, mask_mod):
        mask = create_block_mask(mask_mod, batch, None, Tq, Tk, device=q.device, _compile=compiled)
        out, aux = flex(q, k, value, block_mask=mask, enable_gqa=gqa, return_aux=AuxRequest(lse=True))
        return out.float(), aux.lse.float()[..., None]  # a query that sees no key: output 0, lse -inf

    near_out, near_lse = attend(q_near, k_near, near)
    if window >= past + Tq:  # every pair lies inside the window: no far block
        return near_out.to(value.dtype)
    far_out, far_lse = attend(q_far, k_far, far)
    return _merge(near_out, near_lse, far_out, far_lse).to(value.dtype)


def _merge(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> Tensor:
    """Softmax attention over two disjoint key sets from each set's output and log-sum-exp
    (``[..., 1]``, float32; ``-inf`` where a query sees no key of the set; 0 where it sees none)."""
    top = torch.maximum(lse_a, lse_b)
    top = torch.where(torch.isfinite(top), top, 0.0)
    weight_a, weight_b = (lse_a - top).exp(), (lse_b - top).exp()
    total = weight_a + weight_b
    return (out_a.float() * weight_a + out_b.float() * weight_b) / torch.where(total > 0, total, 1.0)


def causal_over_cache(q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
    """Causal attention of ``q [B, H, T, d]`` (the last ``T`` of ``K`` tokens) over ``k, v
    [B, Hkv, K, d]`` without padding, on the CPU without autograd: the cached keys in one unmasked
    call of PyTorch's fused kernel and the new block in one causal call, merged by their log-sum-exps
    -- a prompt prefilled chunk by chunk then needs no ``T x K`` mask (which the kernel would read for
    every layer). ``None`` where that kernel cannot run (the caller uses its masked path)."""
    past = k.shape[2] - q.shape[2]
    if past <= 0 or not _flash_cpu_ok(q, k, v):
        return None
    old, old_lse = _FLASH_CPU(q, k[:, :, :past], v[:, :, :past], 0.0, False)
    new, new_lse = _FLASH_CPU(q, k[:, :, past:], v[:, :, past:], 0.0, True)
    return _merge(old, old_lse.float()[..., None], new, new_lse.float()[..., None]).to(v.dtype)


def _decode_step(
    q_near: Tensor, q_far: Tensor, k_near: Tensor, k_far: Tensor, value: Tensor, window: int, sinks: int | None
) -> Tensor:
    """One query per row (a decoding step, no padding) over the whole cache in PyTorch's fused CPU
    kernel: the last ``window`` keys through the near tables, the keys before them through the far
    ones (only the first ``sinks`` of those when set), merged by their log-sum-exps. The query heads
    that share a key/value head are that kernel call's query rows, so the cache is read in place --
    never copied per query head, which made a decoding step several times slower than plain RoPE's."""
    B, H, _, d = q_near.shape
    heads = k_near.shape[1]
    keys = k_near.shape[2]
    scale = 1.0 / math.sqrt(d)
    split = max(0, keys - window)  # keys before it are at distance >= window from the query

    def grouped(q: Tensor) -> Tensor:  # [B, H, 1, d] -> [B, Hkv, H / Hkv, d]: head h = kv * groups + j
        return q.reshape(B, heads, H // heads, d)

    out, lse = _FLASH_CPU(grouped(q_near), k_near[:, :, split:], value[:, :, split:], 0.0, False, scale=scale)
    far = split if sinks is None else min(sinks, split)
    if far > 0:
        far_out, far_lse = _FLASH_CPU(grouped(q_far), k_far[:, :, :far], value[:, :, :far], 0.0, False, scale=scale)
        out = _merge(out, lse.float()[..., None], far_out, far_lse.float()[..., None]).to(value.dtype)
    return out.reshape(B, H, 1, d)


def _fused_cpu(
    q_near: Tensor,
    q_far: Tensor,
    k_near: Tensor,
    k_far: Tensor,
    value: Tensor,
    window: int,
    past: int,
    chunk: int,
    sinks: int | None = None,
) -> Tensor | None:
    """Windowed attention without padding, the near band in PyTorch's fused CPU kernel: the far
    part (``distance >= window``) for all queries at once -- it is causal attention of query ``m``
    over keys ``n <= m - window``, i.e. a causal kernel call on the queries from index ``window``
    against the keys shifted by ``window``; with ``sinks`` (only the first ``sinks`` keys visible
    beyond the window) a small masked block over those keys -- and the near band (``0 <= distance <
    window``) chunk by chunk with an additive mask of ``chunk x (chunk + window)``. ``None`` when
    the far part is not a plain causal block (a multi-query step on a cache longer than the window)."""
    B, H, Tq, d = q_near.shape
    Tk = k_near.shape[2]
    scale = 1.0 / math.sqrt(d)
    start = max(0, window - past)  # the first query index that sees any far key
    far_keys = Tk - window
    if sinks is None and start < Tq and Tq - start != far_keys:
        return None
    far_out = far_lse = None
    if start < Tq and sinks is not None:
        count = min(sinks, far_keys)
        if count > 0:  # query m sees sink n beyond the window when n <= m - window
            queries = torch.arange(past + start, past + Tq, device=q_far.device)[:, None]
            visible = torch.arange(count, device=q_far.device)[None] <= queries - window
            scores = torch.matmul(q_far[:, :, start:], k_far[:, :, :count].transpose(-1, -2)).float().mul_(scale)
            far_lse = scores.masked_fill_(~visible, float("-inf")).logsumexp(dim=-1, keepdim=True)
            weights = (scores - torch.where(torch.isfinite(far_lse), far_lse, 0.0)).exp()  # 0 where none is seen
            far_out = torch.matmul(weights.to(value.dtype), value[:, :, :count])
    elif start < Tq:
        queries = q_far[:, :, start:]
        causal = queries.shape[2] > 1
        far_out, far_lse = _FLASH_CPU(queries, k_far[:, :, :far_keys], value[:, :, :far_keys], 0.0, causal, scale=scale)
        far_lse = far_lse.float()[..., None]
    out = torch.empty(B, H, Tq, d, dtype=value.dtype, device=value.device)
    masks: dict[tuple[int, int, int], Tensor] = {}
    for first in range(0, Tq, chunk):
        stop = min(Tq, first + chunk)
        band = max(0, past + first - window + 1)
        shape = (stop - first, past + first - band, past + stop - band)
        if shape not in masks:  # the additive distance mask depends on the chunk's shape only
            distance = torch.arange(shape[1], shape[1] + shape[0])[:, None] - torch.arange(shape[2])[None]
            near = (distance >= 0) & (distance < window)
            masks[shape] = torch.zeros(near.shape, dtype=q_near.dtype).masked_fill_(~near, float("-inf"))
        near_out, near_lse = _FLASH_CPU(
            q_near[:, :, first:stop],
            k_near[:, :, band : past + stop],
            value[:, :, band : past + stop],
            0.0,
            False,
            attn_mask=masks[shape],
            scale=scale,
        )
        seen = max(first, start)  # queries of this chunk from here on also see far keys
        if far_out is None or seen >= stop:
            out[:, :, first:stop] = near_out
            continue
        out[:, :, first:seen] = near_out[:, :, : seen - first]
        out[:, :, seen:stop] = _merge(
            near_out[:, :, seen - first :],
            near_lse.float()[:, :, seen - first :, None],
            far_out[:, :, seen - start : stop - start],
            far_lse[:, :, seen - start : stop - start],
        ).to(value.dtype)
    return out


def windowed_attention(
    q_near: Tensor,
    q_far: Tensor,
    k_near: Tensor,
    k_far: Tensor,
    value: Tensor,
    window: int,
    past: int,
    chunk_size: int | None = None,
    key_mask: Tensor | None = None,
    far_keys: int | None = None,
) -> Tensor:
    """Causal attention of queries ``[B, H, Tq, d]`` (sequence indices ``past .. past+Tq-1``) over
    keys/values ``[B, Hkv, Tk, d]`` (indices ``0 .. Tk-1``, ``Tk = past + Tq``).

    ``key_mask``: bool ``[B|1, Tk]``, True where the key is a real token that may be attended
    (padding keys are False). ``far_keys``: when set, a pair at distance ``>= window`` is visible
    only for the first ``far_keys`` keys (counting real keys only when ``key_mask`` is given).
    Queries that see no key get a zero output."""
    B, H, Tq, d = q_near.shape
    Tk = k_near.shape[2]
    device = q_near.device

    if key_mask is not None:
        key_mask = torch.as_tensor(key_mask, device=device)
        if key_mask.dim() != 2 or key_mask.shape[0] not in (1, B) or key_mask.shape[1] != Tk:
            raise RopelabError(f"key_mask must be bool [{B} or 1, {Tk}] (True = real key), got {tuple(key_mask.shape)}")
        key_mask = key_mask.to(torch.bool)
        if bool(key_mask.all()):
            key_mask = None  # nothing masked: the unmasked (fused) path
    if far_keys is not None and not (is_int(far_keys) and far_keys >= 0):
        raise RopelabError(f"far_keys must be a non-negative integer or None, got {far_keys!r}")

    # keys visible beyond the window ([B|1, Tk] bool, None = all), and the first column past the last one
    sinks: Tensor | None = None
    far_limit = Tk
    if far_keys is not None:
        if key_mask is None:
            sinks = torch.arange(Tk, device=device)[None] < far_keys
            far_limit = min(far_keys, Tk)
        else:
            sinks = key_mask & (key_mask.long().cumsum(dim=1) <= far_keys)
            columns = sinks.any(dim=0).nonzero()
            far_limit = int(columns.max()) + 1 if columns.numel() else 0
    far_visible = key_mask if sinks is None else (sinks if key_mask is None else sinks & key_mask)
    kernel = kernel_for(q_near, k_near, value)
    if kernel != "chunked":
        args = (q_near, q_far, k_near, k_far, value, window, past, key_mask, far_visible)
        if KERNEL != "auto":
            return _flex_windowed(*args, compiled=kernel == "flex")
        try:
            return _flex_windowed(*args, compiled=True)
        except Exception as error:  # documented fallback: compile failures come in many types
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            _FLEX_FAILED.append(first)
            log(f"FlexAttention failed ({type(error).__name__}: {first}); windowed attention runs chunked from now on")

    if Tq == 1 and key_mask is None and window >= 1 and _flash_cpu_ok(q_near, k_near, value):
        return _decode_step(q_near, q_far, k_near, k_far, value, window, far_keys)
    groups = H // k_near.shape[1]
    if groups > 1:  # grouped-query attention: give every query head its key/value head
        k_near, k_far, value = (t.repeat_interleave(groups, dim=1) for t in (k_near, k_far, value))
    chunk_size = chunk_size or CHUNK
    plain = far_visible is None or (key_mask is None and far_keys is not None)  # no padding: sinks at most
    if plain and window >= 1 and _flash_cpu_ok(q_near, k_near, value):
        fused = _fused_cpu(q_near, q_far, k_near, k_far, value, window, past, chunk_size, far_keys)
        if fused is not None:
            return fused
    scale = 1.0 / math.sqrt(d)
    may_see_nothing = far_visible is not None  # some query may have no visible key at all
    far_runs = None if far_visible is None else _runs(far_visible)

    out = torch.empty(B, H, Tq, d, dtype=value.dtype, device=device)
    for start in range(0, Tq, chunk_size):
        stop = min(Tq, start + chunk_size)
        first = past + start  # sequence index of the chunk's first query
        n_keys = past + stop
        band = max(0, first - max(window, 1) + 1)  # keys before it are far from every query here

        # the band: both score sets, distance mask, causal mask (and padding / sink masks)
        distance = (
            torch.arange(first, past + stop, device=device)[:, None] - torch.arange(band, n_keys, device=device)[None]
        )
        near = torch.matmul(q_near[:, :, start:stop], k_near[:, :, band:n_keys].transpose(-1, -2)).float()
        if band < far_limit:
            far = torch.matmul(q_far[:, :, start:stop], k_far[:, :, band:n_keys].transpose(-1, -2)).float()
        else:  # no key of the band is visible beyond the window (sinks lie before it): far pairs are masked
            far = near
        hidden = distance < 0
        if sinks is not None:
            hidden = hidden | ((distance >= window) & ~sinks[:, None, None, band:n_keys])
        if key_mask is not None:
            hidden = hidden | ~key_mask[:, None, None, band:n_keys]
        scores = torch.where(distance < window, near, far).mul_(scale).masked_fill_(hidden, float("-inf"))
        band_max = scores.amax(dim=-1, keepdim=True)  # -inf for a query that sees no key of the band
        shift = torch.where(torch.isfinite(band_max), band_max, 0.0) if may_see_nothing else band_max
        # in place when nothing is recorded for backward (inference: one less score-sized buffer)
        weights = (scores - shift).exp() if torch.is_grad_enabled() else scores.sub_(shift).exp_()
        numerator = torch.matmul(weights.to(value.dtype), value[:, :, band:n_keys]).float()
        denominator = weights.sum(dim=-1, keepdim=True)

        far_end = min(band, far_limit)
        if far_end > 0:  # everything before the band: far tables only
            q, k, v = q_far[:, :, start:stop], k_far[:, :, :far_end], value[:, :, :far_end]
            visible = None if far_visible is None else far_visible[:, :far_end]
            far_out, far_lse = _far_block(q, k, v, scale, visible, far_runs)
            far_lse = far_lse[..., None]
            top = torch.maximum(far_lse, band_max)
            if may_see_nothing:  # a query that sees nothing at all: both are -inf
                top = torch.where(torch.isfinite(top), top, 0.0)
            far_weight, band_weight = (far_lse - top).exp(), (band_max - top).exp()
            numerator = far_out.float() * far_weight + numerator * band_weight
            denominator = far_weight + denominator * band_weight
        if may_see_nothing:  # a query that sees no key: numerator and denominator 0, output 0
            denominator = torch.where(denominator > 0, denominator, 1.0)
        out[:, :, start:stop] = (numerator / denominator).to(value.dtype)
    return out
