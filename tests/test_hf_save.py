"""``hf.patch`` records the method in ``model.config``; ``save_pretrained`` keeps it.

Tiny random Llama / Qwen2 / Mistral models (float32, CPU), inputs more than twice the training
length. Checked: the ``ropelab`` entry and HF-native rope fields ``patch`` writes and ``unpatch``
removes; ``save_pretrained`` + :func:`ropelab.integrations.hf.from_pretrained` gives the patched
model's logits for every method ``hf.patch`` supports; a plain
``transformers.AutoModelForCausalLM.from_pretrained`` of the saved directory (no ropelab) gives the
patched logits for the methods transformers can express (rope, pi, ntk, dynamic-ntk, yarn), and
the *original* model for the others (with the reason in the entry).
"""

from __future__ import annotations

import json

import pytest
import torch

from ropelab.core.errors import RopelabError
from ropelab.core.version import __version__
from ropelab.integrations import hf
from ropelab.model.transformer import Transformer
from ropelab.pe import canonical_spec
from ropelab.pretrained.hf_dir import hf_config_to_ropelab, unfused
from tests.helpers import DIM, HEADS, MAX_POS, THETA, VOCAB, hf_logits, tiny_hf_model

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTH = 150  # > 2 * max_position_embeddings
ATOL = 1e-5

#: spec -> the rope type transformers runs it with (None: transformers cannot express it)
NATIVE = {
    "rope": "default",
    "rope:base=500": "default",
    "pi:factor=2": "linear",
    "ntk:factor=4": "default",  # a rope_theta change
    "dynamic-ntk:factor=2": "dynamic",
    "yarn:factor=2": "yarn",
    "yarn:factor=4,beta_fast=16,beta_slow=2,mscale=1,mscale_all_dim=0.5": "yarn",
    "ntk:factor=2+yarn:factor=2": "yarn",
    "llama3:factor=8": "llama3",
    "proportional:fraction=0.5": "proportional",
    "hope": "proportional",  # HoPE's kept frequencies are a prefix: p-RoPE (checked angle by angle)
}
NOT_NATIVE = {
    "hope-ab2": "position-independent",
    "hope+yarn:factor=2": "position-independent",
    "nope": "NoPE",
    "pi:factor=2+yarn:factor=2": "one rope type",
    "rerope:window=24": "attention function",
    "self-extend:window=24,group=3": "attention function",
    "hirope:window=24,chunk=10": "attention function",
}
ARCHS = ["llama", "qwen2", "mistral", "qwen3", "phi3"]


@pytest.fixture(scope="module")
def models():
    return {arch: tiny_hf_model(arch, seed=i) for i, arch in enumerate(ARCHS)}


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))


def _ropelab(hf_model, spec: str, ids: torch.Tensor) -> torch.Tensor:
    """ropelab's own Transformer with the (unpatched) HF model's weights under ``spec``."""
    config = hf_config_to_ropelab(hf_model.config.to_dict())
    config.pe = spec
    model = Transformer(config).eval()
    model.load_state_dict(unfused({k.removeprefix("model."): v for k, v in hf_model.state_dict().items()}, config))
    with torch.no_grad():
        return model(ids)


def _save_patched(model, spec: str, directory, ids):
    """Patch, record the logits, save, unpatch; returns the patched logits and the entry."""
    hf.patch(model, spec)
    try:
        logits = hf_logits(model, ids)
        entry = json.loads(json.dumps(hf.config_entry(model.config)))
        model.save_pretrained(directory)
    finally:
        hf.unpatch(model)
    return logits, entry


