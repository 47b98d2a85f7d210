"""Tokens -> hierarchical positions: align segments to tokens, or fall back to fixed chunks.

A token belongs to the segment in which its first character lies (tokenizers report character
offsets), so a token spanning a boundary goes to the segment where it starts. A segment that
receives no token joins the segment before it (or after it, at the start), so segment ordinals
have no gaps. With no definition to segment by (prose, an unknown language, a parse that yields
no definition) tokens fall into fixed chunks: ``segment = i // chunk_size`` (except that a character
split over several tokens stays in one chunk, so a boundary can move a few tokens later) and, for
``levels=3``, ``unit = segment // chunk_size``.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ropelab.core.checks import is_int
from ropelab.core.errors import RopelabError
from ropelab.hierarchy.languages import LANGUAGES, TEXT, canonical_language, language_for_path
from ropelab.hierarchy.segments import Span, find_spans
from ropelab.pretrained.registry import load_tokenizer
from ropelab.pretrained.tokenizer import Tokenizer, without_surrogates

GRANULARITIES = ("function", "class")
KINDS = ("function", "class", "other", "chunk")


@dataclass(frozen=True)
class Segment:
    """A segment: a definition, a run of other code, or a chunk of tokens."""

    index: int
    kind: str  # "function" | "class" | "other" | "chunk"
    name: str | None  # the definition's name; None for "other" and "chunk"
    start_line: int  # 1-based, inclusive
    end_line: int
    start_token: int  # [start_token, end_token) into Hierarchy.ids
    end_token: int
    start_char: int  # [start_char, end_char) into the text; the segments tile it
    end_char: int
    unit: int  # ordinal of the top-level unit containing it (the third level)

    @property
    def num_tokens(self) -> int:
        return self.end_token - self.start_token

    def to_dict(self) -> dict:
        """The fields ``ropelab positions --format json`` prints."""
        keys = ("index", "kind", "name", "start_line", "end_line", "start_token", "end_token")
        return {key: getattr(self, key) for key in keys}


@dataclass
class Hierarchy:
    """Per-token hierarchical positions of one source text (HiRoPE, arXiv 2403.19115).

    ``segment_of_token[i]``, ``offset_in_segment[i]`` and ``unit_of_token[i]`` describe token
    ``ids[i]``; :meth:`positions` stacks them into the tensor a HiRoPE encoding consumes.
    """

    language: str  # "python", ..., or "text" when no language applies
    granularity: str
    levels: int
    ids: list[int]
    offsets: list[tuple[int, int]]  # character offsets of each token
    segments: list[Segment]
    segment_of_token: list[int]
    offset_in_segment: list[int]
    unit_of_token: list[int]
    warnings: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.ids)

    @property
    def chunked(self) -> bool:
        """True when segments are fixed token chunks rather than code structure."""
        return bool(self.segments) and self.segments[0].kind == "chunk"

    def positions(self, token_index: str = "segment") -> torch.Tensor:
        """``[T, levels]`` int64 positions, lowest level first.

        Column 0 is the token-level index: the offset inside the segment (``token_index="segment"``,
        an alternative reading) or the global token index (``"global"``, the HiRoPE paper's method and
        what ``hirope`` uses by default; docs/methods.md, "HiRoPE"); column 1 the segment ordinal;
        column 2 (``levels=3``) the ordinal of the top-level unit.
        """
        if token_index == "segment":
            first = self.offset_in_segment
        elif token_index == "global":
            first = range(self.num_tokens)
        else:
            raise RopelabError(f"token_index must be 'segment' or 'global', got {token_index!r}")
        columns = [first, self.segment_of_token, self.unit_of_token][: self.levels]
        return torch.tensor(np.array(columns, dtype=np.int64).reshape(self.levels, -1).T.copy())


def read_source(path: str | os.PathLike) -> tuple[str, list[str]]:
    """The text of a source file and warnings; undecodable bytes become U+FFFD (with a warning)."""
    path = Path(path)
    if path.is_dir():
        raise RopelabError(f"{path}: is a directory, not a source file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RopelabError(f"{path}: no such file") from None
    except OSError as error:
        raise RopelabError(f"{path}: cannot be read ({error.strerror})") from None
    text, warnings = _decode(data)
    return text, [f"{path}: {w}" for w in warnings]


def _decode(data: bytes) -> tuple[str, list[str]]:
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as error:
        text = data.decode("utf-8", errors="replace")
        return text, [f"not valid UTF-8 (first bad byte at offset {error.start}); undecodable bytes replaced by U+FFFD"]


def extract(
    source: str | bytes | None,
    tokenizer: Tokenizer | str | os.PathLike,
    language: str | None = None,
    path: str | os.PathLike | None = None,
    granularity: str = "function",
    levels: int = 2,
    chunk_size: int = 128,
) -> Hierarchy:
    """Tokenize ``source`` and give every token its hierarchical position.

    ``source`` is the text (``str``), raw file contents (``bytes``, decoded as UTF-8 with
    replacement) or None to read ``path``. ``tokenizer``: anything
    :func:`ropelab.pretrained.load_tokenizer` takes (a tokenizer, a model name, a tokenizer.json). The language is ``language`` (a name from
    :data:`~ropelab.hierarchy.languages.LANGUAGES`, an alias such as ``"c++"``, or ``"text"`` for
    chunks without a warning), else guessed from ``path``'s extension; unknown -> chunks with a
    warning. ``granularity``: ``"function"`` (each function/method is a segment) or ``"class"``
    (each top-level class/function is a segment). ``levels``: 2 (token, segment) or 3 (+ unit).
    Problems that still give a result (chunk fallback, syntax errors, bad UTF-8) are reported in
    ``Hierarchy.warnings``; bad arguments raise :class:`RopelabError`.
    """
    _check_arguments(granularity, levels, chunk_size)
    warnings: list[str] = []
    if source is None:
        if path is None:
            raise RopelabError("extract needs the source text or a path to read it from")
        text, warnings = read_source(path)
    elif isinstance(source, bytes | bytearray):
        text, warnings = _decode(bytes(source))
    elif isinstance(source, str):
        text = source
    else:
        raise RopelabError(f"extract: source must be str, bytes or None, got {type(source).__name__}")
    cleaned = without_surrogates(text)
    if cleaned != text:  # the tokenizer cannot take them; one character for one keeps every offset
        warnings.append("lone surrogate characters (invalid Unicode) were replaced by U+FFFD")
        text = cleaned
    if language is not None:
        language = canonical_language(language)
    elif path is not None:
        language = language_for_path(path)
        if language is None and text.strip():
            warnings.append(f"no grammar for {Path(path).name!r} (unknown extension); using {chunk_size}-token chunks")
    elif text.strip():
        warnings.append(f"no language given (pass language= or path=); using {chunk_size}-token chunks")
    encoding = load_tokenizer(tokenizer).encode_with_offsets(text)
    spans, parse_warnings = segment_text(text, language, granularity, chunk_size)
    warnings += parse_warnings
    return align(
        text, encoding.ids, encoding.offsets, spans, language or TEXT, granularity, levels, chunk_size, warnings
    )


def _check_arguments(granularity: str, levels: int, chunk_size: int) -> None:
    if granularity not in GRANULARITIES:
        raise RopelabError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if levels not in (2, 3):
        raise RopelabError(f"levels must be 2 or 3, got {levels!r}")
    if not is_int(chunk_size) or chunk_size < 1:
        raise RopelabError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def extract_files(
    texts: Sequence[str],
    tokenizer: Tokenizer | str | os.PathLike,
    language: str,
    granularity: str = "function",
    levels: int = 2,
    chunk_size: int = 128,
) -> Hierarchy:
    """:func:`extract` for several files read as one input: the texts are concatenated and
    tokenized together, but each file is parsed on its own, so one file's syntax (a Java
    ``package`` line, an unclosed bracket) never reaches the next. Segment and unit ordinals
    continue across files; a file in which the parse finds no definition is one ``other``
    segment (a file is a natural unit of code), not a run of fixed chunks."""
    _check_arguments(granularity, levels, chunk_size)
    language = canonical_language(language)
    spans, warnings = file_spans(texts, language, granularity, chunk_size)
    text = "".join(texts)
    encoding = load_tokenizer(tokenizer).encode_with_offsets(text)
    return align(
        text, encoding.ids, encoding.offsets, spans or None, language, granularity, levels, chunk_size, warnings
    )


def file_spans(
    texts: Sequence[str], language: str, granularity: str = "function", chunk_size: int = 128
) -> tuple[list[Span], list[str]]:
    """Segment spans of several files read as one text (character offsets into ``"".join(texts)``)
    and warnings: each file parsed on its own; ordinals continue across files; a file in which the
    parse finds no definition is one ``other`` segment."""
    spans: list[Span] = []
    warnings: list[str] = []
    start = units = 0
    for number, text in enumerate(texts):
        end = start + len(text)
        found, notes = segment_text(text, language, granularity, chunk_size, fallback="the file as one segment")
        warnings += [f"file {number}: {note}" for note in notes]
        if found is None:
            found = [Span("other", None, 0, len(text), 0)] if text else []
        spans += [Span(s.kind, s.name, s.start + start, s.end + start, s.unit + units) for s in found]
        units += max((s.unit for s in found), default=-1) + 1
        start = end
    return spans, warnings


def segment_text(
    text: str, language: str | None, granularity: str = "function", chunk_size: int = 128, fallback: str | None = None
) -> tuple[list[Span] | None, list[str]]:
    """Character spans of the segments (None: the caller's fallback) and warnings; never raises on
    bad code. ``fallback`` names what the caller does with None in the warnings (default: chunks)."""
    if language is None or language == TEXT or not text.strip():
        return None, []
    try:
        spans, warnings = find_spans(text, language, granularity)
    except ImportError as error:
        package = LANGUAGES[language].package
        return None, [
            f"the {language} grammar is not available ({error}; pip install {package}); using {fallback or 'chunks'}"
        ]
    if spans is None:
        warnings.append(
            f"no function or class definition found in the {language} parse; using {fallback or f'{chunk_size}-token chunks'}"
        )
    return spans, warnings


def align(
    text: str,
    ids: list[int],
    offsets: list[tuple[int, int]],
    spans: list[Span] | None,
    language: str,
    granularity: str = "function",
    levels: int = 2,
    chunk_size: int = 128,
    warnings: list[str] | None = None,
) -> Hierarchy:
    """Assign tokens (with character ``offsets``) to ``spans``, or to chunks when ``spans`` is None."""
    count = len(ids)
    starts = np.fromiter((o[0] for o in offsets), dtype=np.int64, count=count)
    starts = np.maximum.accumulate(starts) if count else starts  # a token never goes back a segment
    lines = _LineIndex(text)
    if spans is None:
        segments, segment_of_token, unit_of_token = _chunks(text, starts, chunk_size, lines)
    else:
        segments, segment_of_token, unit_of_token = _segments(starts, spans, lines)
    first_token = np.array([s.start_token for s in segments], dtype=np.int64)
    offset_in_segment = np.arange(count, dtype=np.int64) - first_token[segment_of_token] if count else segment_of_token
    return Hierarchy(
        language=language,
        granularity=granularity,
        levels=levels,
        ids=list(ids),
        offsets=[tuple(o) for o in offsets],
        segments=segments,
        segment_of_token=segment_of_token.tolist(),
        offset_in_segment=offset_in_segment.tolist(),
        unit_of_token=unit_of_token.tolist(),
        warnings=list(warnings or []),
    )


class _LineIndex:
    """1-based line numbers of character offsets."""

    def __init__(self, text: str) -> None:
        self.newlines = np.array([m.start() for m in re.finditer("\n", text)], dtype=np.int64)

    def line(self, char: int) -> int:
        return int(np.searchsorted(self.newlines, char, side="left")) + 1


def _chunks(text: str, starts: np.ndarray, chunk_size: int, lines: _LineIndex):
    """Chunks of ``chunk_size`` tokens, except that a character split over several tokens (a
    byte-level BPE piece of a 4-byte character) is never split between two chunks: the boundary
    moves forward to the next token that starts a character, so character and token ranges agree."""
    count = len(starts)
    cuts = [0]
    for i in range(chunk_size, count, chunk_size):
        i = max(i, cuts[-1] + 1)
        while i < count and starts[i] == starts[i - 1]:
            i += 1
        if i < count:
            cuts.append(i)
    token_bounds = [*cuts, count]
    segment_of_token = np.searchsorted(np.asarray(cuts), np.arange(count), side="right").astype(np.int64) - 1
    bounds = [0, *(int(starts[i]) for i in cuts[1:]), len(text)]
    segments = []
    for index, chars in enumerate(itertools.pairwise(bounds) if text else ()):
        tokens = (token_bounds[index], token_bounds[index + 1])
        segments.append(_segment(index, "chunk", None, chars, tokens, index // chunk_size, lines))
    return segments, segment_of_token, segment_of_token // chunk_size


def _segments(starts: np.ndarray, spans: list[Span], lines: _LineIndex):
    span_starts = np.array([s.start for s in spans], dtype=np.int64)
    owner = np.searchsorted(span_starts, starts, side="right") - 1
    owner = np.clip(owner, 0, len(spans) - 1)
    counts = np.bincount(owner, minlength=len(spans)) if len(starts) else np.zeros(len(spans), dtype=np.int64)
    # spans without a token join the span before them (the first ones join the next non-empty span)
    groups: list[list[int]] = []
    pending: list[int] = []
    for i in range(len(spans)):
        if counts[i] == 0 and groups:
            groups[-1].append(i)
        elif counts[i] == 0:
            pending.append(i)
        else:
            groups.append([*pending, i])
            pending = []
    if pending:  # no tokens at all
        groups = [pending]
    segments = []
    segment_of_span = np.empty(len(spans), dtype=np.int64)
    token_start = 0
    unit_ordinals: dict[int, int] = {}
    for index, group in enumerate(groups):
        main = next((spans[i] for i in group if counts[i]), spans[group[0]])
        segment_of_span[group] = index
        size = int(counts[group].sum())
        chars = (spans[group[0]].start, spans[group[-1]].end)
        unit = unit_ordinals.setdefault(main.unit, len(unit_ordinals))
        segments.append(_segment(index, main.kind, main.name, chars, (token_start, token_start + size), unit, lines))
        token_start += size
    segment_of_token = segment_of_span[owner] if len(starts) else np.zeros(0, dtype=np.int64)
    units = np.array([s.unit for s in segments], dtype=np.int64)
    return segments, segment_of_token, units[segment_of_token] if len(starts) else segment_of_token


def _segment(index: int, kind: str, name, chars: tuple[int, int], tokens: tuple[int, int], unit: int, lines):
    start, end = chars
    return Segment(index, kind, name, lines.line(start), lines.line(max(start, end - 1)), *tokens, start, end, unit)
