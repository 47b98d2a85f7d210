"""ALiBi, KERPLE, FIRE, learned absolute: paper parameterisations checked by hand; trainable
ones receive gradients."""

from __future__ import annotations

import math

import pytest
import torch

from ropelab import ModelConfig, Transformer, pe
from ropelab.core.errors import RopelabError
from ropelab.pe.alibi import alibi_slopes
from ropelab.pe.base import PEContext


def ctx(n_heads=4, n_layers=2, train_len=64, dim=32):
    return PEContext(head_dim=8, n_heads=n_heads, train_len=train_len, dim=dim, n_layers=n_layers)


def test_alibi_slopes_for_8_heads_are_the_papers():
    # Press et al. 2022, Section 3: for 8 heads the slopes are 1/2^1 ... 1/2^8
    assert alibi_slopes(8) == pytest.approx([2.0**-i for i in range(1, 9)], rel=1e-12)


def test_alibi_slopes_for_12_heads_follow_the_reference_code():
    # not a power of two: the 8-head slopes, then every other slope of 16 heads (2^-0.5, 2^-1.5, ...)
    expected = [2.0**-i for i in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    assert alibi_slopes(12) == pytest.approx(expected, rel=1e-12)


def test_alibi_bias_is_minus_slope_times_distance():
    encoding = pe.build("alibi", ctx(n_heads=8))
    bias = encoding.attention_bias(0, torch.arange(6)[None], torch.arange(6)[None])
    assert bias.shape == (1, 8, 6, 6)
    assert bias[0, 0, 5, 2].item() == pytest.approx(-0.5 * 3)
    assert bias[0, 7, 4, 0].item() == pytest.approx(-(2.0**-8) * 4)
    assert (bias[0, :, 3, 3] == 0).all()


def test_kerple_log_and_power_formulas_by_hand():
    log = pe.build("kerple-log", ctx())
    with torch.no_grad():
        log.r1.fill_(0.7)
        log.r2.fill_(0.3)
    bias = log.attention_bias(1, torch.arange(5)[None], torch.arange(5)[None])
    assert bias[0, 2, 4, 1].item() == pytest.approx(-0.7 * math.log(1 + 0.3 * 3), rel=1e-6)

    power = pe.build("kerple-power", ctx())
    with torch.no_grad():
        power.r1.fill_(0.5)
        power.r2.fill_(1.5)
    bias = power.attention_bias(0, torch.arange(5)[None], torch.arange(5)[None])
    assert bias[0, 0, 4, 0].item() == pytest.approx(-0.5 * 4**1.5, rel=1e-6)
    # the exponent is clamped to (0, 2] and scales to >= 0.01, as in the authors' code
    with torch.no_grad():
        power.r2.fill_(3.0)
        power.r1.fill_(-1.0)
    bias = power.attention_bias(0, torch.arange(5)[None], torch.arange(5)[None])
    assert bias[0, 0, 4, 0].item() == pytest.approx(-0.01 * 4**2, rel=1e-6)


def test_kerple_initialisation_ranges_and_per_layer_parameters():
    torch.manual_seed(0)
    log = pe.build("kerple-log", ctx(n_heads=8, n_layers=3))
    assert log.r1.shape == (3, 8) and log.r2.shape == (3, 8)
    assert 0 <= log.r1.min() and log.r1.max() <= 2 and 0 <= log.r2.min() and log.r2.max() <= 1
    shared = pe.build("kerple-log:shared=true", ctx(n_heads=8, n_layers=3))
    assert shared.r1.shape == (1, 8)


def test_fire_formula_by_hand():
    torch.manual_seed(0)
    encoding = pe.build("fire:width=4,init_L=8", ctx(n_heads=2))
    fire = encoding.functions[1]
    q, k = torch.arange(12)[None], torch.arange(12)[None]
    bias = encoding.attention_bias(1, q, k)
    c, threshold = 0.1, 8.0
    for i, j in [(11, 3), (5, 5), (6, 0), (2, 1)]:
        x = math.log(c * (i - j) + 1) / (math.log(c * max(i, threshold) + 1) + 1e-6)
        expected = fire.mlp(torch.tensor([[x]], dtype=torch.float32))[0]
        torch.testing.assert_close(bias[0, :, i, j], expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("spec", ["kerple-log", "kerple-power", "fire", "learned"])
def test_trainable_encodings_receive_gradients(spec):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", pe=spec, vocab_size=50))
    ids = torch.randint(0, 50, (2, 24))
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    grads = [p.grad for p in model.pe.parameters() if p.requires_grad]
    assert grads, spec
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_learned_positions_beyond_the_table_give_a_clear_error():
    model = Transformer(ModelConfig.from_name("tiny", pe="learned", vocab_size=50, train_len=16))
    model(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(RopelabError, match="cannot extrapolate"):
        model(torch.zeros(1, 17, dtype=torch.long))
    from ropelab.model.inputs import check_inputs  # explicit positions: where inputs enter

    with pytest.raises(RopelabError, match="position 20 is outside the learned table"):
        check_inputs(model, torch.zeros(1, 3, dtype=torch.long), torch.tensor([0, 1, 20]))


def test_bias_methods_are_causal():
    """Changing a later token never changes earlier logits (the bias is merged with the causal mask)."""
    for spec in ("alibi", "kerple-log", "fire"):
        torch.manual_seed(0)
        model = Transformer(ModelConfig.from_name("tiny", pe=spec, vocab_size=50)).eval()
        ids = torch.randint(0, 50, (1, 20))
        other = ids.clone()
        other[0, 15:] = (other[0, 15:] + 1) % 50
        torch.testing.assert_close(model(ids)[:, :15], model(other)[:, :15])
