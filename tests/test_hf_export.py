"""``ropelab export CKPT --format hf --out DIR``: a ropelab checkpoint as a transformers directory.

The exported directory must load with plain ``transformers`` (no ropelab on the loading side) and
give ropelab's logits to 1e-5 in fp32; methods transformers cannot express are refused with one
``error:`` line and exit status 2; a failed export leaves no directory behind.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from ropelab.cli import main
from ropelab.model.checkpoint import load_checkpoint
from tests.helpers import MAX_POS as TRAIN_LEN
from tests.helpers import VOCAB, tiny_checkpoint, word_tokenizer

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTH = 2 * TRAIN_LEN + 22
ATOL = 1e-5


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))


def _leftovers(parent, name: str) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if name in path.name)


@pytest.mark.parametrize(
    ("pe", "method", "rope_type"),
    [
        ("rope", None, "default"),
        ("yarn:factor=2", None, "yarn"),  # trained (or saved) with YaRN
        ("rope", "yarn:factor=4,beta_fast=16", "yarn"),
        ("rope", "pi:factor=2", "linear"),
        ("rope", "ntk:factor=4", "default"),
        ("rope", "dynamic-ntk:factor=2", "dynamic"),
        ("rope", "llama3:factor=8,high_freq_factor=2", "llama3"),
        ("rope", "proportional:fraction=0.5", "proportional"),
        (
            "rope",
            "longrope:short_factor=1/1.1/1.2/1.3/1.5/1.7/2/2.2,long_factor=2/2.5/3/3.5/4/5/6/7,factor=4",
            "longrope",
        ),
        ("hope", None, "proportional"),  # HoPE's kept frequencies are a prefix: p-RoPE, checked angle by angle
        ("hope", "rope", "default"),  # --method replaces the checkpoint's own
    ],
)
def test_export_loads_in_plain_transformers_with_ropelab_logits(tmp_path, capsys, ids, pe, method, rope_type):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", pe)
    out = tmp_path / "exported"
    argv = ["export", str(checkpoint), "--format", "hf", "--out", str(out)]
    assert main([*argv, *(["--method", method] if method else [])]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (LlamaForCausalLM" in printed and "from_pretrained" in printed
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert _leftovers(tmp_path, ".partial") == []

    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()  # no ropelab involved
    assert model.config.rope_parameters["rope_type"] == rope_type
    assert model.config.max_position_embeddings == TRAIN_LEN
    expected_model = load_checkpoint(checkpoint, method=method).eval()
    with torch.no_grad():
        expected = expected_model(ids)
        got = model(input_ids=ids, use_cache=False).logits
    assert expected.std() > 0.1
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = "w5 w17 w96 w3"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == word_tokenizer().encode(text)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<s>", "</s>")
    assert (model.config.bos_token_id, model.config.eos_token_id) == (1, 2)


@pytest.mark.parametrize(
    ("pe", "method", "why"),
    [
        ("hope-ab2", None, "position-independent"),
        ("hope+yarn:factor=2", None, "position-independent"),
        ("nope", None, "NoPE"),
        ("rope", "rerope:window=24", "attention function"),
        ("rope", "hirope", "attention function"),
        ("rope", "pi:factor=2+yarn:factor=2", "one rope type"),
        ("rope", "pi:factor=auto", "changes with the input length"),
        ("alibi", None, "RoPE-family methods only"),
        ("learned", None, "RoPE-family methods only"),
        ("fire", None, "RoPE-family methods only"),
    ],
)
def test_export_refuses_methods_transformers_cannot_express(tmp_path, capsys, pe, method, why):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", pe)
    out = tmp_path / "exported"
    argv = ["export", str(checkpoint), "--out", str(out), *(["--method", method] if method else [])]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: export") and why in lines[0], captured.err
    assert not out.exists() and _leftovers(tmp_path, "exported") == []


def test_export_refuses_a_non_empty_output_and_bad_arguments(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(checkpoint), "--out", str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: export")
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as info:
        main(["export", str(checkpoint), "--format", "gguf", "--out", str(tmp_path / "y")])
    assert info.value.code == 2
    # an empty directory is fine to export into
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(checkpoint), "--out", str(empty)]) == 0
    assert (empty / "config.json").is_file()


def test_failed_export_leaves_no_partial_directory(tmp_path, monkeypatch, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "exported"

    def broken(self, directory, *args, **kwargs):
        (directory / "tokenizer.json").write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(transformers.PreTrainedTokenizerFast, "save_pretrained", broken)
    assert main(["export", str(checkpoint), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: disk full"
    assert not out.exists() and _leftovers(tmp_path, "exported") == []


def test_exported_config_keeps_the_ropelab_entry(tmp_path, capsys, ids):
    """Plain transformers ignores the entry; ropelab's from_pretrained re-applies the same method."""
    from ropelab.integrations import hf

    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "exported"
    assert main(["export", str(checkpoint), "--out", str(out), "--method", "yarn:factor=2"]) == 0
    entry = json.loads((out / "config.json").read_text())["ropelab"]
    assert entry["method"] == "rope+yarn:factor=2" and entry["hf_rope_type"] == "yarn"
    plain = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    patched = hf.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(
            patched(input_ids=ids, use_cache=False).logits,
            plain(input_ids=ids, use_cache=False).logits,
            atol=ATOL,
            rtol=0,
        )


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_exported_files_get_the_umask_permissions(tmp_path, capsys, mask):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    old = os.umask(mask)
    try:
        assert main(["export", str(checkpoint), "--out", str(tmp_path / "exported")]) == 0
    finally:
        os.umask(old)
    for path in [tmp_path / "exported", *(tmp_path / "exported").iterdir()]:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path.name
