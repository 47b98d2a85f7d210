"""Source text -> segments that tile it (character spans), from a tree-sitter parse.

The rules (HiRoPE, arXiv 2403.19115, Section 3.1, says only "based on tree-sitter"; the details are
ropelab's, docs/methods.md, "HiRoPE"):

* ``granularity="function"``: every function / method / constructor definition that is not nested
  inside another function is a segment; every maximal run of other code between them (imports,
  class headers, fields, statements) is a segment of kind ``"other"``. Functions nested in a
  function stay inside their parent's segment.
* ``granularity="class"``: top-level classes and top-level functions are segments, with the runs
  of other top-level code between them.
* Top-level *units* (what ``granularity="class"`` makes segments of) are computed in both modes
  and runs of other code are also cut at unit boundaries, so every segment lies inside one unit:
  the third level of ``levels=3`` is the ordinal of that unit.

Which text belongs to a definition:

* its wrappers (decorators, ``export``, ``template<...>``, annotations inside its modifiers);
* the comments and attributes (Rust ``#[...]``) directly above it: a block of comment lines,
  each starting its own line, with no blank line between them or between the block and the
  definition (a comment that follows code on its line is never attached);
* the indentation before its first line, a ``;`` and a comment after its last token on the same
  line, and then the end of that line and the blank lines that follow it, so a segment after
  a definition starts at the beginning of a line.

A run of only whitespace never forms a segment of its own: it joins the segment before it (or the
one after it at the start of the file). Every character belongs to exactly one segment.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass

from ropelab.hierarchy.languages import JS_FUNCTION_VALUES as _FUNCTION_VALUES
from ropelab.hierarchy.languages import LANGUAGES, grammar

_SPACE = re.compile(rb"[ \t\r\n\f\v]*")
_BLANK = re.compile(rb"[ \t\f\v]*")


@dataclass(frozen=True)
class Span:
    """One segment in character coordinates, before tokens are aligned to it."""

    kind: str  # "function" | "class" | "other"
    name: str | None
    start: int  # character offsets into the text, [start, end)
    end: int
    unit: int  # ordinal of the top-level unit containing the span


@dataclass
class _Definition:
    kind: str
    node: object  # the tree-sitter node matched by the query (names come from it)
    outer: object  # the node with its wrappers (decorators, export, template<...>)
    start: int  # byte range of ``outer``
    end: int
    ext_start: int = -1  # byte range with attached comments and trailing whitespace (see the module doc)
    ext_end: int = -1


class Segmenter:
    """Parses one text and computes its segments; :func:`find_spans` is the entry point."""

    def __init__(self, text: str, language: str) -> None:
        self.text = text
        self.spec = LANGUAGES[language]
        self.data = text.encode("utf-8", "surrogatepass")
        self.warnings: list[str] = []

    # --- parse -------------------------------------------------------------------------------
    def definitions(self) -> tuple[list[_Definition], list[_Definition]]:
        """Functions and classes (outermost wrapper ranges), sorted by position."""
        import tree_sitter

        parser, query = grammar(self.spec.name)
        tree = parser.parse(self.data)
        captures = tree_sitter.QueryCursor(query).captures(tree.root_node)
        if tree.root_node.has_error:
            line = _first_error_line(tree.root_node)
            self.warnings.append(f"syntax error near line {line}; tree-sitter parsed around it (error-tolerant parse)")
        comments = sorted((n.start_byte, n.end_byte) for n in captures.get("comment", ()))
        attributes = sorted((n.start_byte, n.end_byte) for n in captures.get("attribute", ()))
        self._prefixes = sorted(comments + attributes, key=lambda r: r[1])
        self._prefix_ends = [end for _, end in self._prefixes]
        self._comment_starts = {start: end for start, end in comments}
        targets = {kind: captures.get(kind, []) for kind in ("function", "class")}
        ancestors = _ancestors(tree.root_node, [node for nodes in targets.values() for node in nodes])
        found = {}
        for kind, nodes in targets.items():
            class_wrappers = self.spec.class_wrappers if kind == "class" else frozenset()
            for node in nodes:
                outer = _climb(node, ancestors[node.id], self.spec.wrappers, class_wrappers)
                found.setdefault(outer.byte_range, _Definition(kind, node, outer, *outer.byte_range))
        ordered = sorted(found.values(), key=lambda d: (d.start, -d.end))
        return [d for d in ordered if d.kind == "function"], [d for d in ordered if d.kind == "class"]

    # --- extents -----------------------------------------------------------------------------
    def _extend(self, definition: _Definition, floor: int) -> None:
        data = self.data
        start = definition.start
        index = bisect.bisect_right(self._prefix_ends, start) - 1
        while index >= 0:
            c_start, c_end = self._prefixes[index]
            if c_start < floor or not _starts_line(data, c_start):
                break
            gap = data[c_end:start]
            if gap.strip() or gap.count(b"\n") + data[c_end - 1 : c_end].count(b"\n") > 1:
                break
            start, index = c_start, index - 1
        line_start = data.rfind(b"\n", 0, start) + 1
        if not data[line_start:start].strip():
            start = line_start
        definition.ext_start = max(start, floor)

        end = _BLANK.match(data, definition.end).end()
        if data[end : end + 1] == b";":
            end = _BLANK.match(data, end + 1).end()
        end = self._comment_starts.get(end, end)  # a comment after the definition on its last line
        stop = _SPACE.match(data, end).end()
        if stop == len(data) or b"\n" not in data[end:stop]:
            end = stop
        else:
            end = data.rfind(b"\n", end, stop) + 1
        definition.ext_end = max(end, definition.ext_start)

    # --- tiling ------------------------------------------------------------------------------
    def spans(self, granularity: str) -> list[Span] | None:
        """The segments, or None when the parse has no definition at all (the caller chunks)."""
        functions, classes = self.definitions()
        if not functions and not classes:
            return None
        units = _outermost(sorted(functions + classes, key=lambda d: (d.start, -d.end)))
        members = units if granularity == "class" else _outermost(functions)
        for group in (units, members):
            floor = 0
            for definition in group:
                if definition.ext_end < 0:  # top-level functions are in both groups: extend once
                    self._extend(definition, floor)
                floor = definition.ext_end

        size = len(self.data)
        cuts = sorted({0, size, *(b for d in units + members for b in (d.ext_start, d.ext_end))})
        pieces = []  # (start, end, unit key, member index or None)
        unit_i = member_i = 0
        for start, end in itertools.pairwise(cuts):
            while unit_i < len(units) and units[unit_i].ext_end <= start:
                unit_i += 1
            while member_i < len(members) and members[member_i].ext_end <= start:
                member_i += 1
            in_unit = unit_i < len(units) and units[unit_i].ext_start <= start
            in_member = member_i < len(members) and members[member_i].ext_start <= start
            unit_key = (unit_i, in_unit)  # a unit, or the top-level run just before unit_i
            member = member_i if in_member else None
            if pieces and pieces[-1][2] == unit_key and pieces[-1][3] == member:
                pieces[-1][1] = end
            else:
                pieces.append([start, end, unit_key, member])

        pieces = _absorb_blank_runs(pieces, self.data)
        char_of = _byte_to_char(self.data, self.text, [p[0] for p in pieces] + [size])
        unit_ordinal: dict = {}
        result = []
        for i, (_, _, unit_key, member) in enumerate(pieces):
            unit = unit_ordinal.setdefault(unit_key, len(unit_ordinal))
            if member is None:
                kind, name = "other", None
            else:
                kind, name = members[member].kind, _name(members[member].node, members[member].outer)
            result.append(Span(kind, name, char_of[i], char_of[i + 1], unit))
        return result


def find_spans(text: str, language: str, granularity: str = "function") -> tuple[list[Span] | None, list[str]]:
    """Segments of ``text`` (character spans tiling it) and warnings; None spans: no definition found.

    Raises ImportError when the language's grammar wheel is not installed.
    """
    segmenter = Segmenter(text, language)
    spans = segmenter.spans(granularity)
    return spans, segmenter.warnings


def _ancestors(root, targets: list) -> dict[int, tuple | None]:
    """Node id -> its chain of ancestors ``(parent, (grandparent, (...)))`` for every target node,
    in one walk of the tree.

    ``Node.parent`` searches down from the root, so climbing from a node costs its depth per
    step: deeply nested code would make finding every definition's wrappers quadratic. The walk
    descends only into subtrees that contain a target's start, and the chains share their tails,
    so it stays linear in the nodes it must visit."""
    wanted = {node.id for node in targets}
    starts = sorted({node.start_byte for node in targets})
    found: dict[int, tuple | None] = {}
    chain: tuple | None = None  # the cursor node's ancestors, nearest first
    cursor = root.walk()
    while True:
        node = cursor.node
        if node.id in wanted:
            found[node.id] = chain
        index = bisect.bisect_left(starts, node.start_byte)
        if index < len(starts) and starts[index] < node.end_byte and cursor.goto_first_child():
            chain = (node, chain)
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return found
            chain = chain[1]


def _climb(node, ancestors: tuple | None, wrappers: frozenset[str], class_wrappers: frozenset[str]):
    """The outermost node that wraps ``node`` (decorators, ``export``, ``template<...>``)."""
    while ancestors is not None:
        parent, ancestors = ancestors
        if parent.type in wrappers or (parent.type in class_wrappers and parent.child_by_field_name("type") == node):
            node = parent
        else:
            break
    return node


def _outermost(definitions: list[_Definition]) -> list[_Definition]:
    """Definitions not nested in an earlier one (input sorted by start, longest first)."""
    kept: list[_Definition] = []
    for definition in definitions:
        if not kept or definition.start >= kept[-1].end:
            kept.append(definition)
    return kept


def _starts_line(data: bytes, position: int) -> bool:
    return not data[data.rfind(b"\n", 0, position) + 1 : position].strip()


def _absorb_blank_runs(pieces: list[list], data: bytes) -> list[list]:
    """Merge whitespace-only runs of other code into the segment before (or after) them."""
    out: list[list] = []
    pending_start = None
    for piece in pieces:
        blank = piece[3] is None and not data[piece[0] : piece[1]].strip()
        if blank and out:
            out[-1][1] = piece[1]
        elif blank:
            pending_start = piece[0] if pending_start is None else pending_start
        else:
            if pending_start is not None:
                piece[0], pending_start = pending_start, None
            out.append(piece)
    if pending_start is not None:  # nothing but whitespace
        out.append([pending_start, len(data), (0, False), None])
    return out


def _byte_to_char(data: bytes, text: str, positions: list[int]) -> list[int]:
    """Character offsets of sorted byte offsets (cuts always fall between characters)."""
    if len(data) == len(text):
        return list(positions)
    chars, previous, out = 0, 0, []
    for position in positions:
        chars += len(data[previous:position].decode("utf-8", "surrogatepass"))
        previous = position
        out.append(chars)
    return out


def _first_error_line(node) -> int:
    while not (node.is_error or node.is_missing):
        child = next((c for c in node.children if c.has_error or c.is_missing), None)
        if child is None:
            break
        node = child
    return node.start_point[0] + 1


def _text(node) -> str:
    return " ".join(node.text.decode("utf-8", "replace").split())


def _name(node, outer=None) -> str | None:
    """A readable name: ``f``, ``A::f``, ``Trait for Type``, ``exports.f``."""
    kind = node.type
    if kind in ("lexical_declaration", "variable_declaration"):  # the declarator holding the function
        declarators = [c for c in node.named_children if c.type == "variable_declarator"]
        functions = [
            c for c in declarators if getattr(c.child_by_field_name("value"), "type", None) in _FUNCTION_VALUES
        ]
        for child in functions or declarators:
            if child.child_by_field_name("name") is not None:
                return _text(child.child_by_field_name("name"))
    if kind == "expression_statement":
        assignment = node.named_children[0] if node.named_children else None
        left = assignment.child_by_field_name("left") if assignment is not None else None
        return _text(left) if left is not None else None
    if kind == "impl_item":
        trait, target = node.child_by_field_name("trait"), node.child_by_field_name("type")
        if target is None:
            return None
        return f"{_text(trait)} for {_text(target)}" if trait is not None else _text(target)
    name = node.child_by_field_name("name") or node.child_by_field_name("property")  # JS class fields
    if name is not None:
        return _text(name)
    # C/C++: the name sits under pointer / reference / function declarators; for
    # ``typedef struct {...} T;`` it is the typedef's declarator
    declarator = node.child_by_field_name("declarator")
    if declarator is None and outer is not None and outer is not node:
        declarator = outer.child_by_field_name("declarator")
    while declarator is not None:
        inner = declarator.child_by_field_name("declarator")
        if inner is None and declarator.type == "reference_declarator" and declarator.named_children:
            inner = declarator.named_children[-1]
        if inner is None:
            return _text(declarator)
        declarator = inner
    return None
