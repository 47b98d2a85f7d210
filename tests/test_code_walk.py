"""HiRoPE's segmentation (``ropelab.hierarchy``) against an independent walk of the tree-sitter tree.

ropelab finds definitions with tree-sitter *queries* (``ropelab/code/languages.py``); these tests
walk the syntax tree node by node instead, with their own list of what a function is in each
language, and check on real files installed on the machine (the stdlib's Python, npm's
JavaScript, the JDK's Java sources, libstdc++'s C++ headers) that both agree: every function the
walk finds (and that is not nested in another function) lies in exactly one ``function`` segment,
with the same name where names are simple, and there is no other ``function`` segment. A query
that matched too much (``const n = 1024;`` as a "function") or too little fails here.
"""

from __future__ import annotations

import sysconfig
import zipfile
from pathlib import Path

import pytest

from ropelab.hierarchy import segment_text

tree_sitter = pytest.importorskip("tree_sitter")

JS_VALUES = {"arrow_function", "function_expression", "generator_function"}

#: language -> node types that *are* a function definition (for nesting: anything that opens a function body)
FUNCTION_SCOPES = {
    "python": {"function_definition"},
    "javascript": {"function_declaration", "generator_function_declaration", "method_definition", *JS_VALUES},
    "java": {"method_declaration", "constructor_declaration", "compact_constructor_declaration", "lambda_expression"},
    "cpp": {"function_definition", "lambda_expression"},
}


def _text(node) -> str:
    return node.text.decode("utf-8", "replace")


def _function(node, language: str) -> tuple[bool, str | None]:
    """Whether ``node`` is a function definition by this test's own rules, and its name."""
    kind = node.type
    if language == "python":
        return kind == "function_definition", _text(
            node.child_by_field_name("name")
        ) if kind == "function_definition" else None
    if language == "javascript":
        if kind in ("function_declaration", "generator_function_declaration", "method_definition"):
            return True, _text(node.child_by_field_name("name"))
        if kind in ("lexical_declaration", "variable_declaration"):
            declarators = [c for c in node.named_children if c.type == "variable_declarator"]
            functions = [c for c in declarators if getattr(c.child_by_field_name("value"), "type", None) in JS_VALUES]
            return (True, _text(functions[0].child_by_field_name("name"))) if functions else (False, None)
        if kind == "expression_statement" and node.named_children:
            inner = node.named_children[0]
            right = inner.child_by_field_name("right") if inner.type == "assignment_expression" else None
            if right is not None and right.type in JS_VALUES:
                return True, _text(inner.child_by_field_name("left"))
        if kind == "field_definition":
            value = node.child_by_field_name("value")
            if value is not None and value.type in JS_VALUES:
                return True, _text(node.child_by_field_name("property"))
        return False, None
    if language == "java":
        if kind == "method_declaration":
            return node.child_by_field_name("body") is not None, _text(node.child_by_field_name("name"))
        if kind in ("constructor_declaration", "compact_constructor_declaration"):
            return True, _text(node.child_by_field_name("name"))
        return False, None
    if language == "cpp":
        return kind == "function_definition", None  # C++ names (operators, A::f, templates) are not compared
    raise AssertionError(language)


def walk_functions(text: str, language: str, grammar_language) -> list[tuple[int, str | None]]:
    """(character offset, name) of every function not nested in another function, by a plain walk."""
    parser = tree_sitter.Parser(grammar_language)
    data = text.encode("utf-8")
    tree = parser.parse(data)
    found = []
    stack = [(tree.root_node, False)]
    while stack:
        node, inside = stack.pop()
        is_function, name = _function(node, language)
        if is_function and not inside:
            found.append((len(data[: node.start_byte].decode("utf-8", "replace")), name))
        opens = node.type in FUNCTION_SCOPES[language]
        stack.extend((child, inside or opens) for child in reversed(node.children))
    return sorted(found)


def _grammar(language: str):
    module = {"python": "tree_sitter_python", "javascript": "tree_sitter_javascript", "java": "tree_sitter_java",
              "cpp": "tree_sitter_cpp"}[language]  # fmt: skip
    return tree_sitter.Language(pytest.importorskip(module).language())


