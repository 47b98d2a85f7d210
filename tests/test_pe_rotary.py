"""RoPE-family methods: relative-position invariance, layouts, fp32 angles, HoPE and its ablations,
YaRN's ramp, all against formulas worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ropelab import pe
from ropelab.pe.base import PEContext, Rotation, apply_rotary
from ropelab.pe.hope import frequency_bands, kept_frequencies
from ropelab.pe.rope import rope_theta

ROTARY_SPECS = [
    "rope",
    "hope",
    "hope-ab1",
    "hope-ab2",
    "hope-ab3",
    "pi:factor=4",
    "ntk:factor=4",
    "dynamic-ntk:factor=4",
    "yarn:factor=4",
    "hope+yarn:factor=2",
    "hope+pi:factor=4",
    "rope:base=500000",
]


def ctx(head_dim=64, train_len=512, base=10000.0):
    return PEContext(head_dim=head_dim, n_heads=2, train_len=train_len, rope_base=base)


def scores(encoding, q, k, q_pos, k_pos, layout="half", longest=4096):
    """q.k of a single query at each q_pos against keys at k_pos, after rotation.

    One extra position ``longest`` is included so length-dependent methods (dynamic NTK) build
    the same table for every call, as they do within one forward pass.
    """
    positions = torch.tensor([[*q_pos, *k_pos, longest]])
    rot = encoding.rotation(positions)
    n = len(q_pos)
    rq = Rotation(rot.cos[:, :n], rot.sin[:, :n])
    rk = Rotation(rot.cos[:, n:-1], rot.sin[:, n:-1])
    qr = apply_rotary(q.expand(1, 1, n, -1), rq, layout)
    kr = apply_rotary(k.expand(1, 1, len(k_pos), -1), rk, layout)
    return (qr * kr).sum(-1).flatten()


@pytest.mark.parametrize("spec", ROTARY_SPECS)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_score_depends_only_on_relative_position(spec, layout):
    torch.manual_seed(0)
    encoding = pe.build(spec, ctx())
    q, k = torch.randn(64, dtype=torch.float64).float(), torch.randn(64).float()
    # the same distances at very different absolute offsets
    a = scores(encoding, q, k, [10, 20, 900], [3, 20, 100])
    b = scores(encoding, q, k, [510, 520, 1400], [503, 520, 600])
    assert a.std() > 0
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("spec", ROTARY_SPECS)
def test_rotate_half_and_interleaved_layouts_are_equivalent(spec):
    """Moving channel pairs (j, j+d/2) to (2j, 2j+1) and rotating there gives the same vectors."""
    torch.manual_seed(1)
    encoding = pe.build(spec, ctx())
    x = torch.randn(2, 3, 7, 64)
    rot = encoding.rotation(torch.arange(100, 107)[None])
    half = apply_rotary(x, rot, "half")
    perm = torch.stack((torch.arange(32), torch.arange(32) + 32), dim=-1).flatten()  # interleaved <- half
    inter = apply_rotary(x[..., perm], rot, "interleaved")
    torch.testing.assert_close(inter, half[..., perm], atol=1e-6, rtol=0)


def test_apply_rotary_matches_hand_rotation():
    """One frequency pair rotated by a known angle, by hand."""
    theta = rope_theta(4, 10000.0)  # [1, 0.01]
    pos = 3.0
    rot = Rotation(torch.cos(pos * theta)[None, None], torch.sin(pos * theta)[None, None])
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)  # pairs (1,3) and (2,4) in half layout
    out = apply_rotary(x, rot, "half").flatten()
    c0, s0, c1, s1 = math.cos(3), math.sin(3), math.cos(0.03), math.sin(0.03)
    expected = torch.tensor([1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_angles_are_float32_for_bf16_inputs():
    """bf16 cannot hold 1001 exactly; angles must still come from exact fp32 positions."""
    encoding = pe.build("rope", ctx(head_dim=8))
    positions = torch.tensor([[1001, 4097, 16383]])
    rot = encoding.rotation(positions)
    assert rot.cos.dtype == torch.float32 and rot.sin.dtype == torch.float32
    theta = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    expected = torch.cos(positions[0, :, None].double() * theta).float()
    torch.testing.assert_close(rot.cos[0], expected, atol=2e-4, rtol=0)
    # applying to a bf16 tensor uses the fp32 tables (cast only at the multiply)
    x = torch.randn(1, 1, 3, 8).to(torch.bfloat16)
    assert apply_rotary(x, rot).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16/bf16"):
        encoding.rotation(positions.to(torch.bfloat16))


@pytest.mark.parametrize(
    ("head_dim", "train_len", "base", "kept"),
    [
        (64, 512, 1e4, 16),
        (128, 512, 1e4, 31),
        (64, 2048, 1e4, 21),
        (128, 2048, 1e4, 41),
        (128, 4096, 1e4, 46),
        (128, 8192, 5e5, 35),
    ],
)
def test_hope_kept_counts_match_methods_table(head_dim, train_len, base, kept):
    assert kept_frequencies(head_dim, train_len, base) == kept
    theta = pe.build("hope", ctx(head_dim, train_len, base)).plan().theta
    # the kept ones are exactly the first `kept` (highest) frequencies, unchanged from RoPE
    torch.testing.assert_close(theta[:kept], rope_theta(head_dim, base)[:kept], atol=0, rtol=0)
    assert (theta[kept:] == 0).all()


def test_hope_cutoff_uses_train_length_not_input_length():
    encoding = pe.build("hope", ctx(64, 512))
    short = encoding.rotation(torch.arange(10)[None])
    long = encoding.rotation(torch.arange(5000)[None])
    torch.testing.assert_close(short.cos[0, :10], long.cos[0, :10])


def test_hope_ablations_follow_the_paper_definitions():
    c = ctx(128, 512)
    theta = rope_theta(128, 1e4)
    bands = frequency_bands(theta, 512)
    # hand check of the band edges: activated = pi/L < theta < 2pi/L
    two_pi_l, pi_l = 2 * math.pi / 512, math.pi / 512
    assert bands["activated"].sum() > 0 and bands["lower"].sum() > 0
    for j, t in enumerate(theta.tolist()):
        assert bands["high"][j] == (t >= two_pi_l)
        assert bands["activated"][j] == (pi_l < t < two_pi_l)
        assert bands["lower"][j] == (t <= pi_l)
    hope = pe.build("hope", c).plan().theta
    ab1 = pe.build("hope-ab1", c).plan().theta
    ab2 = pe.build("hope-ab2", c).plan().theta
    ab3 = pe.build("hope-ab3", c).plan().theta
    # AB1: only the activated band is position-independent; the lower band keeps rotating
    assert torch.equal(ab1 == 0, bands["activated"])
    assert torch.equal(ab1[~bands["activated"]], theta[~bands["activated"]])
    # AB2: only the lower band is position-independent
    assert torch.equal(ab2 == 0, bands["lower"])
    assert torch.equal(ab2[~bands["lower"]], theta[~bands["lower"]])
    # HoPE drops the union
    assert torch.equal(hope == 0, bands["activated"] | bands["lower"])
    # AB3: no position-independent channel, every period within the training length
    assert (ab3 > 0).all()
    assert ab3.min() >= theta[bands["high"]].min() * (1 - 1e-6)
    assert math.isclose(float(ab3[0]), 1.0) and (ab3[1:] < ab3[:-1]).all()


def test_position_independent_channels_pass_unrotated():
    """HoPE's logit = q_h^T R(m-n) k_h + q_l^T k_l (Eq. 7): the low part ignores position."""
    c = ctx(64, 512)
    encoding = pe.build("hope", c)
    kept = kept_frequencies(64, 512)
    rot = encoding.rotation(torch.tensor([[0, 7, 333, 2000]]))
    x = torch.randn(1, 1, 4, 64)
    out = apply_rotary(x, rot)
    low = torch.cat((torch.arange(kept, 32), torch.arange(kept, 32) + 32))
    torch.testing.assert_close(out[..., low], x[..., low], atol=0, rtol=0)


