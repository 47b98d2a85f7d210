"""Targets that need context beyond the train length: far-dependent tokens and far use sites.

The loss past the train length ``L`` is dominated by tokens that the last few hundred tokens
already predict, so it barely separates a method that uses the far context from one that ignores
it. These pure functions (no model, no torch) find tokens that *need* the far context, from the
syntax trees of a code project (``files`` concatenated into one text, each parsed on its own with
tree-sitter: python, java, javascript) and the tokens' character ``offsets``.

The negative control is the *window* reference: the same model with attention limited to the
previous ``reach`` (= ``L``) tokens, plus ``sinks`` tokens at the start. For a target at token
``p`` it sees tokens ``[p - reach, p)`` and ``[0, sinks)``; a target is only kept when that view
holds no mention of its name at all -- no identifier, and no whole word (``\\bX\\b``) in a comment
or string either -- so the window reference is honestly blind to it, and any gain over it comes
from the far context.

1. :func:`far_tokens` -- *far-dependent tokens* (in the spirit of LongPPL, Fang et al. 2024,
   arXiv 2410.23771, which scores the key tokens that need long context rather than all tokens):
   the tokens of every identifier occurrence (at least ``min_chars`` characters) whose name
   occurred earlier as an identifier, but only before the window. Score the loss on these.
2. :func:`call_sites` -- *use sites* of the symbols the document defined (a RepoBench-style symbol
   task: Liu et al. 2023, arXiv 2306.03091, complete a use of a symbol defined in another file),
   ranked by likelihood among the gold name and ``distractors`` other names the document defined
   as the same kind of symbol. Symbols: functions and methods; classes (python classes; java
   classes, interfaces, enums and records; javascript classes); and variables (python module- and
   class-level assignment targets, ``name = ...`` and ``name: T [= ...]`` directly in the module or a
   class body, never inside a function; java fields, interface constants and enum constants;
   javascript top-level ``const`` / ``let`` / ``var`` declarators, ``export``-ed ones included,
   unless the value is a function). A site is any use of one -- a call, an attribute
   (``self.name``), a bare reference, a decorator, a type (``x: Name``, ``Name x``),
   ``isinstance(x, Name)``, ``new Name()``, a read or a later assignment of a variable -- but not a
   definition's own name, not a name inside an import statement, and not a name that binds (a
   parameter, a keyword argument's name, a declared local variable). A site records its ``kind``
   (``"call"``: the callee of a call expression, else ``"reference"``) and its gold's ``symbol``
   (``"function"`` / ``"class"`` / ``"variable"``; the distractors are names of the same symbol
   kind). ``far`` sites: the definition and every mention of the gold
   *and* of each distractor lie before the window, so the window reference is at chance. ``near``
   sites: the definition lies in the last ``reach // 2`` tokens -- a positive control the window
   reference should do. A candidate's score is the sum of its tokens' log-probabilities after
   ``ids[:start]``; no candidate's token ids are a prefix of another's. A document gives at most
   ``per_gold`` (default 1) sites per gold name: a repeated gold adds little information.
3. :func:`probe_sites` -- *probes*: natural far sites are rare, so the project's own text after the
   document (which the model never reads) supplies use contexts, as RepoBench's next-line
   completion uses code the model has not seen. A probe is the line of a use site there, up to the
   name, appended after the document; its gold was defined before the window and neither the
   window, the sinks nor the line mention any candidate, so the window reference is at chance.

Choices: identifiers that a tree-sitter ERROR node holds loose (its direct children) are skipped;
dunder names (``__init__``) are never golds or distractors (protocol names, not symbols of the
document), nor are variables of fewer than 3 characters (``x``, ``db``; ALL_CAPS constants are
kept); a name defined several times refers to its last definition before the site (which
also gives its symbol kind). A site is found by its name, not by resolving scopes: ``obj.size``
counts as a use of a method ``size`` even where ``size`` is a field, and a function's local ``count``
is a use of a module-level variable ``count`` -- the window check is on text,
so the negative control holds either way. ``CallSite`` keeps its name from when sites were calls.
"""

from __future__ import annotations

