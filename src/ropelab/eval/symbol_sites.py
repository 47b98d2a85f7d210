"""Symbol use sites beyond the train length, ranked by likelihood (the HiRoPE paper's code symbol
understanding, recast as a RepoBench-style task; the parse and the window rules are
:mod:`ropelab.eval.far`'s).

:func:`call_sites` -- *use sites* of the symbols the document defined (a RepoBench-style symbol
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

:func:`probe_sites` -- *probes*: natural far sites are rare, so the project's own text after the
   document (which the model never reads) supplies use contexts, as RepoBench's next-line
   completion uses code the model has not seen. A probe is the line of a use site there, up to the
   name, appended after the document; its gold was defined before the window and neither the
   window, the sinks nor the line mention any candidate, so the window reference is at chance.

Choices: dunder names (``__init__``) are never golds or distractors (protocol names, not symbols of the
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
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ropelab.core.checks import is_int
from ropelab.core.errors import RopelabError
from ropelab.eval.far import _DUNDER, _SYMBOLS, _VARIABLE_CHARS, _prepare, _Tokens, _words
from ropelab.hierarchy.languages import canonical_language


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
