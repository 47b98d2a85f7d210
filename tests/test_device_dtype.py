"""Devices and dtypes (CPU only): a bf16 model of every method family stays close to fp32, its
positions, angles, biases and softmax statistics stay float32, ``load_model(device=, dtype=)``,
the CLI's ``--device`` / ``--dtype`` (end to end in bf16, one error line for what cannot run), and
the logic of ``python -m bench gpu-check`` on a tiny model. Every test here takes seconds.

Tolerance of the bf16-vs-fp32 comparisons: bf16 keeps 8 significant bits (a rounding of up to
2^-9 = 0.2 % per operation). On these tiny models (2 layers, attention sharpened so that positions
matter) the measured max |logit difference| is 0.28-0.37 % of the largest logit and the mean is
0.04-0.05 % (every family alike; fp16, with 11 bits, is 8x closer), and the per-token losses
differ by at most 0.003 nats. The test allows 2 % (max), 0.2 % (mean) and 0.02 nats: 4-6x the
measured error, room for other BLAS/attention kernels, while a broken low-precision path (a mask
or merge computed in bf16 overflowing, an fp16 NaN, a wrong table) is off by far more. Whether angles are float32 is not left to that tolerance (on a
random model the logits barely notice rounded positions): it is asserted on the tables themselves,
which must be bit-identical to the fp32 model's.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import ropelab.model.window_attention as window_attention
from ropelab import ModelConfig, Transformer, load_checkpoint, load_model
from ropelab.cli import main
from ropelab.core.errors import RopelabError
from ropelab.model.device import resolve_device, resolve_dtype, resolve_placement
from tests.helpers import tiny_code_checkpoint

#: one spec per method family (windowed ones with a window shorter than the input)
FAMILIES = {
    "rope": "rope",
    "hope": "hope",
    "yarn": "yarn:factor=2",
    "ntk": "ntk:factor=2",
    "dynamic-ntk": "dynamic-ntk:factor=2",
    "alibi": "alibi",
    "fire": "fire",
    "kerple": "kerple-log",
    "learned": "learned:max_len=64",
    "nope": "nope",
    "rerope": "rerope:window=8,logn=true",
    "self-extend": "self-extend:window=8,group=3",
    "hirope": "hirope:window=8,chunk=5",
}
ROTARY = ["rope", "hope", "yarn", "ntk", "dynamic-ntk"]
WINDOWED = ["rerope", "self-extend", "hirope"]
T = 40
OFFSET = 700  # positions 700..739: bf16 cannot hold most of them (spacing 4 above 512)


def tiny(spec: str, n_heads: int = 4) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig.from_name(
        "tiny", pe=spec, vocab_size=61, train_len=16, n_heads=n_heads, n_kv_heads=2, head_dim=16
    )
    model = Transformer(config).eval()
    with torch.no_grad():  # sharper attention, so positions matter
        for layer in model.layers:
            layer.self_attn.q_proj.weight.mul_(4)
    return model


def inputs(family: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids = torch.randint(0, 61, (2, T), generator=torch.Generator().manual_seed(1))
    positions = None if family == "learned" else torch.arange(OFFSET, OFFSET + T)[None]
    return ids, positions


@pytest.fixture
def small_chunks(monkeypatch):
    """Windowed attention in chunks of 8 queries, so its far block and its merge run on 40 tokens."""
    monkeypatch.setattr(window_attention, "CHUNK", 8)


# -- numerics ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward_of_every_family_stays_close_to_fp32(family, dtype, small_chunks):
    model = tiny(FAMILIES[family])
    ids, positions = inputs(family)
    with torch.no_grad():
        reference = model(ids, positions=positions)
        reference_losses = model.token_losses(ids, positions=positions)
        low = copy.deepcopy(model).to(dtype)
        logits = low(ids, positions=positions)
        losses = low.token_losses(ids, positions=positions)
    assert logits.dtype == dtype and losses.dtype == torch.float32  # losses always float32
    assert torch.isfinite(logits).all()
    scale = float(reference.abs().max())
    difference = (logits.float() - reference).abs()
    assert float(difference.max()) <= 2e-2 * scale, (family, float(difference.max()) / scale)
    assert float(difference.mean()) <= 2e-3 * scale
    torch.testing.assert_close(losses, reference_losses, atol=2e-2, rtol=0)  # nats, from float32 logits


@pytest.mark.parametrize("family", ROTARY + WINDOWED)
def test_rotation_tables_stay_float32_and_exact_in_a_bf16_model(family, monkeypatch, small_chunks):
    model = tiny(FAMILIES[family])
    low = copy.deepcopy(model).to(torch.bfloat16)
    ids, positions = inputs(family)
    index = torch.arange(T)[None]
    # computed by the encoding itself: float32, and bit-identical to the float32 model's tables
    if family in WINDOWED:
        tables = low.pe.windowed_rotation(positions, index)
        expected = model.pe.windowed_rotation(positions, index)
        pairs = [(getattr(tables, n), getattr(expected, n)) for n in ("near_q", "near_k", "far_q", "far_k")]
    else:
        assert low.pe.inv_freq.dtype == torch.float32
        pairs = [(low.pe.rotation(positions), model.pe.rotation(positions))]
    for got, want in pairs:
        assert got.cos.dtype == got.sin.dtype == torch.float32
        assert torch.equal(got.cos, want.cos) and torch.equal(got.sin, want.sin)

    # at the point of use, in a real forward: float32 tables meet bf16 activations at the multiply
    import ropelab.model.transformer as transformer
    import ropelab.pe.base as base

    seen = []
    original = base.apply_rotary

    def checked(x, rotation, layout="half"):
        seen.append((x.dtype, rotation.cos.dtype, rotation.sin.dtype))
        return original(x, rotation, layout)

    monkeypatch.setattr(base, "apply_rotary", checked)
    monkeypatch.setattr(transformer, "apply_rotary", checked)
    tables_seen = []

    def hook(module, args):
        attention_inputs = args[3]
        rotations = [attention_inputs.q_rotation, attention_inputs.k_rotation]
        if attention_inputs.windowed is not None:
            w = attention_inputs.windowed
            rotations = [w.near_q, w.near_k, w.far_q, w.far_k]
        tables_seen.extend(r.cos.dtype for r in rotations if r is not None)

    handles = [block.self_attn.register_forward_pre_hook(hook) for block in low.layers]
    try:
        with torch.no_grad():
            low(ids, positions=positions)
    finally:
        for handle in handles:
            handle.remove()
    assert seen and all(x == torch.bfloat16 and c == s == torch.float32 for x, c, s in seen)
    assert tables_seen and set(tables_seen) == {torch.float32}


@pytest.mark.parametrize("family", WINDOWED)
def test_windowed_merge_statistics_are_float32_in_bf16(family, monkeypatch, small_chunks):
    low = tiny(FAMILIES[family]).to(torch.bfloat16)
    ids, positions = inputs(family)
    statistics, merged = [], []
    original_far, original_merge = window_attention._far_block, window_attention._merge

    def checked_far(q, k, v, scale, visible, runs):
        out, lse = original_far(q, k, v, scale, visible, runs)
        statistics.append((q.dtype, lse.dtype))
        return out, lse

    def checked_merge(out_a, lse_a, out_b, lse_b):
        merged.append((out_a.dtype, lse_a.dtype, out_b.dtype, lse_b.dtype))
        return original_merge(out_a, lse_a, out_b, lse_b)

    monkeypatch.setattr(window_attention, "_far_block", checked_far)
    monkeypatch.setattr(window_attention, "_merge", checked_merge)
    with torch.no_grad():
        low(ids, positions=positions)  # both parts in the fused CPU kernel, merged by _merge
        monkeypatch.setattr(window_attention, "_fused_cpu", lambda *args: None)
        low(ids, positions=positions)  # the hand-masked band and the far block
    assert statistics and all(q == torch.bfloat16 and lse == torch.float32 for q, lse in statistics)
    assert merged and all(types == (torch.bfloat16, torch.float32) * 2 for types in merged)


@pytest.mark.parametrize("family", ["alibi", "kerple", "fire"])
def test_bias_methods_add_their_bias_in_float32(family, monkeypatch):
    model = tiny(FAMILIES[family], n_heads=6)  # 6 heads: ALiBi slopes that bf16 cannot hold exactly
    low = copy.deepcopy(model).to(torch.bfloat16)
    ids, positions = inputs(family)
    for name, buffer in low.pe.named_buffers():  # slopes, FIRE's threshold: float32 and unrounded
        assert buffer.dtype == torch.float32 and torch.equal(buffer, dict(model.pe.named_buffers())[name])
    bias = low.pe.attention_bias(0, positions, positions)
    assert bias.dtype == torch.float32
    if family == "alibi":
        assert torch.equal(bias, model.pe.attention_bias(0, positions, positions))
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def checked(q, k, v, attn_mask=None, **kwargs):
        masks.append((q.dtype, None if attn_mask is None else attn_mask.dtype))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", checked)
    with torch.no_grad():
        out = low(ids, positions=positions)
    assert out.dtype == torch.bfloat16
    assert masks and set(masks) == {(torch.float32, torch.float32)}  # attended in float32, bias unrounded


def test_model_to_moves_and_casts_and_reports_its_placement():
    model = tiny("hirope:window=8")
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    model.to(torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.pe.theta.dtype == torch.float32
    model.with_method("yarn:factor=2")  # a method switched to later is float32 too
    assert model.pe.inv_freq.dtype == torch.float32
    logits = model(torch.randint(0, 61, (1, 12)).tolist())  # a list, on no device: follows the model
    assert logits.dtype == torch.bfloat16 and logits.device == model.device


# -- resolving devices and dtypes --------------------------------------------------------------------------------


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else resolve_device("auto").type)
    assert resolve_dtype("bf16") == resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_dtype(torch.float16) == resolve_dtype("half") == torch.float16
    assert resolve_dtype(None) == torch.float32
    assert resolve_placement("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(RopelabError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")
    with pytest.raises(RopelabError, match="unsupported dtype"):
        resolve_dtype(torch.float64)
    with pytest.raises(RopelabError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RopelabError, match="CUDA is not available"):
            resolve_device("cuda:0")


# -- a tiny checkpoint: load_model and the command line ----------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random model (train length 512) with a small byte-level BPE tokenizer."""
    return tiny_code_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_load_model_on_a_device_in_a_dtype(checkpoint):
    model, tokenizer = load_model(checkpoint, device="auto", dtype="bf16", method="rerope:window=8")
    assert tokenizer is not None and not model.training
    assert model.dtype == torch.bfloat16 and model.device == resolve_device("auto")
    assert model.pe.theta.dtype == torch.float32
    assert load_checkpoint(checkpoint, dtype=torch.float16).dtype == torch.float16
    assert load_model(checkpoint)[0].dtype == torch.float32  # the default
    with pytest.raises(RopelabError, match="unknown dtype"):
        load_model(checkpoint, dtype="int8")