import bisect
import random
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


@dataclass(frozen=True)
class CallSite:
    start: int  # token index where the candidate name begins; the model's context is ids[:start]
    name: str  # the gold name
    candidates: tuple[tuple[int, ...], ...]  # token ids of each candidate, gold included, seeded order
    gold: int  # index of the gold in candidates
    definition: int  # token index of the gold's definition (its name's first token)
    distance: int  # start - definition
    far: bool  # True: nothing in the window [start - reach, start) mentions any candidate
    kind: str = "call"  # "call": the callee of a call expression; "reference": any other use
    symbol: str = "function"  # what the gold names: "function" (or method), "class" or "variable"; distractors alike


@cache
def _grammar(language: str):
    import tree_sitter

    parser, _ = grammar(language)
    syntax = _SYNTAX[language]
    source = " ".join(f"({kind}) @identifier (ERROR ({kind}) @loose)" for kind in syntax.identifiers)
    queries = (syntax.functions, syntax.classes, syntax.calls, syntax.skip, syntax.binding, syntax.variables)
    return parser, tree_sitter.Query(parser.language, " ".join((source, *queries)))


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


def call_sites(
    tokenizer,
    files: list[str],
    ids,
    offsets: list[tuple[int, int]],
    reach: int,
    language: str,
    *,
    distractors: int = 4,
    far_limit: int = 16,
    near_limit: int = 4,
    per_gold: int = 1,
    seed: int = 0,
    sinks: int = 0,
) -> list[CallSite]:
    """Up to ``far_limit`` far and ``near_limit`` near use sites of the document's own symbols,
    sorted by start; ``[]`` when it has none.

    A site is an identifier occurrence whose name a function, method, class or module- / class-level
    variable (a java field or enum constant, a top-level javascript declarator) of the document
    defined before it -- a call, an attribute (``obj.name``), or any other reference (a decorator,
    a type, ``isinstance(x, Name)``, ``new Name()``) -- but not a definition's own name, a name an
    import statement holds, nor a name that binds (a parameter, a keyword argument's name, a
    declared local variable). ``kind`` is ``"call"`` for the callee of a call expression, else
    ``"reference"``; ``symbol`` (``"function"`` / ``"class"`` / ``"variable"``) is what the gold's last definition
    before the site defined, and every distractor is a name the document defined as the same symbol
    before the site. ``far`` sites: that definition ends before the window, and neither the window
    ``[start - reach, start)`` nor the first ``sinks`` tokens mentions the gold or any distractor
    (a whole word anywhere, comments and strings included). ``near`` sites: the definition starts in
    the last ``reach // 2`` tokens. Candidates carry the site's leading space (if any), and none's
    token ids are a prefix of another's.

    Each list holds at most ``per_gold`` sites of one gold name: distinct golds come first (spread
    over the document), a gold's second site only when every gold has one (``per_gold >= 2``, for
    documents with too few names). Sites whose distractors cannot be found are skipped.
    """
    if not is_int(per_gold) or per_gold < 1:
        raise RopelabError(f"far: per_gold must be a positive integer, got {per_gold!r}")
    ids = _check_sites(tokenizer, ids, distractors=distractors, far_limit=far_limit, near_limit=near_limit)
    offsets = list(offsets)[: len(ids)]
    text, tokens, found, mentions = _prepare(files, offsets, reach, language, sinks)
    definitions, firsts = _definitions(found, tokens)
    calls = {(a, b) for a, b, _ in found["call"]}
    encode, unused = _encoder(tokenizer), _uses(found)
    sites: dict[bool, list[_Site]] = {True: [], False: []}
    for a, b, name in found["identifier"]:
        if name not in definitions or not unused(a, b):
            continue
        lead = " " if a > 0 and text[a - 1] == " " else ""
        start = tokens.at(a - len(lead))
        if start is None or start < 1:
            continue
        spans = definitions[name]
        k = bisect.bisect_left(spans, (start,)) - 1  # the last definition before the site
        if k < 0 or spans[k][1] >= start:
            continue
        window = tokens.chars(start - reach, start) if start > reach else (0, 0)
        far = spans[k][1] < start - reach and not mentions.seen(name, *window)
        if not far and spans[k][0] < start - reach // 2:
            continue
        gold = encode(lead + name)
        end = start + len(gold)
        if gold and end < tokens.n and tuple(ids[start:end]) == gold and tokens.starts[end] == b:
            kind = "call" if (a, b) in calls else "reference"
            sites[far].append(_Site(start, name, lead, spans[k][0], window, kind, spans[k][2]))

    def build(site: _Site, far: bool) -> CallSite | None:
        rng = random.Random(f"{seed}:{site.start}")
        pool = firsts[site.symbol]
        pool = sorted(other for _, _, other in pool[: bisect.bisect_left(pool, (site.start,))] if other != site.name)
        rng.shuffle(pool)
        chosen = [encode(site.lead + site.name)]
        for other in pool:
            if len(chosen) > distractors:
                break
            if far and mentions.seen(other, *site.window):
                continue
            candidate = encode(site.lead + other)
            if candidate and not any(_prefix(candidate, c) for c in chosen):
                chosen.append(candidate)
        if len(chosen) <= distractors:
            return None
        order = list(range(len(chosen)))
        rng.shuffle(order)
        candidates = tuple(chosen[i] for i in order)
        distance = site.start - site.definition
        return CallSite(
            site.start, site.name, candidates, order.index(0), site.definition, distance, far, site.kind, site.symbol
        )

    picked = _select(sites[True], far_limit, per_gold, lambda s: build(s, True))
    picked += _select(sites[False], near_limit, per_gold, lambda s: build(s, False))
    return sorted(picked, key=lambda s: s.start)


