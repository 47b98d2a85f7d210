"""ropelab.analysis: the decomposition against the model's real attention and a by-hand Eq. 4, VAF
and the OOD score on hand-worked numbers, the probe's construction, band indices worked by hand,
path discovery, and ``ropelab analyze`` end to end (tiny models) including its error paths."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ropelab import ModelConfig, Transformer, save_checkpoint
from ropelab.analysis import (
    activated_band,
    band_indices,
    capture,
    component_analysis,
    discover,
    measure,
    ood_scores,
    probe_inputs,
    vaf,
)
from ropelab.analysis.measure import Measurement
from ropelab.analysis.ood import ks_distance
from ropelab.analysis.pattern import shape_of
from ropelab.analysis.pipeline import parse_layers
from ropelab.cli import main
from ropelab.core.errors import RopelabError
from ropelab.pretrained.tokenizer import Tokenizer
from tests.helpers import byte_level_bpe

TEXT = '''import os


def first(values):
    """The first value."""
    return values[0]


class Box:
    def __init__(self, size):
        self.size = size

    def area(self):
        return self.size * self.size


def total(boxes):
    return sum(box.area() for box in boxes)
'''


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return byte_level_bpe([TEXT * 4], 300, special_tokens=["<bos>", "<eos>"], bos_id=0, eos_id=1)


def tiny(pe: str = "rope", layout: str = "half", train_len: int = 32, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig.from_name("tiny", pe=pe, rope_layout=layout, train_len=train_len, vocab_size=320)
    return Transformer(config).eval()


def attention_io(model: Transformer, ids: torch.Tensor, positions=None):
    """Each attention module's real input and output, recorded by hooks during a normal forward."""
    inputs, outputs, handles = {}, {}, []
    for i, block in enumerate(model.layers):
        handles.append(block.self_attn.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0])))
        handles.append(block.self_attn.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o)))
    with torch.no_grad():
        model(ids, positions=positions)
    for handle in handles:
        handle.remove()
    return inputs, outputs


# -- decomposition ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pe,layout",
    [
        ("rope", "half"),
        ("rope", "interleaved"),
        ("hope", "half"),
        ("yarn:factor=2", "half"),
        ("hirope:window=8", "half"),
        ("self-extend:window=8,group=2", "interleaved"),
        ("alibi", "half"),
    ],
)
def test_logits_are_the_models_and_components_sum_to_them(pe, layout):
    """Independent reference: the model's own attention output. softmax(our logits) @ v through
    o_proj must reproduce it; then the Eq. 4 components (+ bias) must sum to those logits."""
    model = tiny(pe, layout)
    ids = torch.randint(0, 320, (2, 40), generator=torch.Generator().manual_seed(1))
    real_in, real_out = attention_io(model, ids)
    terms = {}
    capture(model, ids, lambda t: terms.__setitem__(t.layer, t))
    assert sorted(terms) == [0, 1]
    for layer, block in enumerate(model.layers):
        attn, t = block.self_attn, terms[layer]
        logits = t.logits()
        v = attn.v_proj(real_in[layer]).view(2, 40, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        v = v.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)
        out = attn.o_proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 40, -1))
        torch.testing.assert_close(out, real_out[layer], atol=1e-6, rtol=0)
        parts = t.components()
        assert parts.shape == (2, attn.n_heads, 40, 40, attn.head_dim // 2) and parts.dtype == torch.float32
        total = parts.sum(-1) + (t.bias if t.bias is not None else 0)
        causal = torch.isfinite(logits)
        assert causal.sum() == 2 * attn.n_heads * 40 * 41 // 2
        assert (total - logits)[causal].abs().max() < 1e-5


def test_components_equal_eq4_by_hand():
    """C_j = [(q0 k0 + q1 k1) cos((m-n) theta_j) + (q0 k1 - q1 k0) sin((m-n) theta_j)] / sqrt(d),
    from the unrotated projections and float64 angles, for the last query (the probe's)."""
    model = tiny("rope", "half")
    ids = torch.randint(0, 320, (1, 30), generator=torch.Generator().manual_seed(2))
    real_in, _ = attention_io(model, ids)
    terms = {}
    capture(model, ids, lambda t: terms.__setitem__(t.layer, t), queries="last", layers=[1])
    attn = model.layers[1].self_attn
    d, half = attn.head_dim, attn.head_dim // 2
    x = real_in[1][0].double()
    q = (x @ attn.q_proj.weight.double().T).view(30, attn.n_heads, d)[-1]  # [H, d], query m = 29
    k = (x @ attn.k_proj.weight.double().T).view(30, attn.n_kv_heads, d)
    k = k.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)  # [T, H, d]
    theta = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / d)
    angle = (29 - torch.arange(30, dtype=torch.float64))[:, None] * theta  # [T, d/2]
    q0, q1 = q[:, :half], q[:, half:]  # [H, d/2]
    k0, k1 = k[..., :half], k[..., half:]  # [T, H, d/2]
    by_hand = ((q0 * k0 + q1 * k1) * angle.cos()[:, None] + (q0 * k1 - q1 * k0) * angle.sin()[:, None]) / math.sqrt(d)
    ours = terms[1].components()[0, :, 0]  # [H, T, d/2]
    torch.testing.assert_close(ours.double(), by_hand.permute(1, 0, 2), atol=1e-5, rtol=0)


