"""Bad and adversarial input: one clear error or a documented fallback, in bounded work.

Each test names the class of input it covers (the list of the issue "every bad input gets one
clear line")."""

from __future__ import annotations

import itertools
import time

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from ropelab.core.errors import RopelabError
from ropelab.hierarchy import extract
from ropelab.pretrained.tokenizer import Tokenizer, without_surrogates

NESTED_JS = "function a(){ "


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A small byte-level BPE: 4-byte characters become several tokens, as in real models."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator([NESTED_JS * 50 + "}" * 50, "def f(x):\n    return x\n" * 20], trainer)
    return Tokenizer(backend, name="test-bpe")


# -- text edge cases ---------------------------------------------------------------------------
def test_lone_surrogates_are_replaced_with_a_warning(tokenizer):
    text = "def f():\n    return '\ud800'\n"
    hierarchy = extract(text, tokenizer, language="python")
    assert any("surrogate" in w for w in hierarchy.warnings)
    assert hierarchy.positions().shape[0] == hierarchy.num_tokens > 0
    assert without_surrogates("a\udc80b") == "a\ufffdb"  # one character for one: offsets stay valid
    assert tokenizer.encode("a\udc80b") == tokenizer.encode("a\ufffdb")
    with pytest.raises(RopelabError, match="must be a string"):
        tokenizer.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(RopelabError, match="source must be str, bytes or None"):
        extract(123, tokenizer, language="python")  # type: ignore[arg-type]


def test_chunks_never_split_a_character_between_them(tokenizer):
    text = "\x01" * 127 + "\U0001d518" + "\x01" * 300  # a 4-byte character at the first chunk boundary
    hierarchy = extract(text, tokenizer, language="text")
    encoding = tokenizer.encode_with_offsets(text)
    assert [s.kind for s in hierarchy.segments] == ["chunk"] * len(hierarchy.segments)
    assert len(hierarchy.segments) >= 2
    for segment in hierarchy.segments:
        chars = encoding.offsets[segment.start_token : segment.end_token]
        assert all(segment.start_char <= start and end <= segment.end_char for start, end in chars), segment
    bounds = [(s.start_token, s.end_token) for s in hierarchy.segments]
    assert bounds[0][0] == 0 and bounds[-1][1] == hierarchy.num_tokens
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))  # the chunks tile the tokens


# -- small input, bounded work -----------------------------------------------------------------
def _seconds(text: str, tokenizer) -> float:
    best = float("inf")
    for _ in range(3):  # the minimum of three runs: robust to a busy machine
        start = time.perf_counter()
        extract(text, tokenizer, language="javascript")
        best = min(best, time.perf_counter() - start)
    return best


def test_nesting_depth_costs_linear_time(tokenizer):
    """Finding each definition's wrappers once climbed ``Node.parent`` (which searches from the
    root): 20,000 nested functions took 23 s. Four times the depth must now cost about four times
    the time (a quadratic cost would be sixteen); the bound leaves room for a noisy machine."""
    small = _seconds(NESTED_JS * 2000 + "}" * 2000, tokenizer)
    large = _seconds(NESTED_JS * 8000 + "}" * 8000, tokenizer)
    assert large < 8 * small + 0.05, (small, large)


def test_corrupt_special_tokens_file_is_one_error(tmp_path, tokenizer):
    tokenizer.save(tmp_path)
    (tmp_path / "special_tokens.json").write_text("{not json")
    with pytest.raises(RopelabError, match=r"special_tokens\.json: unreadable"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    (tmp_path / "special_tokens.json").write_text('{"bos_id": "x", "eos_id": 1}')
    with pytest.raises(RopelabError, match="non-negative integers"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    (tmp_path / "special_tokens.json").write_text("[1, 2]")
    with pytest.raises(RopelabError, match="unreadable"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")


# -- output paths and run directories ----------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path, tokenizer):
    from ropelab import ModelConfig, Transformer, save_checkpoint

    tokenizer.save(tmp_path / "tok")
    config = ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, train_len=64)
    return save_checkpoint(tmp_path / "ckpt", Transformer(config), tokenizer=str(tmp_path / "tok" / "tokenizer.json"))


def _run(capsys, *argv) -> tuple[int, str]:
    from ropelab.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_an_output_path_that_cannot_be_a_directory_is_one_error_line(tmp_path, capsys, checkpoint, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "run"
    code, err = _run(
        capsys, "eval", str(checkpoint), "--methods", "rope", "--tasks", "ppl", "--lengths", "100", "--out", str(out)
    )
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert blocker.read_text() == "x"  # nothing written over it


def test_a_corrupt_run_directory_is_one_error_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{broken")
    (run / "results.jsonl").write_text("")
    code, err = _run(capsys, "report", str(run))
    assert code == 2 and err.count("\n") == 1 and "config.json: not valid JSON" in err, err
    (run / "config.json").write_text("[]")
    code, err = _run(capsys, "report", str(run))
    assert code == 2 and "expected a JSON object" in err, err


# -- model metadata is validated before it is trusted -------------------------------------------
GOOD_HF = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({k: v for k, v in GOOD_HF.items() if k == "model_type"}, "is missing"),
        ({"vocab_size": "32000"}, "vocab_size must be an integer"),
        ({"vocab_size": 1.5}, "vocab_size must be an integer"),
        ({"rope_scaling": "yarn"}, "rope_scaling must be a JSON object"),
        ({"num_attention_heads": 0}, "num_attention_heads=0 is out of range"),
        ({"num_hidden_layers": 1_000_000}, "num_hidden_layers=1000000 is out of range"),
        ({"hidden_size": 30}, "not a multiple of num_attention_heads"),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
        ({"rms_norm_eps": "x"}, "rms_norm_eps must be a positive number"),
        ({"rope_theta": float("nan")}, "rope_theta must be a positive number"),
        ({"rope_parameters": {"rope_type": 7}}, "rope_type must be a string"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": "abc"}}, "factor"),
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ],
)
def test_a_bad_hf_config_is_one_error_before_anything_is_built(tmp_path, change, message):
    import json

    from ropelab.pretrained import load_model

    config = (
        change
        if "model_type" in change and len(change) == 1 and change != {"model_type": "gpt2"}
        else {**GOOD_HF, **change}
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(RopelabError, match=message):
        load_model(tmp_path)
    assert time.perf_counter() - start < 5
