"""The FlexAttention path of windowed attention equals the chunked one, and the kernel choice.

The compiled kernel runs on CUDA only (torch's compiled CPU FlexAttention returns no log-sum-exp),
so CPU tests drive the same code uncompiled (``KERNEL = "flex-eager"``): the block masks, the
padding and sink masks and the log-sum-exp merge are what is checked here. ``bench gpu-check``
checks the compiled kernel against CPU on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from ropelab import ModelConfig, Transformer
from ropelab.core.errors import RopelabError
from ropelab.model import window_attention as wa

# FlexAttention warns that its uncompiled form is slow: that form is what these tests run
pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention.*without torch.compile")


@pytest.fixture
def kernel(monkeypatch):
    """Set ``window_attention.KERNEL`` for one test."""
    monkeypatch.setattr(wa, "_FLEX_FAILED", [])

    def use(name):
        monkeypatch.setattr(wa, "KERNEL", name)

    return use


def _inputs(batch, heads, kv_heads, queries, past, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q_near, q_far = torch.randn(2, batch, heads, queries, dim, generator=generator).unbind(0)
    k_near, k_far, value = torch.randn(3, batch, kv_heads, past + queries, dim, generator=generator).unbind(0)
    return q_near, q_far, k_near, k_far, value


def _both(kernel, inputs, window, past, **options):
    with torch.no_grad():
        kernel("chunked")
        chunked = wa.windowed_attention(*inputs, window, past, **options)
        kernel("flex-eager")
        flex = wa.windowed_attention(*inputs, window, past, **options)
    return chunked, flex


@pytest.mark.parametrize(
    ("batch", "heads", "kv_heads", "queries", "past", "window", "far_keys", "padding"),
    [
        (1, 4, 4, 300, 0, 40, None, None),  # plain prefill over several 128-blocks
        (2, 4, 2, 300, 0, 40, None, "left"),  # grouped-query attention, left padding
        (2, 4, 4, 100, 50, 40, 3, "right"),  # a cache of 50 keys, sinks, right padding
        (1, 2, 1, 200, 0, 40, 0, None),  # far_keys=0: plain sliding window
        (2, 2, 2, 64, 0, 500, None, "left"),  # window longer than the input: no far block
        (2, 2, 1, 70, 0, 0, None, "holes"),  # window 0: far tables everywhere; a mask with holes
    ],
)
def test_flex_path_equals_the_chunked_path(kernel, batch, heads, kv_heads, queries, past, window, far_keys, padding):
    inputs = _inputs(batch, heads, kv_heads, queries, past)
    key_mask = None
    if padding is not None:
        key_mask = torch.ones(batch, past + queries, dtype=torch.bool)
        if padding == "left":
            key_mask[-1, :17] = False
        elif padding == "right":
            key_mask[-1, -9:] = False
        else:
            key_mask[0, 5:9] = False
            key_mask[-1, 30:41] = False
    chunked, flex = _both(kernel, inputs, window, past, key_mask=key_mask, far_keys=far_keys)
    torch.testing.assert_close(flex, chunked, atol=2e-6, rtol=1e-5)
    if padding == "left":  # a query that sees no key: zero output from both, never NaN
        assert torch.equal(flex[-1, :, :17], torch.zeros_like(flex[-1, :, :17]))


def test_flex_path_in_bfloat16_keeps_float32_statistics(kernel):
    inputs = [t.to(torch.bfloat16) for t in _inputs(1, 2, 2, 256, 0)]
    reference = wa.windowed_attention(*[t.double() for t in inputs], 32, 0)
    chunked, flex = _both(kernel, inputs, 32, 0)
    assert flex.dtype == torch.bfloat16
    assert (flex.double() - reference).abs().max() <= (chunked.double() - reference).abs().max() * 2 + 1e-2


@pytest.mark.parametrize("spec", ["hirope:window=24", "rerope:window=24", "self-extend:window=24,group=4"])
def test_model_forward_with_padding_is_the_same_under_both_kernels(kernel, spec):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=61, train_len=32, pe=spec, init_std=0.1)).eval()
    ids = torch.randint(0, 61, (2, 96), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 96, dtype=torch.bool)
    mask[1, :20] = False
    with torch.no_grad():
        kernel("chunked")
        chunked = model(ids, attention_mask=mask)
        kernel("flex-eager")
        flex = model(ids, attention_mask=mask)
    torch.testing.assert_close(flex[mask], chunked[mask], atol=1e-5, rtol=1e-5)


def test_auto_keeps_cpu_decoding_and_training_on_the_chunked_kernel(kernel):
    kernel("auto")
    q, _, k, _, v = _inputs(1, 2, 2, 256, 0, dim=64)
    assert wa.kernel_for(q, k, v) == "chunked"  # CPU
    kernel("flex-eager")
    assert wa.kernel_for(q, k, v) == "flex-eager"
    q.requires_grad_(True)
    assert wa.kernel_for(q, k, v) == "chunked"  # gradients never go through the merged log-sum-exps
    with torch.no_grad():
        assert wa.kernel_for(q, k, v) == "flex-eager"


def test_auto_would_pick_flex_only_for_a_cuda_prefill(kernel, monkeypatch):
    """The device test of "auto", without a GPU: a stand-in tensor that reports a CUDA device."""

    class OnCuda:
        def __init__(self, shape):
            self.shape, self.requires_grad, self.device = shape, False, torch.device("cuda", 0)

    kernel("auto")
    assert wa.kernel_for(OnCuda((1, 2, 512, 64)), OnCuda((1, 2, 512, 64)), OnCuda((1, 2, 512, 64))) == "flex"
    assert wa.kernel_for(OnCuda((1, 2, 1, 64)), OnCuda((1, 2, 512, 64)), OnCuda((1, 2, 512, 64))) == "chunked"
    assert wa.kernel_for(OnCuda((1, 2, 512, 48)), OnCuda((1, 2, 512, 48)), OnCuda((1, 2, 512, 48))) == "chunked"
    monkeypatch.setattr(wa, "_FLEX_FAILED", ["it failed once"])
    assert wa.kernel_for(OnCuda((1, 2, 512, 64)), OnCuda((1, 2, 512, 64)), OnCuda((1, 2, 512, 64))) == "chunked"


def test_bad_kernel_names_and_compiled_flex_on_cpu_are_clear_errors(kernel):
    inputs = _inputs(1, 2, 2, 8, 0)
    kernel("fast")
    with pytest.raises(RopelabError, match=r"KERNEL must be one of auto, chunked, flex, flex-eager, got 'fast'"):
        wa.windowed_attention(*inputs, 4, 0)
    kernel("flex")
    with pytest.raises(RopelabError, match=r'KERNEL="flex" runs on CUDA only'):
        wa.windowed_attention(*inputs, 4, 0)


def test_a_failing_flex_kernel_falls_back_to_chunked_once_with_one_line(kernel, monkeypatch, capsys):
    inputs = _inputs(1, 2, 2, 200, 0)
    with torch.no_grad():
        kernel("chunked")
        expected = wa.windowed_attention(*inputs, 16, 0)
        kernel("auto")
        calls = []

        def broken(*args, **options):
            calls.append(options)
            raise RuntimeError("no compiler here\nsecond line")

        monkeypatch.setattr(wa, "_flex_windowed", broken)
        monkeypatch.setattr(wa, "kernel_for", lambda q, k, v: "chunked" if wa._FLEX_FAILED else "flex")
        first = wa.windowed_attention(*inputs, 16, 0)
        second = wa.windowed_attention(*inputs, 16, 0)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    assert len(calls) == 1 and calls[0] == {"compiled": True}
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "FlexAttention failed (RuntimeError: no compiler here); windowed attention runs chunked" in err


@pytest.mark.parametrize(
    ("queries", "past", "window", "chunk"),
    [
        (300, 0, 40, 64),  # prefill: far part one causal call, band in chunks
        (300, 0, 40, 7),  # chunks shorter than the window
        (64, 0, 500, 32),  # window longer than the input: no far part
        (1, 299, 40, 256),  # a decoding step (it takes _decode_step, before the fused path)
        (20, 30, 40, 256),  # a cached block that starts inside the window
        (20, 40, 40, 256),  # a cached block that starts exactly one window in
        (20, 50, 40, 256),  # a cached multi-query block past the window: the masked path takes over
        (50, 0, 1, 16),  # window 1: the band is the query's own key
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sinks", [None, 0, 4])
def test_fused_cpu_path_equals_the_masked_chunked_path(monkeypatch, queries, past, window, chunk, dtype, sinks):
    """Without padding the CPU runs the near band in PyTorch's fused kernel and the far part in one
    causal call (or, with sinks, one small masked block over the sink keys); the hand-masked band
    (what padding uses) is the reference."""
    inputs = [t.to(dtype) for t in _inputs(2, 4, 2, queries, past)]
    with torch.no_grad():
        fused = wa.windowed_attention(*inputs, window, past, chunk_size=chunk, far_keys=sinks)
        monkeypatch.setattr(wa, "_flash_cpu_ok", lambda *args: False)  # neither fused path nor decode step
        masked = wa.windowed_attention(*inputs, window, past, chunk_size=chunk, far_keys=sinks)
    tolerance = {"atol": 2e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(fused, masked, **tolerance)


@pytest.mark.parametrize(("past", "window"), [(299, 40), (10, 40), (40, 40), (39, 40), (0, 5), (100, 1)])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (6, 2), (9, 3)])
@pytest.mark.parametrize("sinks", [None, 0, 4])
def test_decoding_step_reads_the_shared_cache_in_place_and_equals_the_masked_path(
    monkeypatch, past, window, heads, kv_heads, sinks
):
    """A decoding step (one query, no padding) attends with the query heads of a key/value head as
    one kernel call's rows: the same output as the hand-masked path that copies the cache per head."""
    inputs = _inputs(2, heads, kv_heads, 1, past)
    copies = []
    original = torch.Tensor.repeat_interleave
    with torch.no_grad():
        monkeypatch.setattr(torch.Tensor, "repeat_interleave", lambda *a, **k: copies.append(1) or original(*a, **k))
        step = wa.windowed_attention(*inputs, window, past, far_keys=sinks)
        assert not copies  # the cache was not expanded per query head
        monkeypatch.setattr(wa, "_flash_cpu_ok", lambda *args: False)
        masked = wa.windowed_attention(*inputs, window, past, far_keys=sinks)
    torch.testing.assert_close(step, masked, atol=2e-6, rtol=1e-5)
