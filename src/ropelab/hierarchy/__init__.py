"""Source code -> hierarchical token positions for HiRoPE (arXiv 2403.19115).

    from ropelab.hierarchy import extract
    h = extract(open("module.py").read(), tokenizer, language="python")   # or extract(None, tok, path=...)
    h.segments            # [Segment(index, kind, name, start_line, end_line, start_token, end_token, ...)]
    h.positions()         # LongTensor [T, 2]: column 0 = offset in segment, column 1 = segment ordinal
    h.positions("global") # column 0 = global token index instead
    extract(..., levels=3).positions()   # + column 2 = ordinal of the top-level unit

Segments come from a tree-sitter parse (:mod:`ropelab.hierarchy.segments` has the rules; what counts as
a definition per language is in :mod:`ropelab.hierarchy.languages`): with ``granularity="function"``
every function or method not nested in another function is a segment and the runs of other code
between them are segments; with ``"class"`` top-level classes and functions are. Segments tile the
text; tokens are aligned to them through the tokenizer's character offsets
(:mod:`ropelab.hierarchy.positions`). Prose, unknown languages and parses without any definition fall
back to 128-token chunks, with a warning in ``Hierarchy.warnings``; nothing here crashes on bad code.
"""

from ropelab.hierarchy.languages import LANGUAGES, TEXT, canonical_language, known_languages, language_for_path
from ropelab.hierarchy.positions import (
    GRANULARITIES,
    KINDS,
    Hierarchy,
    Segment,
    align,
    extract,
    extract_files,
    file_spans,
    read_source,
    segment_text,
)
from ropelab.hierarchy.segments import Span

__all__ = [
    "GRANULARITIES",
    "KINDS",
    "LANGUAGES",
    "TEXT",
    "Hierarchy",
    "Segment",
    "Span",
    "align",
    "canonical_language",
    "extract",
    "extract_files",
    "file_spans",
    "known_languages",
    "language_for_path",
    "read_source",
    "segment_text",
]