def _stdlib(name: str) -> str:
    return (Path(sysconfig.get_paths()["stdlib"]) / name).read_text(encoding="utf-8")


def _npm(relative: str) -> str:
    path = Path("/usr/lib/node_modules/npm/node_modules") / relative
    if not path.is_file():
        pytest.skip(f"{path} is not installed (npm's own modules)")
    return path.read_text(encoding="utf-8")


def _jdk(name: str) -> str:
    from ropelab.eval.documents import jdk_sources

    archive = jdk_sources()
    if archive is None:
        pytest.skip("no JDK sources (apt install openjdk-17-source)")
    with zipfile.ZipFile(archive) as zf:
        return zf.read(name).decode("utf-8")


def _libstdcxx(name: str) -> str:
    candidates = sorted(Path("/usr/include/c++").glob(f"*/{name}"))
    if not candidates:
        pytest.skip(f"libstdc++ header {name} is not installed")
    return candidates[-1].read_text(encoding="utf-8")


FILES = [
    ("python", "argparse.py", lambda: _stdlib("argparse.py")),
    ("python", "dataclasses.py", lambda: _stdlib("dataclasses.py")),
    ("javascript", "tar/dist/esm/unpack.js", lambda: _npm("tar/dist/esm/unpack.js")),
    ("javascript", "tar/dist/esm/parse.js", lambda: _npm("tar/dist/esm/parse.js")),
    ("javascript", "semver/classes/range.js", lambda: _npm("semver/classes/range.js")),
    ("java", "java/util/ArrayList.java", lambda: _jdk("java.base/java/util/ArrayList.java")),
    ("java", "java/util/Optional.java", lambda: _jdk("java.base/java/util/Optional.java")),
    ("cpp", "bits/stl_list.h", lambda: _libstdcxx("bits/stl_list.h")),
    ("cpp", "bits/stl_algo.h", lambda: _libstdcxx("bits/stl_algo.h")),
]


@pytest.mark.parametrize(("language", "name", "read"), FILES, ids=[f[1] for f in FILES])
def test_function_segments_match_an_independent_walk(language, name, read):
    text = read()
    walked = walk_functions(text, language, _grammar(language))
    spans, _ = segment_text(text, language)
    assert spans is not None and walked, f"{name}: expected definitions"
    functions = [s for s in spans if s.kind == "function"]
    # every walked function lies in exactly one function segment, and each segment holds one
    owners = []
    for offset, walked_name in walked:
        holding = [s for s in functions if s.start <= offset < s.end]
        assert len(holding) == 1, (
            f"{name}: function {walked_name!r} at char {offset} is in {len(holding)} function segments"
        )
        owners.append(holding[0])
        if walked_name is not None:
            assert holding[0].name == walked_name, (
                f"{name}: segment named {holding[0].name!r}, the tree says {walked_name!r}"
            )
    assert len({id(s) for s in owners}) == len(walked), f"{name}: two functions share one segment"
    extra = [s for s in functions if all(s is not o for o in owners)]
    assert not extra, f"{name}: function segments the walk does not find: {[(s.name, s.start) for s in extra[:5]]}"


def test_javascript_non_function_declarations_are_not_functions():
    """The reported bug: top-level ``const``/``let``/``var`` whose value is not a function were
    one-line "function" segments."""
    text = (
        "const A = Symbol('a');\nconst n = 1024;\nconst fs = require('fs');\nlet s = `x`, t = 2;\n"
        "const f = () => 1;\nvar h = 3, k = async () => 4;\nobj.z = 5;\nobj.m = function () {};\n"
    )
    for language in ("javascript", "typescript"):
        spans, _ = segment_text(text, language)
        functions = [s.name for s in spans if s.kind == "function"]
        assert functions == ["f", "k", "obj.m"], (language, functions)
    assert [name for _, name in walk_functions(text, "javascript", _grammar("javascript"))] == ["f", "k", "obj.m"]
