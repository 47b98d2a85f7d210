"""The languages ropelab can segment: file extensions, tree-sitter grammars, and what counts as a definition.

Each language is a :class:`LanguageSpec`: the grammar wheel to import, and tree-sitter queries
naming the nodes that are *functions* (function, method and constructor definitions with a
body), *classes* (class-like containers of methods) and *prefixes* (comments and attributes that
attach to the definition directly below them). ``wrappers`` are nodes that wrap a definition and
belong to it (Python decorators, ``export``, C++ ``template<...>``).

What counts as a definition, per language (declarations without a body never do):

===========  ====================================================  =============================================
language     functions                                              classes
===========  ====================================================  =============================================
python       ``def`` / ``async def`` (with decorators)              ``class``
java         methods with a body, constructors, compact             class, interface, enum, record, ``@interface``
             (record) constructors
c            function definitions                                   (none: structs hold no code)
cpp          function definitions (free, in-class, out-of-class     class / struct with a body (with its
             ``A::f``), with their ``template<...>``                ``template<...>``, ``typedef`` or declaration)
javascript   function / generator declarations, class methods,     ``class`` declarations
             ``const f = () => ...`` / ``= function``, ``x.f =
             function``, arrow-valued class fields
typescript   as javascript                                          class, abstract class, interface
go           ``func`` and methods                                   (none: methods live outside types)
rust         ``fn`` with a body                                     ``impl`` and ``trait`` blocks
===========  ====================================================  =============================================

Grammar wheels (pinned in pyproject.toml, all work offline with ``tree-sitter==0.26.1``):
tree-sitter-python 0.25.0, -java 0.23.5, -c 0.24.2, -cpp 0.23.4, -javascript 0.25.0, -go 0.25.0,
-rust 0.24.2, -typescript 0.23.2.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from pathlib import PurePath

from ropelab.core.errors import RopelabError

#: The pseudo-language for prose: fixed-size chunks, no parsing.
TEXT = "text"


@dataclass(frozen=True)
class LanguageSpec:
    name: str
    module: str  # the grammar wheel's module, e.g. tree_sitter_python
    entry: str  # its function returning the language pointer
    extensions: tuple[str, ...]
    functions: str  # query patterns capturing @function
    classes: str = ""  # query patterns capturing @class
    comments: str = "(comment) @comment"
    attributes: str = ""  # attribute items that are siblings of the definition (Rust ``#[...]``)
    wrappers: frozenset[str] = frozenset()  # parents that belong to the definition they wrap
    class_wrappers: frozenset[str] = frozenset()  # parents that wrap a class only through their ``type`` field

    @property
    def package(self) -> str:
        return self.module.replace("_", "-")

    def query_source(self) -> str:
        return "\n".join(p for p in (self.functions, self.classes, self.comments, self.attributes) if p)


#: node types of a function-valued expression in JavaScript / TypeScript
JS_FUNCTION_VALUES = ("arrow_function", "function_expression", "generator_function")


def _each_function_value(pattern: str) -> str:
    """``pattern`` once per function-valued node type. One pattern per type, not an alternation
    ``[(a) (b)]``: with tree-sitter 0.26 an uncaptured alternation under a field of a nested
    pattern matched every declarator (``const n = 1024;`` became a "function")."""
    return "\n".join(pattern.format(value=f"({kind})") for kind in JS_FUNCTION_VALUES)


_JS_FUNCTIONS = "\n".join(
    [
        "(function_declaration) @function",
        "(generator_function_declaration) @function",
        "(method_definition) @function",
        _each_function_value("(lexical_declaration (variable_declarator value: {value})) @function"),
        _each_function_value("(variable_declaration (variable_declarator value: {value})) @function"),
        _each_function_value("(expression_statement (assignment_expression right: {value})) @function"),
    ]
)

LANGUAGES: dict[str, LanguageSpec] = {
    spec.name: spec
    for spec in (
        LanguageSpec(
            "python",
            "tree_sitter_python",
            "language",
            (".py", ".pyi", ".pyw"),
            "(function_definition) @function",
            "(class_definition) @class",
            wrappers=frozenset({"decorated_definition"}),
        ),
        LanguageSpec(
            "java",
            "tree_sitter_java",
            "language",
            (".java",),
            """
            (method_declaration body: (block)) @function
            (constructor_declaration) @function
            (compact_constructor_declaration) @function
            """,
            """
            (class_declaration) @class
            (interface_declaration) @class
            (enum_declaration) @class
            (record_declaration) @class
            (annotation_type_declaration) @class
            """,
            comments="(line_comment) @comment (block_comment) @comment",
        ),
        LanguageSpec("c", "tree_sitter_c", "language", (".c", ".h"), "(function_definition) @function"),
        LanguageSpec(
            "cpp",
            "tree_sitter_cpp",
            "language",
            (".cc", ".cpp", ".cxx", ".c++", ".hh", ".hpp", ".hxx", ".h++", ".ipp", ".tpp", ".inl", ".cu", ".cuh"),
            "(function_definition) @function",
            """
            (class_specifier body: (field_declaration_list)) @class
            (struct_specifier body: (field_declaration_list)) @class
            """,
            wrappers=frozenset({"template_declaration", "friend_declaration"}),
            class_wrappers=frozenset({"type_definition", "declaration"}),
        ),
        LanguageSpec(
            "javascript",
            "tree_sitter_javascript",
            "language",
            (".js", ".mjs", ".cjs", ".jsx"),
            _JS_FUNCTIONS + _each_function_value("(field_definition value: {value}) @function"),
            "(class_declaration) @class",
            wrappers=frozenset({"export_statement"}),
        ),
        LanguageSpec(
            "typescript",
            "tree_sitter_typescript",
            "language_typescript",
            (".ts", ".mts", ".cts"),
            _JS_FUNCTIONS + _each_function_value("(public_field_definition value: {value}) @function"),
            "(class_declaration) @class (abstract_class_declaration) @class (interface_declaration) @class",
            wrappers=frozenset({"export_statement"}),
        ),
        LanguageSpec(
            "tsx",
            "tree_sitter_typescript",
            "language_tsx",
            (".tsx",),
            _JS_FUNCTIONS + _each_function_value("(public_field_definition value: {value}) @function"),
            "(class_declaration) @class (abstract_class_declaration) @class (interface_declaration) @class",
            wrappers=frozenset({"export_statement"}),
        ),
        LanguageSpec(
            "go",
            "tree_sitter_go",
            "language",
            (".go",),
            "(function_declaration) @function (method_declaration) @function",
        ),
        LanguageSpec(
            "rust",
            "tree_sitter_rust",
            "language",
            (".rs",),
            "(function_item) @function",
            "(impl_item) @class (trait_item) @class",
            comments="(line_comment) @comment (block_comment) @comment",
            attributes="(attribute_item) @attribute",
        ),
    )
}

ALIASES = {"py": "python", "c++": "cpp", "js": "javascript", "ts": "typescript", "golang": "go", "rs": "rust"}

_EXTENSIONS = {ext: spec.name for spec in LANGUAGES.values() for ext in spec.extensions}


def known_languages() -> list[str]:
    """Every accepted ``language=`` name (aliases not included)."""
    return [*LANGUAGES, TEXT]


def canonical_language(name: str) -> str:
    """``"Python"`` -> ``"python"``, ``"c++"`` -> ``"cpp"``; an unknown name raises :class:`RopelabError`."""
    if not isinstance(name, str):
        raise RopelabError(f"language must be a string such as 'python', got {name!r}")
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in LANGUAGES and key != TEXT:
        raise RopelabError(f"unknown language {name!r}; known: {', '.join(known_languages())}")
    return key


def language_for_path(path: str | os.PathLike) -> str | None:
    """The language of a file from its extension (``.py`` -> ``"python"``), or None when unknown."""
    return _EXTENSIONS.get(PurePath(path).suffix.lower())


@functools.cache
def grammar(name: str):
    """``(parser, query)`` for a language, built once per process; raises ImportError without its wheel."""
    import tree_sitter

    spec = LANGUAGES[name]
    language = tree_sitter.Language(getattr(importlib.import_module(spec.module), spec.entry)())
    return tree_sitter.Parser(language), tree_sitter.Query(language, spec.query_source())
