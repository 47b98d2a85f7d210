"""Targets that need context beyond the train length, found in the syntax of a code project.

The loss past the train length ``L`` is dominated by tokens that the last few hundred tokens
already predict, so it barely separates a method that uses the far context from one that ignores
it. These pure functions (no model, no torch) find what *needs* the far context, from the syntax
trees of a code project (``files`` concatenated into one text, each parsed on its own with
tree-sitter: python, java, javascript) and the tokens' character ``offsets``.

The negative control is the *window* reference: the same model with attention limited to the
previous ``reach`` (= ``L``) tokens, plus ``sinks`` tokens at the start. For a target at token
``p`` it sees tokens ``[p - reach, p)`` and ``[0, sinks)``; a target is only kept when that view
holds no mention of its name at all -- no identifier, and no whole word (``\\bX\\b``) in a comment
or string either -- so the window reference is honestly blind to it, and any gain over it comes
from the far context.

:func:`far_tokens` -- *far-dependent tokens* (in the spirit of LongPPL, Fang et al. 2024,
arXiv 2410.23771, which scores the key tokens that need long context rather than all tokens): the
tokens of every identifier occurrence (at least ``min_chars`` characters) whose name occurred
earlier as an identifier, but only before the window. Score the loss on these. The symbol tasks
built on the same parse (use sites and probes) are in :mod:`ropelab.eval.symbol_sites`.

Choices: identifiers that a tree-sitter ERROR node holds loose (its direct children) are skipped.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cache

import numpy as np

from ropelab.core.checks import is_int
from ropelab.core.errors import RopelabError
from ropelab.hierarchy.languages import canonical_language, grammar
from ropelab.hierarchy.segments import _byte_to_char


@dataclass(frozen=True)
class _Syntax:
    """Tree-sitter queries of one language. Each query captures name nodes (``skip`` whole nodes)."""

    identifiers: tuple[str, ...]  # identifier node types
    functions: str  # @function: the name of each function / method definition
    classes: str  # @class: the name of each class-like definition
    calls: str  # @call: the name a call expression calls
    skip: str  # @skip: nodes holding no site (import statements)
    binding: str  # @binding: names that bind rather than refer (parameters, keyword arguments, variables)
    variables: str  # @variable: the name of each module- / class-level variable (fields, enum constants)


_SYNTAX = {
    "python": _Syntax(
        ("identifier",),
        "(function_definition name: (identifier) @function)",
        "(class_definition name: (identifier) @class)",
        "(call function: (identifier) @call) (call function: (attribute attribute: (identifier) @call))",
        "(import_statement) @skip (import_from_statement) @skip (future_import_statement) @skip",
        """
        (parameters (identifier) @binding) (lambda_parameters (identifier) @binding)
        (default_parameter name: (identifier) @binding) (typed_parameter (identifier) @binding)
        (typed_default_parameter name: (identifier) @binding) (list_splat_pattern (identifier) @binding)
        (dictionary_splat_pattern (identifier) @binding) (keyword_argument name: (identifier) @binding)
        """,
        """
        (module (expression_statement (assignment left: (identifier) @variable)))
        (class_definition body: (block (expression_statement (assignment left: (identifier) @variable))))
        """,
    ),
    "java": _Syntax(
        ("identifier", "type_identifier"),
        "(method_declaration name: (identifier) @function)",
        """
        (class_declaration name: (identifier) @class) (interface_declaration name: (identifier) @class)
        (enum_declaration name: (identifier) @class) (record_declaration name: (identifier) @class)
        """,
        "(method_invocation name: (identifier) @call)",
        "(import_declaration) @skip (package_declaration) @skip",
        """
        (formal_parameter name: (identifier) @binding) (catch_formal_parameter name: (identifier) @binding)
        (variable_declarator name: (identifier) @binding) (constructor_declaration name: (identifier) @binding)
        """,
        """
        (field_declaration declarator: (variable_declarator name: (identifier) @variable))
        (constant_declaration declarator: (variable_declarator name: (identifier) @variable))
        (enum_constant name: (identifier) @variable)
        """,
    ),
    "javascript": _Syntax(
        ("identifier", "property_identifier", "shorthand_property_identifier", "shorthand_property_identifier_pattern"),
        """
        (function_declaration name: (identifier) @function)
        (generator_function_declaration name: (identifier) @function)
        (method_definition name: (property_identifier) @function)
        (variable_declarator name: (identifier) @function value: (arrow_function))
        (variable_declarator name: (identifier) @function value: (function_expression))
        """,
        "(class_declaration name: (identifier) @class)",
        """
        (call_expression function: (identifier) @call)
        (call_expression function: (member_expression property: (property_identifier) @call))
        """,
        "(import_statement) @skip (export_clause) @skip",
        """
        (formal_parameters (identifier) @binding) (formal_parameters (assignment_pattern left: (identifier) @binding))
        (rest_pattern (identifier) @binding) (arrow_function parameter: (identifier) @binding)
        (variable_declarator name: (identifier) @binding) (pair key: (property_identifier) @binding)
        (shorthand_property_identifier_pattern) @binding
        """,
        """
        (program [
          (lexical_declaration (variable_declarator name: (identifier) @variable))
          (variable_declaration (variable_declarator name: (identifier) @variable))
          (export_statement declaration: [
            (lexical_declaration (variable_declarator name: (identifier) @variable))
            (variable_declaration (variable_declarator name: (identifier) @variable))])])
        """,
    ),
}
_KINDS = ("identifier", "function", "class", "call", "skip", "binding", "variable")
_SYMBOLS = ("function", "class", "variable")
_VARIABLE_CHARS = 3  # shorter variables (x, db, i) are no golds nor distractors
_DUNDER = re.compile(r"__\w+__\Z")


@cache
def _grammar(language: str):
    import tree_sitter

    parser, _ = grammar(language)
    syntax = _SYNTAX[language]
    source = " ".join(f"({kind}) @identifier (ERROR ({kind}) @loose)" for kind in syntax.identifiers)
    queries = (syntax.functions, syntax.classes, syntax.calls, syntax.skip, syntax.binding, syntax.variables)
    return parser, tree_sitter.Query(parser.language, " ".join((source, *queries)))


#: the languages whose far-dependent tokens and symbol sites are found
LANGUAGES = tuple(_SYNTAX)


def _parse(files: list[str], language: str, end: int) -> dict[str, list[tuple[int, int, str]]]:
    """``kind -> [(start, end, name)]`` in the whole text's characters, sorted, for the files that
    begin before character ``end``; each file parsed on its own (``skip`` spans have no name).
    Identifiers that are direct children of an ERROR node are skipped (the well-formed subtrees an
    ERROR node wraps are kept)."""
    import tree_sitter

    parser, query = _grammar(language)
    found: dict[str, list] = {kind: [] for kind in _KINDS}
    base = 0
    for file in files:
        if base >= end:
            break
        data = file.encode("utf-8", "surrogatepass")
        captures = tree_sitter.QueryCursor(query).captures(parser.parse(data).root_node)
        loose = {n.byte_range for n in captures.get("loose", ())}  # tokens an ERROR node could not place
        nodes = [
            (kind, *node.byte_range)
            for kind in _KINDS
            for node in captures.get(kind, ())
            if node.end_byte > node.start_byte and node.byte_range not in loose
        ]
        positions = sorted({b for _, s, e in nodes for b in (s, e)})
        char = dict(zip(positions, _byte_to_char(data, file, positions)))
        for kind, s, e in nodes:
            found[kind].append((base + char[s], base + char[e], "" if kind == "skip" else file[char[s] : char[e]]))
        base += len(file)
    for spans in found.values():
        spans.sort()
    return found


class _Tokens:
    """Character offsets of tokens, made monotone (running maxima) for bisection."""

    def __init__(self, offsets) -> None:
        try:
            pairs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2) if len(offsets) else np.zeros((0, 2), int)
        except (TypeError, ValueError):
            pairs = None
        if pairs is None or len(pairs) != len(offsets):
            raise RopelabError("far: offsets must be (start, end) character pairs, one per token")
        self.n = len(pairs)
        self.starts = np.maximum.accumulate(pairs[:, 0]).tolist()
        self.ends = np.maximum.accumulate(pairs.max(axis=1)).tolist()
        self.covered = self.ends[-1] if self.n else 0

    def span(self, a: int, b: int) -> tuple[int, int] | None:
        """First and last token overlapping characters ``[a, b)``, or None."""
        first, last = bisect.bisect_right(self.ends, a), bisect.bisect_left(self.starts, b) - 1
        return (first, last) if first <= last else None

    def at(self, c: int) -> int | None:
        """The token starting at character ``c``, or None when ``c`` is not a token boundary."""
        i = bisect.bisect_left(self.starts, c)
        return i if i < self.n and self.starts[i] == c else None

    def chars(self, lo: int, hi: int) -> tuple[int, int]:
        """The characters of tokens ``[lo, hi)``."""
        return (self.starts[lo], self.ends[hi - 1]) if lo < hi else (0, 0)


class _Mentions:
    """Whole-word mentions of names in the text: ``seen(name, a, b)`` -- is ``name`` a whole word
    of ``text[a:b]`` (a slice edge counts as a word boundary) or of the sink tokens' text?"""

    def __init__(self, text: str, words: re.Pattern, sink_end: int) -> None:
        self.text, self.starts, self.ends = text, [], []
        self.where: dict[str, list[int]] = defaultdict(list)
        for match in words.finditer(text):
            self.starts.append(match.start())
            self.ends.append(match.end())
            self.where[match.group()].append(match.start())
        self.sink = set(words.findall(text[:sink_end]))

    def seen(self, name: str, a: int, b: int) -> bool:
        if name in self.sink:
            return True
        starts = self.where.get(name, ())
        i = bisect.bisect_left(starts, a)
        if i < len(starts) and starts[i] + len(name) <= b:
            return True
        for edge in (a, b):  # a word cut by the slice's edge
            j = bisect.bisect_right(self.starts, edge) - 1
            if j >= 0 and self.starts[j] < edge < self.ends[j]:
                if self.text[max(self.starts[j], a) : min(self.ends[j], b)] == name:
                    return True
        return False