def test_hope_dropped_components_do_not_depend_on_position():
    """Under the probe, layer 0 sees the same key at every position after BOS: HoPE's
    position-independent components are then constant over keys, rotated ones are not."""
    model = tiny("hope", train_len=32)
    inputs = probe_inputs(320, None, samples=2, seed=0)
    result = measure(model, inputs, 32, layers=[0])
    comps = result.components[0, 1:]  # keys 1..31, [T, d/2]
    dropped = model.pe.plan().theta == 0
    assert dropped.any() and (~dropped).any()
    spread = comps.amax(0) - comps.amin(0)
    assert spread[dropped].max() < 1e-6
    assert spread[~dropped].min() > 1e-6


# -- VAF, bands, pattern shape, OOD: numbers worked by hand ---------------------------------------


def test_vaf_hand_computed():
    y = torch.tensor([1.0, 2.0, 3.0])
    assert float(vaf(y, torch.tensor([1.0, 1.0, 1.0]))) == pytest.approx(1 - 5 / 14)  # (0 + 1 + 4) / 14
    assert float(vaf(y, y)) == pytest.approx(1.0)
    assert float(vaf(y, torch.zeros(3))) == pytest.approx(0.0)
    assert float(vaf(y, 2 * y)) == pytest.approx(0.0)
    assert float(vaf(y, -y)) == pytest.approx(-3.0)


def test_component_analysis_hand_computed():
    # keys 0..3; key 0 (BOS) is left out. C_0 = [1, 2, 3], C_1 = [0, 0, 1] -> y = [1, 2, 4], sum y^2 = 21
    components = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [2.0, 0.0], [3.0, 1.0]]])  # [layers, T, d/2]
    logits = components.sum(-1)[:, None, None, :]  # [layers, samples, heads, T]
    measurement = Measurement(length=4, layers=[0], logits=logits, components=components, bias=None)
    table = {"head_dim": 4, "theta_rope": [1.0, 0.01], "bands": {"high": [0], "activated": [1], "lower": []}}
    result = component_analysis(measurement, table)
    assert result["vaf"] == pytest.approx([1 - 1 / 21, 1 - 14 / 21])  # (4-3)^2 ; 1 + 4 + 9
    assert result["vaf_per_layer"][0] == pytest.approx(result["vaf"])
    assert result["vaf_bands"]["activated"] == pytest.approx(1 - 14 / 21)
    assert result["activated"][0]["index"] == 1 and result["activated"][0]["vaf"] == pytest.approx(1 / 3)
    assert result["ranking"] == [0, 1]
    # centred: y - mean = [-4/3, -1/3, 5/3] (sum of squares 42/9); C_1 - mean = [-1/3, -1/3, 2/3]
    assert result["vaf_centered"][1] == pytest.approx(1 - (1 + 0 + 1) / (42 / 9))