# -- the config entry ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [*NATIVE, *NOT_NATIVE])
def test_patch_records_the_method_and_unpatch_restores_the_config(models, spec: str) -> None:
    model = models["llama"]
    before = model.config.to_dict()
    hf.patch(model, spec)
    try:
        entry = hf.config_entry(model.config)
        assert entry["method"] == canonical_spec(spec) == hf.patched_spec(model)
        assert entry["version"] == __version__ and entry["train_len"] == MAX_POS
        assert entry["original"] == {"rope_parameters": before["rope_parameters"]}
        assert entry["hf_rope_type"] == NATIVE.get(spec)
        saved = model.config.to_dict()
        assert saved["ropelab"] == entry and not any(key.startswith("_ropelab") for key in saved)
        json.dumps(saved)  # serialisable
        rope = saved["rope_parameters"]
        if spec in NATIVE:
            assert rope["rope_type"] == NATIVE[spec]
        else:  # only the entry: the config keeps the model's own RoPE
            assert rope == before["rope_parameters"] and NOT_NATIVE[spec] in entry["hf_unsupported"]
    finally:
        assert hf.unpatch(model)
    assert model.config.to_dict() == before


def test_ntk_is_a_base_change_and_yarn_keeps_its_parameters(models) -> None:
    model = models["llama"]
    d = DIM // HEADS
    hf.patch(model, "ntk:factor=4")
    try:
        assert model.config.rope_parameters == {"rope_type": "default", "rope_theta": THETA * 4 ** (d / (d - 2))}
        hf.patch(model, "yarn:factor=4,beta_fast=16,beta_slow=2,mscale=1,mscale_all_dim=0.5")  # replaces ntk
        assert model.config.rope_parameters == {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": MAX_POS,
            "beta_fast": 16.0,
            "beta_slow": 2.0,
            "truncate": True,
            "mscale": 1.0,
            "mscale_all_dim": 0.5,
            "rope_theta": THETA,
        }
        assert hf.config_entry(model.config)["original"]["rope_parameters"]["rope_theta"] == THETA
    finally:
        hf.unpatch(model)


def test_dynamic_is_not_native_when_transformers_would_rescale_by_another_length() -> None:
    """transformers' ``dynamic`` rescales by ``max_position_embeddings``; ropelab by the training
    length (here ``original_max_position_embeddings`` = 32 of a YaRN config with 64 positions)."""
    model = tiny_hf_model(
        "llama",
        rope_type="yarn",
        factor=2.0,
        original_max_position_embeddings=32,
        rope_theta=THETA,
        max_position_embeddings=64,
    )
    with pytest.raises(RopelabError, match="would replace the model's own yarn:factor=2"):
        hf.patch(model, "dynamic-ntk:factor=2")  # a lone transform would drop the config's YaRN silently
    hf.patch(model, "rope+dynamic-ntk:factor=2")  # named: replaces it
    entry = hf.config_entry(model.config)
    assert entry["hf_rope_type"] is None and entry["train_len"] == 32
    assert "max_position_embeddings=64" in entry["hf_unsupported"]
    assert model.config.rope_parameters["rope_type"] == "yarn"  # left as it was
    hf.patch(model, "yarn:factor=2")
    assert hf.config_entry(model.config)["hf_rope_type"] == "yarn"  # the config's own method is native
    hf.unpatch(model)