def _words(language: str) -> re.Pattern:
    """The whole words of ``language`` (javascript names may hold ``$``)."""
    return re.compile(r"[\w$]+" if language == "javascript" else r"\w+")


def _prepare(files, offsets, reach: int, language: str, sinks: int, after: int = 0):
    """Checked inputs: ``(text, tokens, found, mentions)``; ``found`` covers the files that begin
    before the document's last character plus ``after`` characters."""
    if not isinstance(files, list | tuple) or not all(isinstance(f, str) for f in files):
        raise RopelabError("far: files must be a list of strings (the source files of one document)")
    language = canonical_language(language)
    if language not in _SYNTAX:
        raise RopelabError(f"far: language {language!r} is not supported; supported: {', '.join(_SYNTAX)}")
    if not is_int(reach) or reach < 1:
        raise RopelabError(f"far: reach must be a positive integer (tokens), got {reach!r}")
    if not is_int(sinks) or sinks < 0:
        raise RopelabError(f"far: sinks must be a non-negative integer, got {sinks!r}")
    text = "".join(files)
    tokens = _Tokens(list(offsets))
    sink_end = tokens.ends[min(sinks, tokens.n) - 1] if sinks and tokens.n else 0
    mentions = _Mentions(text[: tokens.covered], _words(language), sink_end)
    end = tokens.covered + after if tokens.covered else 0
    return text, tokens, _parse(files, language, end), mentions