def test_pi_divides_angles_and_ntk_rebases():
    c = ctx(64, 512)
    theta = rope_theta(64, 1e4)
    torch.testing.assert_close(pe.build("pi:factor=4", c).plan().theta, theta / 4)
    ntk = pe.build("ntk:factor=4", c).plan().theta
    expected = 1.0 / (1e4 * 4 ** (64 / 62)) ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    torch.testing.assert_close(ntk.double(), expected, rtol=1e-6, atol=0)
    # the highest frequency is untouched, the lowest is interpolated by exactly the factor
    assert ntk[0] == 1.0
    assert math.isclose(float(theta[-1] / ntk[-1]), 4 ** (62 / 64 * 64 / 62), rel_tol=1e-5)


def test_dynamic_ntk_is_rope_within_train_length_and_rebases_beyond():
    c = ctx(64, 512)
    encoding = pe.build("dynamic-ntk:factor=2", c)
    torch.testing.assert_close(encoding.plan(512).theta, rope_theta(64, 1e4))
    n = 2048
    base = 1e4 * ((2 * n / 512) - 1) ** (64 / 62)
    expected = 1.0 / base ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    torch.testing.assert_close(encoding.plan(n).theta.double(), expected, rtol=1e-6, atol=0)
    assert encoding.rotation_depends_on_length