# -- save_pretrained and loading ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "spec"),
    [("llama", spec) for spec in [*NATIVE, *NOT_NATIVE]]
    + [
        (arch, spec) for arch in ("qwen2", "mistral") for spec in ("yarn:factor=2", "hope", "hirope:window=24,chunk=10")
    ],
)
def test_save_and_from_pretrained_round_trip(models, ids, tmp_path, arch: str, spec: str) -> None:
    model = models[arch]
    patched, entry = _save_patched(model, spec, tmp_path, ids)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["ropelab"] == entry and not any(key.startswith("_ropelab") for key in saved)
    reloaded = hf.from_pretrained(tmp_path)
    assert hf.patched_spec(reloaded) == canonical_spec(spec)
    assert hf.config_entry(reloaded.config) == entry
    torch.testing.assert_close(hf_logits(reloaded, ids), patched, atol=0, rtol=0)
    # unpatching the reloaded model gives the original one back
    assert hf.unpatch(reloaded) and hf.config_entry(reloaded.config) is None
    assert reloaded.config.rope_parameters == model.config.rope_parameters
    torch.testing.assert_close(hf_logits(reloaded, ids), hf_logits(model, ids), atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", list(NATIVE))
def test_plain_transformers_computes_native_methods(models, ids, tmp_path, arch: str, spec: str) -> None:
    """No ropelab on the loading side: transformers' own rope type gives the patched logits (a
    config class that refuses the rope type -- Phi-3 holds only default / longrope -- keeps its own
    fields, and says why)."""
    model = models[arch]
    expected = _ropelab(model, spec, ids)
    patched, entry = _save_patched(model, spec, tmp_path, ids)
    if arch == "phi3" and NATIVE[spec] != "default":
        assert entry["hf_rope_type"] is None and "phi3 configs refuse rope type" in entry["hf_unsupported"]
        torch.testing.assert_close(hf_logits(hf.from_pretrained(tmp_path), ids), patched, atol=0, rtol=0)
        return
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not hf.is_patched(plain) and plain.config.rope_parameters["rope_type"] == NATIVE[spec]
    got = hf_logits(plain, ids)
    assert expected.std() > 0.1
    torch.testing.assert_close(got, patched, atol=ATOL, rtol=0)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    if spec not in ("rope", "dynamic-ntk:factor=2"):  # dynamic is plain RoPE only up to the train length
        assert (got - hf_logits(model, ids)).abs().max() > 1e-2  # the method is in effect


@pytest.mark.parametrize("spec", list(NOT_NATIVE))
def test_plain_transformers_loads_other_methods_as_the_original_model(models, ids, tmp_path, spec: str) -> None:
    model = models["llama"]
    patched, entry = _save_patched(model, spec, tmp_path, ids)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert entry["hf_rope_type"] is None and "from_pretrained" in entry["hf_note"]
    torch.testing.assert_close(hf_logits(plain, ids), hf_logits(model, ids), atol=0, rtol=0)
    assert (hf_logits(plain, ids) - patched).abs().max() > 1e-2
    hf.patch(plain, entry["method"])  # patching it by hand is the same as from_pretrained
    torch.testing.assert_close(hf_logits(plain, ids), patched, atol=0, rtol=0)


def test_patching_a_plain_loaded_native_directory_does_not_apply_the_method_twice(models, ids, tmp_path) -> None:
    """A plain load of an ``ntk`` directory runs RoPE with the raised base; patching it reads the
    original base from the entry, so ``ntk`` is applied once."""
    model = models["llama"]
    patched, _ = _save_patched(model, "ntk:factor=4", tmp_path, ids)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    encoding = hf.patch(plain, "ntk:factor=4")
    assert encoding.ctx.rope_base == THETA
    torch.testing.assert_close(hf_logits(plain, ids), patched, atol=0, rtol=0)
    hf.unpatch(plain)
    assert plain.config.rope_parameters == model.config.rope_parameters


def test_windowed_patch_saves_no_attention_override(models, ids, tmp_path) -> None:
    model = models["mistral"]
    before = model.config._attn_implementation
    _save_patched(model, "self-extend:window=24,group=3", tmp_path, ids)
    assert model.config._attn_implementation == before
    saved = json.loads((tmp_path / "config.json").read_text())
    assert hf.WINDOW_ATTENTION not in json.dumps(saved)
    reloaded = hf.from_pretrained(tmp_path)
    assert reloaded.config._attn_implementation == hf.WINDOW_ATTENTION
    hf.unpatch(reloaded)
    assert reloaded.config._attn_implementation == before


@pytest.mark.parametrize("spec", ["hope", "yarn:factor=2", "hirope:window=24,chunk=10"])
def test_ropelab_load_model_runs_the_recorded_method(models, ids, tmp_path, spec: str) -> None:
    """A directory saved from a patched model loads in ropelab with the method it was saved with
    (not as the plain RoPE model its original rope fields describe)."""
    from ropelab.pretrained import load_model

    patched, entry = _save_patched(models["llama"], spec, tmp_path, ids)
    ours, _ = load_model(tmp_path)
    assert ours.pe.spec == canonical_spec(spec) and ours.config.train_len == entry["train_len"]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), patched, atol=1e-5, rtol=1e-5)