@pytest.mark.parametrize(
    "head_dim,base,train_len,activated,first_lower",
    [
        (64, 10000.0, 512, [16, 17], 18),  # j > 15.3 (theta < 2pi/512) and j < 17.7 (theta > pi/512)
        (64, 100000.0, 8192, [20, 21], 22),  # SmolLM2: j > 19.94 and j < 21.86
        (128, 10000.0, 2048, [41, 42, 43, 44, 45], 46),  # j > 40.2 and j < 45.03
        (16, 10000.0, 64, [], 3),  # theta_2 = 0.1 >= 2pi/64 = 0.098, theta_3 = 0.032 <= pi/64: the band is empty
    ],
)
def test_band_indices_hand_computed(head_dim, base, train_len, activated, first_lower):
    assert activated_band(head_dim, base, train_len) == activated
    bands = band_indices(head_dim, base, train_len)
    assert bands["lower"] == list(range(first_lower, head_dim // 2))
    assert bands["high"] == list(range(0, activated[0] if activated else first_lower))


def test_pattern_shape():
    u = torch.tensor([5.0] * 10 + [1.0] * 80 + [4.0] * 10)
    shape = shape_of(u)
    assert shape["u_shape"] and shape["first"] == 5 and shape["middle"] == 1 and shape["last"] == 4
    assert shape["u_depth"] == pytest.approx(3.0)
    assert not shape_of(torch.linspace(0, 1, 100))["u_shape"]  # monotone: recency only


def test_ood_score_hand_computed():
    # train length 4; in-range run of 4 tokens: keys 1..3 give band [0, 2], tol = 0.01*2 + 1e-5*(1+2)
    inside = Measurement(4, [0], torch.tensor([9.0, 0.0, 2.0, 1.0]).view(1, 1, 1, 4), None, None)
    # 8 tokens: keys with distance 7 - n >= 4 are n = 1, 2, 3 (key 0 left out): values 3, 1, -1
    outside = Measurement(
        8, [0], torch.tensor([9.0, 3.0, 1.0, -1.0, 50.0, 50.0, 50.0, 0.0]).view(1, 1, 1, 8), None, None
    )
    result = ood_scores(inside, outside, train_len=4)
    assert result["beyond_keys"] == [1, 3]
    assert result["ood_fraction"] == pytest.approx([2 / 3])  # 3 and -1 are out, 1 is in; the 50s are within L
    tol = 0.02 + 3e-5
    assert result["ood_excess"] == pytest.approx([((3 - 2 - tol) + (1 - tol)) / 2 / 3])
    # in-range {0, 1, 2} vs beyond {-1, 1, 3}: empirical CDFs at -1: 0 vs 1/3, at 2: 1 vs 2/3 -> KS 1/3
    assert result["ood_ks"] == pytest.approx([1 / 3])
    with pytest.raises(RopelabError, match="in-range length"):
        ood_scores(outside, inside, train_len=4)


def test_ks_distance():
    a = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    b = torch.tensor([[2.0, 3.0, 4.0, 5.0], [3.0, 1.0, 0.0, 2.0], [10.0, 11.0, 12.0, 13.0]])
    assert ks_distance(a, b).tolist() == pytest.approx([0.5, 0.0, 1.0])


def test_ood_layer0_is_a_function_of_distance_for_rope():
    """Same probe tokens at both lengths; RoPE's layer 0 is relative, so the in-range run's logits
    are the long run's at the same distances, and a window-independent check scores them."""
    model = tiny("rope", train_len=32)
    inputs = probe_inputs(320, None, samples=2, seed=3)
    short, long = measure(model, inputs, 32, [0]), measure(model, inputs, 64, [0])
    torch.testing.assert_close(short.logits[..., 1:], long.logits[..., -31:], atol=1e-5, rtol=0)
    result = ood_scores(short, long, train_len=32)
    assert 0.0 <= result["ood_fraction"][0] <= 1.0 and len(result["curve"]) == 63


# -- the probe ----------------------------------------------------------------------------------


def test_probe_construction(tokenizer):
    inputs = probe_inputs(320, tokenizer, samples=6, seed=5)
    rows = inputs.rows(10)
    assert rows.shape == (6, 10) and rows.dtype == torch.long
    assert (rows[:, 0] == tokenizer.bos_id).all()
    assert (rows[:, 1:] == rows[:, 1:2]).all()  # one token repeated after BOS
    assert not set(rows[:, 1].tolist()) & {tokenizer.bos_id, tokenizer.eos_id}
    assert (rows[:, 1] < tokenizer.vocab_size).all()
    assert len(set(rows[:, 1].tolist())) > 1
    torch.testing.assert_close(inputs.rows(25)[:, :10], rows)  # the same tokens at every length
    assert torch.equal(probe_inputs(320, tokenizer, samples=6, seed=5).rows(10), rows)
    assert not torch.equal(probe_inputs(320, tokenizer, samples=6, seed=6).rows(10), rows)
    assert sum(b.shape[0] for b in inputs.batches(10, batch_tokens=20)) == 6  # two rows per batch
    bare = probe_inputs(50, None, samples=3, seed=0).rows(8)  # no tokenizer: no BOS, token everywhere
    assert (bare == bare[:, :1]).all() and (bare < 50).all()


# -- sources, parsing -----------------------------------------------------------------------------


def write_run(run, tokenizer, pe="rope", steps=(100, 200), latest=True, train_len=32):
    model = tiny(pe, train_len=train_len)
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        folder = run / "checkpoints" / f"step-{step:06d}"
        save_checkpoint(folder, model, tokenizer="tokenizer.json")
        tokenizer.save(folder)
    (run / "train_config.json").write_text(json.dumps({"requested": {"pe": pe}}))  # ropelab train's layout
    if latest:
        (run / "checkpoints" / "latest.json").write_text(
            json.dumps({"step": steps[-1], "path": f"step-{steps[-1]:06d}"})
        )
    return run


def test_discover(tmp_path, tokenizer):
    exp = tmp_path / "exp"
    write_run(exp / "models" / "hope", tokenizer, "hope", steps=(10, 20, 5))
    write_run(exp / "models" / "rope", tokenizer, "rope", steps=(10,), latest=False)
    subjects = discover(str(exp))
    assert [s.label for s in subjects] == ["rope", "hope"]  # the baseline first
    assert subjects[1].final.step == 5  # latest.json names step 5 even though 20 is higher
    series = discover(str(exp / "models" / "hope"), checkpoints="all")[0]
    assert [c.step for c in series.checkpoints] == [5, 10, 20] and series.label == "hope"
    lone = write_run(tmp_path / "lone-run", tokenizer, "hope-ab1", steps=(1,))
    assert discover(str(lone))[0].label == "hope-ab1"  # from train_config.json, not the directory name
    checkpoint = discover(str(exp / "models" / "rope" / "checkpoints" / "step-000010"), ["rope", "hope"])
    assert [(s.label, s.method, s.kind) for s in checkpoint] == [("rope", "rope", "model"), ("hope", "hope", "model")]
    both = discover(str(exp), ["hope+yarn:factor=2"])
    assert [s.label for s in both] == ["rope [hope+yarn:factor=2]", "hope [hope+yarn:factor=2]"]
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(RopelabError, match="a training run without a finished checkpoint"):
        discover(str(tmp_path / "empty"))
    with pytest.raises(RopelabError, match="--checkpoints all needs a training run"):
        discover("smollm2-135m", checkpoints="all")


def test_parsing():
    assert parse_layers(None, 4) == [0, 1, 2, 3]
    assert parse_layers("0-1,3", 4) == [0, 1, 3]
    assert parse_layers("-1", 4) == [3]
    for bad in ("4", "a", "2-7"):
        with pytest.raises(RopelabError, match="--layers"):
            parse_layers(bad, 4)


# -- ropelab analyze end to end -----------------------------------------------------------------


def test_analyze_experiment_end_to_end(tmp_path, tokenizer, capsys):
    exp = tmp_path / "exp"
    write_run(exp / "models" / "rope", tokenizer, "rope")
    write_run(exp / "models" / "hope", tokenizer, "hope")
    out = tmp_path / "out"
    code = main(["analyze", str(exp), "--out", str(out), "--samples", "2", "--checkpoints", "all", "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "## Extrapolation OOD check" in printed
    for name in ("analysis.json", "pattern.json", "components.json", "ood.json", "analysis.md"):
        assert (out / name).is_file(), name
    for name in ("pattern.png", "pattern_layers.png", "components.png", "vaf.png", "vaf_training.png", "ood.png"):
        assert (out / name).stat().st_size > 1000, name
        assert f"]({name})" in (out / "analysis.md").read_text()
    summary = json.loads((out / "analysis.json").read_text())
    rope, hope = summary["subjects"]
    assert (rope["label"], hope["label"]) == ("rope", "hope") and rope["step"] == 200
    assert rope["lengths"] == [32, 64] and len(rope["ood"]["ood_fraction"]) == 2
    assert rope["components"]["series_steps"] == [100, 200]
    assert hope["model"]["roles"].count("position-independent") == len(hope["model"]["bands"]["activated"]) + len(
        hope["model"]["bands"]["lower"]
    )
    assert rope["hierarchy"] == {"skipped": "rope reads no hierarchical positions"}
    components = json.loads((out / "components.json").read_text())["rope"]
    assert len(components["vaf"]) == 8 and len(components["series"]) == 2  # head_dim 16
    curves = components["curves"]
    total = torch.tensor(curves["components"]).sum(0)
    torch.testing.assert_close(total, torch.tensor(curves["logits"]), atol=1e-5, rtol=1e-4)
    pattern = json.loads((out / "pattern.json").read_text())["hope"]
    assert [p["length"] for p in pattern] == [32, 64] and len(pattern[1]["mean"]) == 63


def test_analyze_hierarchy_and_unextrapolatable_method(tmp_path, tokenizer):
    run = write_run(tmp_path / "run", tokenizer, "rope", steps=(50,))
    source = tmp_path / "module.py"
    source.write_text(TEXT * 3)
    out = tmp_path / "out"
    args = ["analyze", str(run), "--out", str(out), "--samples", "1", "--threads", "1", "--layers", "1"]
    args += ["--methods", "rope,hirope:window=16,learned", "--hierarchy-input", str(source), "--hierarchy-length", "96"]
    assert main(args) == 0
    summary = json.loads((out / "analysis.json").read_text())
    rope, hirope, learned = summary["subjects"]
    assert rope["analysed_layers"] == [1] and hirope["method"] == "hirope:window=16"
    data = json.loads((out / "hierarchy.json").read_text())
    h = data["hirope:window=16"]
    assert h["uses_hierarchy"] and set(h["frequency_level"]) == {0, 1} and h["length"] == 96
    assert len(h["segments"]) > 3 and h["segments"][0]["start_token"] == 0
    assert data["rope"]["frequency_level"] == [0] * 8  # the baseline gets the same map
    assert (out / "hierarchy_hirope_window_16.png").is_file() and (out / "hierarchy_rope.png").is_file()
    # learned absolute positions cannot run past their table: reported, the rest still runs
    assert "64" in learned["errors"] and learned["ood"]["skipped"].startswith("length 64")
    assert learned["components"]["skipped"].endswith("no rotary frequencies to decompose")
    assert len(learned["pattern"]) == 1
    assert "outside the learned table" in learned["hierarchy"]["skipped"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--analyses", "pattern,heatmap"], "unknown analysis 'heatmap'"),
        (["--lengths", "2y"], "length '2y' is not understood"),
        (["--layers", "0-9"], "layer 2 is out of range"),
        (["--methods", "rope:factor=2"], "rope: unknown parameter 'factor'"),
        (["--methods", "rope,,hope"], "item 2 is empty"),
        (["--documents", "/no/such/file.py"], "--documents '/no/such/file.py'"),
        (["--checkpoints", "all"], "--checkpoints all needs a training run"),
        (["--hierarchy-input", "/no/such.py"], "--hierarchy-input '/no/such.py'"),
    ],
)
def test_cli_errors(tmp_path, tokenizer, capsys, args, message):
    checkpoint = write_run(tmp_path / "run", tokenizer, steps=(1,)) / "checkpoints" / "step-000001"
    code = main(["analyze", str(checkpoint), "--out", str(tmp_path / "out"), "--samples", "1", *args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


def test_cli_unknown_model(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert "unknown model" in capsys.readouterr().err