def test_yarn_ramp_and_attention_factor_by_hand():
    # d=64, L=512, base 1e4: ramp from floor(d ln(L/(2pi*32)) / (2 ln b)) to ceil(d ln(L/(2pi)) / (2 ln b))
    d, L, b, s = 64, 512, 1e4, 4.0
    low = math.floor(d * math.log(L / (2 * math.pi * 32)) / (2 * math.log(b)))
    high = math.ceil(d * math.log(L / (2 * math.pi)) / (2 * math.log(b)))
    assert (low, high) == (3, 16)
    plan = pe.build("yarn:factor=4", ctx(d, L, b)).plan()
    theta = rope_theta(d, b)
    for j in range(d // 2):
        keep = 1 - min(max((j - low) / (high - low), 0.0), 1.0)
        expected = theta[j] / s * (1 - keep) + theta[j] * keep
        assert math.isclose(float(plan.theta[j]), float(expected), rel_tol=1e-6), j
    assert plan.theta[0] == theta[0]  # fast frequencies extrapolate
    assert math.isclose(float(plan.theta[-1]), float(theta[-1] / s), rel_tol=1e-6)  # slow ones interpolate
    assert math.isclose(plan.attention_factor, 0.1 * math.log(4) + 1)
    mixed = pe.build("yarn:factor=4,mscale=1,mscale_all_dim=0.5", ctx(d, L, b)).plan()
    assert math.isclose(mixed.attention_factor, (0.1 * math.log(4) + 1) / (0.05 * math.log(4) + 1))
    fixed = pe.build("yarn:factor=4,attention_factor=1.5", ctx(d, L, b)).plan()
    assert fixed.attention_factor == 1.5


def test_yarn_attention_factor_scales_the_tables():
    encoding = pe.build("yarn:factor=4", ctx(64, 512))
    rot = encoding.rotation(torch.arange(5)[None])
    radius = (rot.cos**2 + rot.sin**2).sqrt()
    torch.testing.assert_close(radius, torch.full_like(radius, 0.1 * math.log(4) + 1))


def test_hope_composes_with_scaling_and_zeros_stay_zero():
    c = ctx(64, 512)
    hope = pe.build("hope", c).plan().theta
    for spec in ("hope+pi:factor=4", "hope+yarn:factor=2", "hope+ntk:factor=4", "hope+dynamic-ntk:factor=2"):
        theta = pe.build(spec, c).plan(4096).theta
        assert torch.equal(theta == 0, hope == 0), spec
    torch.testing.assert_close(pe.build("hope+pi:factor=4", c).plan().theta, hope / 4)


def test_hierarchical_positions_read_per_frequency_levels():
    """A [B, T, levels] position tensor: frequency j reads level frequency_level[j]."""
    encoding = pe.build("rope", ctx(8, 512))
    encoding.frequency_level.copy_(torch.tensor([0, 0, 1, 1]))
    positions = torch.tensor([[[5, 2], [9, 3]]])
    rot = encoding.rotation(positions)
    theta = encoding.inv_freq
    expected = torch.stack([torch.tensor([5, 5, 2, 2]) * theta, torch.tensor([9, 9, 3, 3]) * theta])
    torch.testing.assert_close(rot.cos[0], expected.cos())
    with pytest.raises(ValueError, match="levels"):
        encoding.rotation(torch.zeros(1, 3, 1, dtype=torch.long))
