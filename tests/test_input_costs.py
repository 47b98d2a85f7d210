"""Small inputs with huge costs, refused before allocating: method parameters, describe, generate.

Each case is one clear error (or a documented fallback) in bounded work."""

from __future__ import annotations

import time

import pytest
import torch

from ropelab.core.errors import RopelabError
from tests.helpers import (
    one_error_line,
    run_cli,
)


# -- 3. small input, huge cost -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("learned:max_len=1e11", r"max_len='1e11' is out of range; max_len must be an integer >= 0 and <= 1e\+06"),
        ("fire:width=1e9", "width='1e9' is out of range; width must be an integer >= 1 and <= 1024"),
        ("fire:width=1e400", "width='1e400' is not valid"),
    ],
)
def test_method_parameters_with_a_huge_cost_are_refused_before_allocating(capsys, spec, message):
    from ropelab import ModelConfig, Transformer
    from ropelab.pe import canonical_spec

    start = time.perf_counter()
    with pytest.raises(RopelabError, match=message):
        canonical_spec(spec)
    with pytest.raises(RopelabError, match=message):
        Transformer(ModelConfig.from_name("tiny", pe=spec))
    code, err = run_cli(capsys, "describe", spec, "--head-dim", "64", "--train-len", "128")
    assert (code == 2 and "out of range" in one_error_line(err)) or "not valid" in err
    assert time.perf_counter() - start < 5


def test_a_learned_table_of_the_training_length_is_bounded_too():
    from ropelab import ModelConfig, Transformer

    with pytest.raises(RopelabError, match="learned: a table of 16777216 positions"):
        Transformer(ModelConfig.from_name("tiny", pe="learned", train_len=1 << 24))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--head-dim", "100000000", "--train-len", "128"), "head_dim must be an integer from 1 to 4096"),
        (("--head-dim", "64", "--train-len", "100000000000"), "train_len must be an integer from 1 to 16777216"),
        (("--head-dim", "64", "--train-len", "128", "--length", "10000000000000"), "length must be an integer"),
        (("--head-dim", "64", "--train-len", "128", "--base", "nan"), "base must be a finite number > 1"),
        (("--head-dim", "64", "--train-len", "128", "--base", "inf"), "base must be a finite number > 1"),
        (("--head-dim", "64", "--train-len", "128", "--base", "-3"), "base must be a finite number > 1"),
    ],
)
def test_describe_is_bounded(capsys, argv, message):
    start = time.perf_counter()
    code, err = run_cli(capsys, "describe", "rope", *argv)
    assert code == 2 and message in one_error_line(err), err
    assert time.perf_counter() - start < 2
    code, _ = run_cli(capsys, "describe", "rope", "--head-dim", "4096", "--train-len", "128")
    assert code == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--temperature", "nan"), "temperature must be a finite number >= 0"),
        (("--temperature", "inf"), "temperature must be a finite number >= 0"),
        (("--temperature", "-0.5"), "temperature must be a finite number >= 0"),
        (("--top-p", "0"), r"top_p must be in \(0, 1\]"),
        (("--top-p", "1.5"), r"top_p must be in \(0, 1\]"),
        (("--top-p", "nan"), r"top_p must be in \(0, 1\]"),
        (("--top-p", "-2"), r"top_p must be in \(0, 1\]"),
    ],
)
def test_generate_refuses_bad_sampling_settings_before_loading(tmp_path, capsys, argv, message):
    import re

    from ropelab.model import generate

    code, err = run_cli(capsys, "generate", str(tmp_path / "no-such-model"), "--prompt", "x", *argv)
    assert code == 2 and re.search(message, one_error_line(err)), err  # checked before the (missing) model
    kwargs = {"temperature": float(argv[1])} if argv[0] == "--temperature" else {"top_p": float(argv[1])}
    from ropelab import ModelConfig, Transformer

    model = Transformer(ModelConfig.from_name("tiny", vocab_size=50)).eval()
    with pytest.raises(RopelabError, match=message):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 2, **kwargs)


def test_generate_api_checks_types_seed_and_prompt_length():
    from ropelab import ModelConfig, Transformer
    from ropelab.model import generate

    model = Transformer(ModelConfig.from_name("tiny", vocab_size=50, train_len=16)).eval()
    ids = torch.zeros(1, 20, dtype=torch.long)
    for kwargs, message in [
        ({"temperature": "1"}, "temperature must be"),
        ({"temperature": True}, "temperature must be"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"top_k": 2.5}, "top_k must be an integer >= 1"),
        ({"temperature": 1.0, "seed": 2**70}, "seed must be an integer"),
        ({"max_prompt_tokens": 19}, "the prompt is 20 tokens, more than the limit of 19"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens must be a positive integer"),
    ]:
        with pytest.raises(RopelabError, match=message):
            generate(model, ids, 2, **kwargs)
    with pytest.raises(RopelabError, match="max_new_tokens must be an integer >= 0"):
        generate(model, ids, 2.5)
    assert generate(model, ids, 2, max_prompt_tokens=20).shape == (1, 2)  # the limit itself is allowed


def test_generate_cli_bounds_the_prompt(tmp_path, capsys, loadable, tokenizer):
    from ropelab.model.generate import PROMPT_LIMIT_FACTOR

    limit = PROMPT_LIMIT_FACTOR * 64  # the fixture's train length
    long_prompt = "def f(x): return x\n" * 200
    assert len(tokenizer.encode(long_prompt)) > limit
    start = time.perf_counter()
    code, err = run_cli(capsys, "generate", str(loadable), "--prompt", long_prompt, "--max-new-tokens", "1")
    assert code == 2 and f"more than the limit of {limit}" in one_error_line(err), err
    code, err = run_cli(capsys, "generate", str(loadable), "--prompt", "def f(x):", "--max-prompt-tokens", "2")
    assert code == 2 and "more than the limit of 2" in one_error_line(err)
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as handle:  # 200 MB of prompt: refused from its size, without tokenizing it
        handle.truncate(200 << 20)
    code, err = run_cli(capsys, "generate", str(loadable), "--prompt-file", str(huge))
    assert code == 2 and "too long a prompt" in one_error_line(err)
    # a KV cache that cannot fit in memory is refused before the first step, not grown until killed
    code, err = run_cli(capsys, "generate", str(loadable), "--prompt", "def", "--max-new-tokens", str(10**15))
    assert code == 2 and "(prompt + max_new_tokens) need a KV cache of" in one_error_line(err), err
    assert time.perf_counter() - start < 30
    assert time.perf_counter() - start < 10
    code, out = run_cli(capsys, "generate", str(loadable), "--prompt", "def\ud800 f", "--max-new-tokens", "2")
    assert code == 0, out  # a lone surrogate from the command line: replaced, printed