def far_tokens(
    files: list[str],
    offsets: list[tuple[int, int]],
    reach: int,
    language: str,
    min_chars: int = 3,
    *,
    sinks: int = 0,
) -> list[int]:
    """Sorted token indices (< ``len(offsets)``) of every far-dependent identifier occurrence.

    An occurrence of name X (an identifier node of at least ``min_chars`` characters) whose first
    token is ``p`` is far-dependent when X occurred earlier as an identifier, every earlier
    occurrence's last token is ``< p - reach``, and X is no whole word of the text of tokens
    ``[p - reach, p)`` nor of the first ``sinks`` tokens. All its tokens are returned.
    """
    if not is_int(min_chars) or min_chars < 1:
        raise RopelabError(f"far: min_chars must be a positive integer, got {min_chars!r}")
    _, tokens, found, mentions = _prepare(files, offsets, reach, language, sinks)
    last: dict[str, int] = {}  # name -> the last token of its occurrences so far
    far: set[int] = set()
    for a, b, name in found["identifier"]:
        span = tokens.span(a, b) if len(name) >= min_chars else None
        if span is None:
            continue
        first, final = span
        previous = last.get(name)
        last[name] = final if previous is None else max(previous, final)
        if previous is not None and previous < first - reach:
            if not mentions.seen(name, *tokens.chars(first - reach, first)):
                far.update(range(first, final + 1))
    return sorted(far)