@dataclass(frozen=True)
class Probe:
    """A use site from the text after the document, to score after the document (see :func:`probe_sites`)."""

    context: tuple[int, ...]  # token ids appended after the document: "\n" + the use site's line up to the name
    name: str  # the gold name
    candidates: tuple[tuple[int, ...], ...]  # token ids of each candidate, gold included, seeded order
    gold: int  # index of the gold in candidates
    definition: int  # token index of the gold's last definition in the document
    kind: str  # "call": the callee of a call expression; "reference": any other use
    symbol: str  # what the gold names: "function", "class" or "variable"; distractors alike


_PROBE_LINE = 200  # longest line prefix (characters) of a probe's context


def probe_sites(
    tokenizer,
    files: list[str],
    ids,
    offsets: list[tuple[int, int]],
    reach: int,
    language: str,
    *,
    distractors: int = 4,
    limit: int = 8,
    seed: int = 0,
    sinks: int = 0,
    after: int = 200_000,
) -> list[Probe]:
    """Up to ``limit`` *probes*: far use sites made from the project text after the document.

    Natural far sites (:func:`call_sites`) are rare -- a symbol has to be used again more than
    ``reach`` tokens after its last mention. A RepoBench-style next-line completion (Liu et al. 2023,
    arXiv 2306.03091) instead completes code the model has not seen, using symbols the context
    defined; here the project's own continuation supplies those natural use contexts. The document
    is ``ids`` (the project text ``files`` concatenated, cut after ``len(ids)`` tokens, i.e. at
    character ``offsets[len(ids) - 1][1]``). A probe source is a use site (found by the rules of
    :func:`call_sites`: a call, attribute or other reference of a function, class or module- /
    class-level variable, never a definition's name, a binding or an import) that lies in the text
    after the cut -- within ``after`` characters of it (only the files that begin there are parsed),
    on a line that starts after the cut.
    Its ``context`` is ``"\n"`` plus that line up to the name (the name's single leading space, if
    any, goes with the candidates); the model scores each candidate after ``ids + context``.

    A probe is kept when the document defines the gold (its last definition there, which gives
    ``symbol`` and ``definition``) before the window ``[len(ids) - reach, len(ids))``, and neither
    the window, nor the first ``sinks`` tokens, nor the context line mentions it (a whole word,
    comments and strings included); each distractor is a name the document defined as the same
    symbol kind before the window and equally unmentioned. So the window reference -- which sees
    the window, the sinks and the context -- cannot see any candidate: it is the negative control.
    No candidate's token ids are a prefix of another's. The line prefix must hold a non-blank
    character and at most 200 characters, and tokenizing the context text followed by the gold text
    must give exactly ``context + gold`` (no segmentation that natural text would never show).

    At most one probe per gold name, golds spread over the text after the cut (as in
    :func:`call_sites`), in the order of their sources; deterministic given ``seed``.
    """
    ids = _check_sites(tokenizer, ids, distractors=distractors, limit=limit, after=after)
    offsets = list(offsets)[: len(ids)]
    text, tokens, found, mentions = _prepare(files, offsets, reach, language, sinks, after)
    cut, edge = tokens.covered, tokens.n - reach  # definitions must end before token `edge`
    if edge <= 0 or limit == 0:
        return []
    definitions, firsts = _definitions(found, tokens)
    window = tokens.chars(edge, tokens.n)
    pools = {  # the names of each symbol kind defined before the window and unseen in it (or the sinks)
        symbol: sorted(name for _, last, name in pool if last < edge and not mentions.seen(name, *window))
        for symbol, pool in firsts.items()
    }
    eligible = {symbol: set(pool) for symbol, pool in pools.items()}
    calls = {(a, b) for a, b, _ in found["call"]}
    encode, unused, words = _encoder(tokenizer), _uses(found), _words(canonical_language(language))
    sources: list[_Site] = []
    for a, b, name in found["identifier"][bisect.bisect_left(found["identifier"], (cut,)) :]:
        if a >= cut + after:
            break
        if name not in definitions or not unused(a, b):
            continue
        first, last, symbol = definitions[name][-1]
        if last >= edge or name not in eligible[symbol]:  # defined in the window, or mentioned there
            continue
        lead = " " if text[a - 1] == " " else ""
        line = text.rfind("\n", 0, a) + 1
        prefix = text[line : a - len(lead)]
        if line < cut or not prefix.strip() or len(prefix) > _PROBE_LINE or name in words.findall(prefix):
            continue
        kind = "call" if (a, b) in calls else "reference"
        # a probe's _Site: start is the source's character, window the characters of its line prefix
        sources.append(_Site(a, name, lead, first, (line, a - len(lead)), kind, symbol))

    def build(site: _Site) -> Probe | None:
        context_text = "\n" + text[slice(*site.window)]
        context, gold = encode(context_text), encode(site.lead + site.name)
        if not gold or encode(context_text + site.lead + site.name) != context + gold:
            return None
        rng = random.Random(f"{seed}:{site.start}")
        seen = set(words.findall(context_text))
        pool = [other for other in pools[site.symbol] if other != site.name and other not in seen]
        rng.shuffle(pool)
        chosen = [gold]
        for other in pool:
            if len(chosen) > distractors:
                break
            candidate = encode(site.lead + other)
            if candidate and not any(_prefix(candidate, c) for c in chosen):
                chosen.append(candidate)
        if len(chosen) <= distractors:
            return None
        order = list(range(len(chosen)))
        rng.shuffle(order)
        candidates = tuple(chosen[i] for i in order)
        return Probe(context, site.name, candidates, order.index(0), site.definition, site.kind, site.symbol)

    where: dict[int, int] = {}  # id(probe) -> the character where its source lies

    def placed(site: _Site) -> Probe | None:
        probe = build(site)
        if probe is not None:
            where[id(probe)] = site.start
        return probe

    return sorted(_select(sources, limit, 1, placed), key=lambda probe: where[id(probe)])


