"""Bad text: lone surrogates, characters split between chunks, deep nesting, a corrupt special-tokens file.

Each case is one clear error (or a documented fallback) in bounded work."""

from __future__ import annotations

import itertools
import time

import pytest

from ropelab.core.errors import RopelabError
from ropelab.hierarchy import extract
from ropelab.pretrained.tokenizer import Tokenizer, without_surrogates
from tests.helpers import NESTED_JS


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