def test_cli_eval_and_generate_run_end_to_end_in_bf16(checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", str(checkpoint), "--methods", "rope,rerope:window=32", "--tasks", "ppl,passkey,context"]
    argv += ["--lengths", "1500", "--samples", "1", "--out", str(out)]
    assert main([*argv, "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"rope", "rerope:window=32", "window"}
    ppl = [r for r in records if r["task"] == "ppl"]
    assert ppl and all(5 < r["metrics"]["loss"] < 6.5 for r in ppl)  # a random model: about log(300) = 5.7
    capsys.readouterr()
    # resuming that run in another dtype is refused in one line
    assert main([*argv, "--dtype", "float32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a run with other settings (dtype differ)" in err

    code = main(["generate", str(checkpoint), "--prompt", "def f(x):", "--max-new-tokens", "6", "--dtype", "bf16"])
    captured = capsys.readouterr()
    assert code == 0 and captured.out.startswith("def f(x):") and captured.err == ""


def test_cli_analyze_runs_in_bf16(checkpoint, tmp_path, capsys):
    out = tmp_path / "analysis"
    argv = ["analyze", str(checkpoint), "--analyses", "pattern,vaf", "--lengths", "64", "--samples", "2"]
    assert main([*argv, "--dtype", "bfloat16", "--out", str(out)]) == 0
    config = json.loads((out / "analysis.json").read_text())["config"]
    assert config["dtype"] == "bfloat16" and config["device"] == "cpu"


ERROR_CASES = [
    (["--device", "cuda"], "CUDA is not available"),
    (["--device", "cuda:3"], "CUDA is not available"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--dtype", "float8"], "unknown dtype 'float8'"),
]


@pytest.mark.parametrize(("options", "message"), ERROR_CASES)
@pytest.mark.parametrize("command", ["eval", "compare", "generate", "analyze"])
def test_cli_bad_device_or_dtype_is_one_error_line_before_the_model_loads(
    command, options, message, monkeypatch, capsys
):
    if torch.cuda.is_available() and "CUDA" in message:
        pytest.skip("this machine has CUDA")
    import ropelab.pretrained.registry as registry

    loaded = []
    monkeypatch.setattr(registry, "load_model", lambda *a, **k: loaded.append(a))
    argv = {
        "eval": ["eval", "some-model", "--tasks", "ppl"],
        "compare": ["compare"],
        "generate": ["generate", "some-model", "--prompt", "x"],
        "analyze": ["analyze", "some-model"],
    }[command]
    code = main([*argv, *options])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and not loaded
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


# -- python -m bench gpu-check -----------------------------------------------------------------------------------


def test_gpu_check_without_cuda_says_so_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from bench.__main__ import main as bench_main

    assert bench_main(["gpu-check"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "CUDA is not available" in out


def test_gpu_check_logic_runs_on_the_cpu_with_a_tiny_model(tmp_path, monkeypatch, capsys):
    """The whole script (parity, prefill timing, the JSON) on the CPU in a few seconds."""
    import bench.gpu_check as gpu_check
    from bench.__main__ import main as bench_main

    monkeypatch.setattr(gpu_check, "machine_info", lambda: {"cpu": "test"})
    out = tmp_path / "gpu_check.json"
    argv = ["gpu-check", "--device", "cpu", "--model", "tiny", "--lengths", "96,160", "--repeats", "1"]
    argv += [
        "--methods",
        "rope,rerope,window,rerope@chunked",
        "--parity-methods",
        "rope,alibi,fire,rerope:window=16,window",
    ]
    assert bench_main([*argv, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["passed"] is True and data["failed"] == []
    parity = data["parity"]["tiny"]
    assert [(r["method"], r["dtype"]) for r in parity[:2]] == [("rope", "float32"), ("rope", "bfloat16")]
    assert len(parity) == 10 and all(r["passed"] for r in parity)
    assert all(r["relative"] == 0 for r in parity if r["dtype"] == "float32")  # cpu vs cpu: identical
    assert all(0 < r["relative"] <= gpu_check.BF16_TOL for r in parity if r["dtype"] == "bfloat16")
    prefill = data["prefill"]
    assert [(r["method"], r["length"]) for r in prefill] == [
        (m, n) for m in ("rope", "rerope", "window", "rerope@chunked") for n in (96, 160)
    ]
    assert all(r["seconds"] > 0 and r["peak_gb"] >= 0 for r in prefill)
    assert data["window_kernel_failures"] == []
    assert set(gpu_check.tiny_specs()) >= {"rope", "fire", "learned:max_len=640", "window"}


def test_gpu_check_verdicts():
    from bench.gpu_check import compare, verdict

    reference = torch.randn(1, 8, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 5, (1, 8), generator=torch.Generator().manual_seed(1))
    same = compare(reference, reference.clone(), targets)
    assert same["max_abs"] == 0 and same["loss_diff"] == 0 and verdict(same, "float32", real_model=True)
    off = compare(reference, reference + 0.5, targets)  # a constant shift: same softmax, large max diff
    assert not verdict(off, "float32", real_model=False) and not verdict(off, "bfloat16", real_model=False)
    assert verdict(off, "bfloat16", real_model=True)  # losses and argmax unchanged
    broken = compare(reference, reference * float("nan"), targets)
    assert not verdict(broken, "bfloat16", real_model=True)