def _check_sites(tokenizer, ids, **counts) -> list[int]:
    """Checks the options shared by :func:`call_sites` and :func:`probe_sites`; ``ids`` as a list."""
    for key, value in counts.items():
        if not is_int(value) or value < 0:
            raise RopelabError(f"far: {key} must be a non-negative integer, got {value!r}")
    if not callable(getattr(tokenizer, "encode", None)):
        raise RopelabError("far: tokenizer must have encode(text) -> list of token ids")
    try:
        return np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
    except (TypeError, ValueError):
        raise RopelabError("far: ids must be a sequence of token ids") from None


def _definitions(found, tokens: _Tokens):
    """The document's symbols: ``name -> [(first, last token, symbol)]`` sorted, and per symbol kind
    ``[(first token of the name's first such definition, last token of it, name)]`` sorted."""
    definitions: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    defined = {(a, b) for kind in ("function", "class") for a, b, _ in found[kind]}  # `const f = () => 1`
    for symbol in _SYMBOLS:
        for a, b, name in found[symbol]:
            if symbol == "variable" and (len(name) < _VARIABLE_CHARS or (a, b) in defined):
                continue
            span = tokens.span(a, b)
            if span is not None and not _DUNDER.match(name):
                definitions[name].append((*span, symbol))
    firsts: dict[str, list[tuple[int, int, str]]] = {symbol: [] for symbol in _SYMBOLS}
    for name, spans in definitions.items():
        spans.sort()
        for symbol in _SYMBOLS:
            first = next((s for s in spans if s[2] == symbol), None)
            if first is not None:
                firsts[symbol].append((first[0], first[1], name))
    for pool in firsts.values():
        pool.sort()
    return definitions, firsts


