"""Bad input checked where it enters, before any work: damaged run directories, output paths that
are files, impossible lengths, damaged GGUF headers, booleans given as counts. Each is one
``error:`` line (or one RopelabError) naming what is wrong."""

from __future__ import annotations

import struct
import time

import pytest

from ropelab.cli import main
from ropelab.core.errors import RopelabError
from ropelab.core.lengths import parse_length
from tests.helpers import write_tiny_gguf


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("content", "damage"),
    [
        (b'{"model": ', "not JSON"),
        (b"[1, 2]", "a JSON array, not an object"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"", "is empty"),
    ],
)
@pytest.mark.parametrize("command", [["eval", "no-such-model"], ["compare"]])
def test_a_damaged_run_directory_is_one_error_before_the_model_loads(capsys, tmp_path, command, content, damage):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_bytes(content)
    code, stdout, err = run(capsys, *command, "--tasks", "ppl", "--out", str(out))
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert "config.json: the run's configuration" in err and damage in err and "choose another --out" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "no-such-model"],
        ["compare"],
        ["analyze", "no-such-model"],
        ["train", "--steps", "1"],
        ["experiment", "hope"],
        ["experiment", "hirope"],
    ],
)
def test_an_out_that_is_a_file_is_refused_before_any_work(capsys, tmp_path, argv):
    target = tmp_path / "afile"
    target.write_text("x")
    for out, message in ((target, "is a file"), (target / "sub", f"lies under {target}, which is a file")):
        started = time.perf_counter()
        code, _, err = run(capsys, *argv, "--out", str(out))
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert time.perf_counter() - started < 5  # nothing was loaded, tokenised or calibrated


@pytest.mark.parametrize(
    ("text", "tokens"), [("100000k", "102,400,000"), ("1000000k", "1,024,000,000"), ("3000x", "24,576,000")]
)
def test_an_impossible_length_is_refused_at_once_with_exact_numbers(text, tokens):
    with pytest.raises(RopelabError, match=f"is {tokens} tokens; ropelab reads at most 16,777,216"):
        parse_length(text, 8192)


def test_a_length_beyond_the_stdlib_is_refused_from_file_sizes(capsys):
    """Not by tokenising the whole standard library (14-17 s and 1.8 GB before)."""
    from ropelab.eval.tasks.ppl import check_stdlib_holds
    from tests.helpers import word_tokenizer

    with pytest.raises(
        RopelabError, match=r"the standard library's Python code \([\d,]+ files, [\d,]+ bytes\) is about"
    ):
        check_stdlib_holds(word_tokenizer(), 16_000_000)
    check_stdlib_holds(word_tokenizer(), 4096)  # a length it holds passes


def test_chunk_size_true_is_not_one():
    from ropelab.hierarchy import extract
    from tests.helpers import word_tokenizer

    with pytest.raises(RopelabError, match="chunk_size must be a positive integer, got True"):
        extract("x = 1\n", word_tokenizer(), language="python", chunk_size=True)


def _patched(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<Q", value) + data[offset + 8 :]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _patched(d, 24, 1 << 60), "metadata key 0: string length 1,152,921,504,606,846,976 runs past"),
        (lambda d: _patched(d, 8, 0), "tensor count: 0 (the file holds no weights)"),
        (lambda d: _patched(d, 16, 0), "metadata count: 0"),
        (lambda d: _patched(d, 16, 1 << 40), "metadata entries do not fit in the file"),
        (lambda d: d[: len(d) - 100], "run past the end of the file (truncated)"),
        (lambda d: d[:60], "metadata entries do not fit in the file (truncated"),
        (lambda d: d[:20], "metadata count: the file ends there (truncated)"),
        (lambda d: b"GGML" + d[4:], "magic: not 'GGUF'"),
        (lambda d: b"", "the file is empty"),
    ],
)
def test_gguf_header_damage_names_the_field(tmp_path, damage, message):
    from ropelab.pretrained.gguf import read_gguf_config

    good = tmp_path / "good.gguf"
    write_tiny_gguf(good, tokenizer=False)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(RopelabError, match="damaged GGUF header") as error:
        read_gguf_config(bad)
    assert message in str(error.value) and "index" not in str(error.value)


def test_a_good_gguf_header_passes(tmp_path):
    from ropelab.pretrained.gguf_header import check_gguf_header

    path = tmp_path / "good.gguf"
    write_tiny_gguf(path)  # with a tokenizer: arrays of strings and of integers
    check_gguf_header(path)