def _encoder(tokenizer):
    """``encode(text) -> tuple of token ids``, cached."""
    encoded: dict[str, tuple[int, ...]] = {}

    def encode(candidate: str) -> tuple[int, ...]:
        if candidate not in encoded:
            encoded[candidate] = tuple(int(i) for i in tokenizer.encode(candidate))
        return encoded[candidate]

    return encode


def _uses(found):
    """``unused(a, b)``: may the identifier at characters ``[a, b)`` be a use site -- no definition's
    name, no name that binds, not inside an import statement?"""
    named = {(a, b) for kind in ("function", "class", "binding", "variable") for a, b, _ in found[kind]}
    skip = [(a, b) for a, b, _ in found["skip"]]

    def unused(a: int, b: int) -> bool:
        if (a, b) in named:
            return False
        i = bisect.bisect_right(skip, (a, float("inf"))) - 1
        return not (i >= 0 and skip[i][1] >= b)  # inside an import statement?

    return unused


@dataclass(frozen=True)
class _Site:
    """A site found, before its distractors are drawn."""

    start: int
    name: str
    lead: str  # " " or ""
    definition: int
    window: tuple[int, int]  # the characters of the window's tokens
    kind: str
    symbol: str


def _prefix(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Is one of ``a``, ``b`` a prefix of the other (or are they equal)?"""
    return a[: len(b)] == b or b[: len(a)] == a


def _select(sites: list[_Site], limit: int, per_gold: int, build, tries: int = 32) -> list[CallSite]:
    """At most ``limit`` call sites, at most ``per_gold`` per gold name, spread over the document.

    Round ``r`` (``r < per_gold``) gives a site to golds that have ``r``: those golds, in the order
    of their first unused site, are cut into equal runs (one per site still wanted) and each run
    gives the first gold that builds, nearest the run's middle first; then golds left over fill
    any slots failed runs left. A gold tries its unused sites in order (at most ``tries``)."""
    picked: list[CallSite] = []
    taken: set[int] = set()  # starts of the sites used

    def pick(sites: list[_Site]) -> bool:
        for site in sites[:tries]:
            built = build(site)
            if built is not None:
                picked.append(built)
                taken.add(site.start)
                return True
        return False

    for _ in range(per_gold):
        groups: dict[str, list[_Site]] = defaultdict(list)
        for site in sites:
            if site.start not in taken:
                groups[site.name].append(site)
        golds, tried = list(groups), set()
        want = limit - len(picked)
        if want <= 0 or not golds:
            break
        runs = min(want, len(golds))
        for j in range(runs):
            run = golds[len(golds) * j // runs : len(golds) * (j + 1) // runs]
            middle = (len(run) - 1) / 2
            for i in sorted(range(len(run)), key=lambda i: (abs(i - middle), i))[:tries]:
                tried.add(run[i])
                if pick(groups[run[i]]):
                    break
        for name in golds:
            if len(picked) >= limit:
                break
            if name not in tried:
                pick(groups[name])
    return picked
