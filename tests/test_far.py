"""Far-dependent tokens and far / near call sites (ropelab.eval.far), against hand-worked documents.

Most tests use :class:`Words`, a GPT-2-like regex tokenizer whose tokens are easy to count by hand:
a word with at most one leading space (`` alpha_fn``), one punctuation mark with at most one leading
space (`` =``, ``(``), or a run of whitespace (the last space of a run before a word joins the word,
as in GPT-2: ``"\\n    return"`` is ``"\\n   "``, ``" return"``). The filler line ``x = 1\\n`` is 4
tokens and holds no identifier of 3+ characters.
"""

from __future__ import annotations

import argparse
import re
import time
import typing
from pathlib import Path

import pytest

from ropelab.core.errors import RopelabError
from ropelab.eval.far import far_tokens
from ropelab.eval.symbol_sites import CallSite, Probe, call_sites, probe_sites
from ropelab.pretrained.tokenizer import Encoding
from tests.helpers import byte_level_bpe

FILL = "x = 1\n"  # 4 tokens: "x", " =", " 1", "\n"
REACH = 20


class Words:
    """Regex tokenizer; token ids are assigned on first sight (one vocabulary per instance)."""

    PATTERN = re.compile(r" ?\w+| ?[^\w\s]|\s+(?!\S)|\s+")

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.pieces: list[str] = []

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            self.vocab[piece] = len(self.pieces)
            self.pieces.append(piece)
        return self.vocab[piece]

    def encode(self, text: str) -> list[int]:
        return [self._id(m.group()) for m in self.PATTERN.finditer(text)]

    def encode_with_offsets(self, text: str) -> Encoding:
        matches = list(self.PATTERN.finditer(text))
        return Encoding([self._id(m.group()) for m in matches], [m.span() for m in matches])

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] for i in ids)


class Chars:
    """One token per character (its code point)."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def encode_with_offsets(self, text: str) -> Encoding:
        return Encoding(self.encode(text), [(i, i + 1) for i in range(len(text))])

    def decode(self, ids) -> str:
        return "".join(map(chr, ids))


def tokenize(tokenizer, files: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
    encoding = tokenizer.encode_with_offsets("".join(files))
    return encoding.ids, encoding.offsets


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


# -- far-dependent tokens ----------------------------------------------------------------------------

PY_FAR = [
    # tokens 0-21: def(0) " alpha_fn"(1) ( value ) : "\n   " " return" " value"(8) "\n\n" "\n"
    # def(11) " beta_fn"(12) ( ) : "\n   " " return" " '" gamma_fn(19, in a string) ' "\n"(21)
    "def alpha_fn(value):\n    return value\n\n\ndef beta_fn():\n    return 'gamma_fn'\n",
    # tokens 22-45 filler; y(46) " =" " alpha_fn"(48) ( 2 ) "\n" z(53) " =" " alpha_fn"(55) ( 3 ) "\n"(59)
    FILL * 6 + "y = alpha_fn(2)\nz = alpha_fn(3)\n",
    # 60-83 filler; "#"(84) " beta_fn"(85) " is" " next" "\n"(88); 89-96 filler; w(97) " =" " beta_fn"(99) ( )
    # "\n"(102); 103-114 filler; gamma_fn(115) " =" " 1" "\n"(118); 119-142 filler;
    # v(143) " =" " gamma_fn"(145) " +" " beta_fn"(147) ( ) "\n"
    FILL * 6
    + "# beta_fn is next\n"
    + FILL * 2
    + "w = beta_fn()\n"
    + FILL * 3
    + "gamma_fn = 1\n"
    + FILL * 6
    + "v = gamma_fn + beta_fn()\n",
]


def test_far_tokens_python_by_hand():
    tokenizer = Words()
    ids, offsets = tokenize(tokenizer, PY_FAR)
    assert [tokenizer.pieces[ids[i]] for i in (1, 48, 55, 85, 99, 115, 145, 147)] == (
        [" alpha_fn"] * 3 + [" beta_fn"] * 2 + ["gamma_fn", " gamma_fn", " beta_fn"]
    )
    # 48: alpha_fn last seen at 1 < 48 - 20, window [28, 48) is filler -> far
    # 55: alpha_fn seen at 48, within reach -> not far
    # 99: beta_fn defined at 12 (far), but the comment at 85 lies in the window [79, 99) -> not far
    # 115: gamma_fn's first identifier occurrence (19 is inside a string) -> not far
    # 145: gamma_fn seen at 115 < 125, window [125, 145) filler -> far
    # 147: beta_fn seen at 99 < 127, window [127, 147) holds gamma_fn only -> far
    assert far_tokens(PY_FAR, offsets, REACH, "python") == [48, 145, 147]
    # restricted to the tokens that have offsets (a document cut to N tokens)
    assert far_tokens(PY_FAR, offsets[:147], REACH, "python") == [48, 145]
    # a reach of 40 tokens: 48 still far (1 < 8); 145 not (gamma_fn at 115 >= 105); 147 still far (99 < 107)
    assert far_tokens(PY_FAR, offsets, 40, "python") == [48, 147]
    # names shorter than min_chars do not count
    assert far_tokens(PY_FAR, offsets, REACH, "python", min_chars=9) == []


def test_far_tokens_cover_every_token_of_an_occurrence():
    files = ["def alpha_fn(v):\n    return v\n", FILL * 10 + "alpha_fn(1)\n"]
    text = "".join(files)
    at = text.rindex("alpha_fn")
    _, offsets = tokenize(Chars(), files)
    assert far_tokens(files, offsets, 30, "py") == list(range(at, at + 8))
    assert far_tokens(files, offsets[: at + 3], 30, "python") == [at, at + 1, at + 2]
    # a reach longer than the gap: the definition's name lies in the window
    assert far_tokens(files, offsets, at, "python") == []


def test_far_tokens_sinks_count_as_visible():
    files = ["import alpha_mod\n", FILL * 8 + "alpha_mod.run()\n"]
    tokenizer = Words()
    ids, offsets = tokenize(tokenizer, files)
    at = ids.index(tokenizer.vocab["alpha_mod"])
    assert far_tokens(files, offsets, REACH, "python") == [at]
    assert far_tokens(files, offsets, REACH, "python", sinks=2) == []  # "import", " alpha_mod"
    assert far_tokens(files, offsets, REACH, "python", sinks=1) == [at]


JAVA_UTIL = (
    "class Util {\n"
    + "".join(
        f"  static int {name}(int {arg}) {{\n    return {arg};\n  }}\n"
        for name, arg in (
            ("parseHeader", "line"),
            ("readBlock", "data"),
            ("writeBlock", "data"),
            ("closeFile", "handle"),
            ("openFile", "path"),
        )
    )
    + "}\n"
)
JAVA = [
    JAVA_UTIL,
    "class Fill {\n" + "  int x = 1;\n" * 5 + "}\n",
    "class Main {\n  void run() {\n    Util.parseHeader(2);\n  }\n}\n",
]


def test_far_tokens_java_by_hand():
    tokenizer = Words()
    ids, offsets = tokenize(tokenizer, JAVA)

    def last(piece: str) -> int:
        return len(ids) - 1 - ids[::-1].index(tokenizer.vocab[piece])

    assert (ids.index(tokenizer.vocab[" Util"]), ids.index(tokenizer.vocab[" parseHeader"])) == (1, 6)
    assert (ids.index(tokenizer.vocab[" Fill"]), last(" Util"), last("parseHeader")) == (82, 127, 129)
    # Util and parseHeader: seen only in file 1 (tokens 0-80); the windows [107, 127) and [109, 129)
    # hold Fill's tail and "class Main { void run() {" (Util.); `int` is a keyword, `x` too short,
    # line/data/handle/path are reused within reach, Fill/Main/run occur once
    assert far_tokens(JAVA, offsets, REACH, "java") == [127, 129]


def test_far_tokens_javascript():
    files = [
        "class Parser {\n  parseHeader(line) {\n    return line;\n  }\n}\nfunction readBlock(data) {\n  return data;\n}\n",
        "let x = 1;\n" * 6,
        "const p = new Parser();\np.parseHeader(readBlock(2));\n",
    ]
    tokenizer = Words()
    ids, offsets = tokenize(tokenizer, files)
    # file 1 is tokens 0-30 (" Parser" 1, " parseHeader" 4, " readBlock" 19), the filler 31-66; then
    # const(67) " p" " =" " new" " Parser"(71) ( ) ; "\n" p(76) . parseHeader(78) ( readBlock(80) ...
    # each of the three was last seen in file 1, and no window [p - 20, p) holds its name
    assert [tokenizer.pieces[ids[i]] for i in (1, 4, 19, 71, 78, 80)] == [
        " Parser",
        " parseHeader",
        " readBlock",
        " Parser",
        "parseHeader",
        "readBlock",
    ]
    assert far_tokens(files, offsets, REACH, "javascript") == [71, 78, 80]


# -- call sites ----------------------------------------------------------------------------------------

PY_DEFS = ["parse_header", "read_block", "write_block", "close_file", "open_file", "noisy_fn"]
PY_CALLS = [
    "".join(f"def {name}(arg):\n    return arg\n\n" for name in PY_DEFS),
    FILL * 8,
    # far site: " parse_header"; noisy_fn is mentioned in the window, so it is no far distractor
    "# noisy_fn is mentioned here\n" + FILL * 2 + "result = parse_header(text)\n",
    # near site: helper_fn defined 10 tokens before its call (reach // 2 = 10)
    "def helper_fn():\n    return 1\nv = helper_fn()\n",
    # neither: mid_fn defined 20 tokens before its call
    "def mid_fn():\n    return 1\n" + FILL * 3 + "mid_fn()\n",
    # far site without a leading space: "read_block" after "."
    FILL * 8 + "obj.read_block(data)\n",
]


def sites_of(files, tokenizer=None, reach=REACH, **options) -> tuple[list[CallSite], list[int], object]:
    tokenizer = tokenizer or Words()
    ids, offsets = tokenize(tokenizer, files)
    return call_sites(tokenizer, files, ids, offsets, reach, files_language(files), **options), ids, tokenizer


def files_language(files) -> str:
    return "java" if files[0].startswith("class Util") else "python"


def names_of(site: CallSite, tokenizer) -> list[str]:
    return [tokenizer.decode(c).strip() for c in site.candidates]


def test_call_sites_python_by_hand():
    sites, ids, tokenizer = sites_of(PY_CALLS)
    assert [(s.name, s.far, tokenizer.pieces[ids[s.start]]) for s in sites] == [
        ("parse_header", True, " parse_header"),
        ("helper_fn", False, " helper_fn"),
        ("read_block", True, "read_block"),
    ]
    far, near, dotted = sites
    assert {(s.kind, s.symbol) for s in sites} == {("call", "function")}
    assert set(names_of(far, tokenizer)) == set(PY_DEFS) - {"noisy_fn"}  # the only 4 unseen in the window
    assert near.distance == 10 and tokenizer.pieces[ids[near.definition]] == " helper_fn"
    assert set(names_of(near, tokenizer)) <= {*PY_DEFS, "helper_fn"}
    assert tokenizer.pieces[ids[far.definition]] == " parse_header" and far.distance == far.start - far.definition
    for site in sites:
        assert len(site.candidates) == 5 and len(set(site.candidates)) == 5
        assert tokenizer.decode(site.candidates[site.gold]).strip() == site.name
        assert site.candidates[site.gold] == tuple(ids[site.start : site.start + len(site.candidates[site.gold])])
        leading = tokenizer.decode(site.candidates[site.gold]).startswith(" ")
        assert all(tokenizer.decode(c).startswith(" ") == leading for c in site.candidates)
    assert "read_block" in names_of(dotted, tokenizer)
    assert set(names_of(dotted, tokenizer)) <= {*PY_DEFS, "helper_fn", "mid_fn"}
    # fewer than `distractors` eligible names: the site is skipped
    assert [s.name for s in sites_of(PY_CALLS, distractors=5)[0]] == ["helper_fn", "read_block"]
    assert [s.name for s in sites_of(PY_CALLS, far_limit=0)[0]] == ["helper_fn"]
    assert [s.name for s in sites_of(PY_CALLS, near_limit=0, far_limit=1)[0]] == ["parse_header"]


def test_call_sites_java_by_hand():
    sites, _, tokenizer = sites_of(JAVA)
    (site,) = sites
    assert (site.name, site.far, site.start, site.definition) == ("parseHeader", True, 129, 6)
    # run() is defined before the call but inside the window: never a far distractor
    assert set(names_of(site, tokenizer)) == {"parseHeader", "readBlock", "writeBlock", "closeFile", "openFile"}
    assert names_of(site, tokenizer)[site.gold] == "parseHeader"


def test_call_sites_javascript():
    files = [
        "class Parser {\n  parseHeader(line) {\n    return line;\n  }\n}\nfunction readBlock(data) {\n  return data;\n}\n",
        "let x = 1;\n" * 6,
        "const p = new Parser();\np.parseHeader(readBlock(2));\n",
    ]
    tokenizer = Words()
    ids, offsets = tokenize(tokenizer, files)
    # readBlock's call has parseHeader in its window: no far distractor left for it
    (site,) = call_sites(tokenizer, files, ids, offsets, REACH, "javascript", distractors=1)
    assert site.name == "parseHeader" and site.far
    assert sorted(names_of(site, tokenizer)) == ["parseHeader", "readBlock"]


CLASSES = ["AlphaBox", "BetaBox", "GammaBox", "DeltaBox", "EpsilonBox"]
PY_CLASSES = [
    "".join(f"class {name}:\n    pass\n\n" for name in CLASSES)
    + "".join(f"def {name}(arg):\n    return arg\n\n" for name in PY_DEFS[:5]),
    FILL * 8,
    "def use_fn(value: AlphaBox):\n    return value\n",  # a type annotation
    FILL * 8,
    "obj = BetaBox(1)\n",  # a constructor: in Python, a call
    FILL * 8,
    "ok = isinstance(obj, GammaBox)\n",  # an argument
]


def test_classes_are_sites_with_class_distractors():
    sites, ids, tokenizer = sites_of(PY_CLASSES)
    assert [(s.name, s.kind, s.symbol, s.far) for s in sites] == [
        ("AlphaBox", "reference", "class", True),
        ("BetaBox", "call", "class", True),
        ("GammaBox", "reference", "class", True),
    ]
    for site in sites:  # every class, never a function, though five functions are as far away
        assert set(names_of(site, tokenizer)) == set(CLASSES)
        assert tokenizer.pieces[ids[site.definition]] == " " + site.name
        assert tokenizer.pieces[ids[site.start]] == " " + site.name
    # one class fewer than distractors + 1: no class site at all (functions never fill in)
    fewer = [PY_CLASSES[0].replace("class EpsilonBox", "def EpsilonBox"), *PY_CLASSES[1:]]
    assert sites_of(fewer)[0] == []
    assert [s.name for s in sites_of(fewer, distractors=3)[0]] == ["AlphaBox", "BetaBox", "GammaBox"]


JAVA_CLASSES = [
    "".join(
        f"class {name} {{\n  int {method}(int a) {{\n    return a;\n  }}\n}}\n"
        for name, method in (("Alpha", "readBlock"), ("Beta", "writeBlock"), ("Gamma", "closeFile"))
    )
    + "interface Delta {\n  int openFile(int a);\n}\nenum Epsilon {\n  ONE\n}\nrecord Zeta(int seekFile) {\n}\n",
    "class Fill {\n" + "  int x = 1;\n" * 5 + "}\n",
    "class Main {\n  Alpha field;\n"
    + "  int x = 1;\n" * 5
    + "  void run(Gamma g) {\n"
    + "    int x = 1;\n" * 5
    + "    Object o = new Beta();\n  }\n}\n",
]


def test_java_types_and_constructors_are_class_sites():
    tokenizer = Words()
    ids, offsets = tokenize(tokenizer, JAVA_CLASSES)
    sites = call_sites(tokenizer, JAVA_CLASSES, ids, offsets, REACH, "java")
    # a field's type, a parameter's type, new Beta() -- all references (Java's `new` is no call)
    assert [(s.name, s.kind, s.symbol, s.far) for s in sites] == [
        ("Alpha", "reference", "class", True),
        ("Gamma", "reference", "class", True),
        ("Beta", "reference", "class", True),
    ]
    classes = {"Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Fill", "Main"}  # no method, ever
    for site in sites:
        names = names_of(site, tokenizer)
        assert len(names) == 5 and set(names) <= classes
    assert "Main" not in names_of(sites[0], tokenizer)  # "class Main {" lies in Alpha's window
    assert tokenizer.pieces[ids[sites[1].start]] == "Gamma"  # after "(": no leading space
    assert all(not tokenizer.decode(c).startswith(" ") for c in sites[1].candidates)


PY_REFS = [
    "".join(f"def {name}(arg):\n    return arg\n\n" for name in PY_DEFS[:5]) + "class AlphaBox:\n    pass\n",
    FILL * 8,
    "handler = parse_header\n",  # a bare reference
    FILL * 8,
    "@read_block\ndef wrapped_fn():\n    return 1\n",  # a decorator
    FILL * 8,
    "value = obj.write_block\n",  # an attribute, not called
    FILL * 8,
    "close_file(1)\n",  # a call
]


def test_references_that_are_not_calls():
    sites, ids, tokenizer = sites_of(PY_REFS)
    assert [(s.name, s.kind, s.symbol, s.far) for s in sites] == [
        ("parse_header", "reference", "function", True),
        ("read_block", "reference", "function", True),
        ("write_block", "reference", "function", True),
        ("close_file", "call", "function", True),
    ]
    for site in sites:  # functions only (wrapped_fn is defined before the later sites), never AlphaBox
        assert set(names_of(site, tokenizer)) <= {*PY_DEFS[:5], "wrapped_fn"}
    pieces = [" parse_header", "read_block", "write_block", "close_file"]  # after " ", "@", ".", "\n"
    assert [tokenizer.pieces[ids[s.start]] for s in sites] == pieces


PY_NOT_SITES = [
    "".join(f"def {name}(arg):\n    return arg\n\n" for name in PY_DEFS[:5]),
    FILL * 8,
    "from helpers import parse_header\nimport read_block\n",  # import statements hold no site
    FILL * 8,
    "def write_block(arg):\n    return arg\n",  # a definition's own name is no site (nor a redefinition's)
    FILL * 8,
    "def other_fn(close_file, open_file=1):\n    return 1\n",  # parameters bind: no site
    FILL * 8,
    "run_it(read_block=2)\n",  # a keyword argument's name binds: no site
    FILL * 8,
    "result = parse_header(1)\n",  # the one site
]


def test_imports_definitions_and_bindings_are_not_sites():
    tokenizer = Words()
    ids, offsets = tokenize(tokenizer, PY_NOT_SITES)
    sites = call_sites(tokenizer, PY_NOT_SITES, ids, offsets, REACH, "python", per_gold=9, near_limit=9)
    last = len(ids) - 1 - ids[::-1].index(tokenizer.vocab[" parse_header"])
    assert [(s.name, s.start, s.kind, s.far) for s in sites] == [("parse_header", last, "call", True)]
    # the import still mentions the name: a reach that covers it makes the site near-less and not far
    text = "".join(PY_NOT_SITES)
    at = next(i for i, (a, _) in enumerate(offsets) if a >= text.index("import parse_header"))
    assert call_sites(tokenizer, PY_NOT_SITES, ids, offsets, last - at + 1, "python") == []


VARS = ["alpha_rate", "beta_rate", "GAMMA_LIMIT", "delta_name", "epsilon_path"]
PY_VARS = [
    "".join(f"{name} = {i}\n" for i, name in enumerate(VARS))
    + "xy = 1\n__all__ = []\n"  # too short, dunder: no symbols
    + "class Config:\n    retry_limit = 3\n    timeout_ms: int = 10\n\n"  # class attributes
    + "def setup_fn(arg):\n    local_count = arg\n    return local_count\n\n"  # a local: no symbol
    + "".join(f"def {name}(arg):\n    return arg\n\n" for name in PY_DEFS[:5]),
    FILL * 8,
    "total = alpha_rate + 1\n",  # a module-level variable, read
    FILL * 8,
    "value = obj.retry_limit\n",  # a class attribute
    FILL * 8,
    "print(local_count, xy)\n",  # neither is a symbol
    FILL * 8,
    "parse_header(1)\n",  # a function: function distractors only
]


def test_module_and_class_variables_are_sites_with_variable_distractors():
    sites, ids, tokenizer = sites_of(PY_VARS)
    assert [(s.name, s.kind, s.symbol, s.far) for s in sites] == [
        ("alpha_rate", "reference", "variable", True),
        ("retry_limit", "reference", "variable", True),
        ("parse_header", "call", "function", True),
    ]
    variables = {*VARS, "retry_limit", "timeout_ms", "total", "value"}
    for site in sites[:2]:  # variables only, never a function or a class, never a local or a short name
        assert set(names_of(site, tokenizer)) <= variables
        assert tokenizer.pieces[ids[site.definition]].strip() == site.name
    assert set(names_of(sites[2], tokenizer)) <= {*PY_DEFS[:5], "setup_fn"}
    # a variable's own definitions (the first and a later assignment target) are no sites
    again = [*PY_VARS[:2], "alpha_rate = 7\n", *PY_VARS[2:]]
    near, *rest = sites_of(again)[0]
    assert (near.name, near.symbol, near.far, near.distance) == ("alpha_rate", "variable", False, 6)
    assert [(s.name, s.far) for s in rest] == [("retry_limit", True), ("parse_header", True)]
    # too few variables before alpha_rate's site (epsilon_path, retry_limit, timeout_ms): it goes;
    # retry_limit's site has total as well: it stays
    fewer = [re.sub(r"(beta_rate|GAMMA_LIMIT|delta_name) = \d\n", "", PY_VARS[0]), *PY_VARS[1:]]
    assert [s.name for s in sites_of(fewer)[0]] == ["retry_limit", "parse_header"]


def test_local_variables_are_no_symbols():
    locals_only = [
        "def setup_fn(arg):\n" + "".join(f"    {name} = arg\n" for name in VARS) + "    return arg\n",
        FILL * 8,
        "".join(f"print({name})\n" + FILL * 8 for name in VARS),
    ]
    sites, _, _ = sites_of(locals_only, distractors=0, per_gold=5)
    assert sites == []


JAVA_VARS = [
    "class Config {\n  static int maxRetries = 3;\n  int timeoutMs, bufferSize;\n"
    "  void run() {\n    int localCount = 1;\n  }\n}\n"
    "interface Limits {\n  int UPPER_BOUND = 9;\n}\nenum Shade {\n  CRIMSON, AZURE\n}\n",
    "class Fill {\n" + "  int x = 1;\n" * 5 + "}\n",
    "class Main {\n  void go() {\n    int a = maxRetries;\n    int x = 1;\n"
    + "    Object c = AZURE;\n"
    + "    int x = 1;\n" * 5
    + "    a = localCount;\n  }\n}\n",
]


def test_java_fields_and_enum_constants_are_variable_sites():
    tokenizer = Words()
    ids, offsets = tokenize(tokenizer, JAVA_VARS)
    sites = call_sites(tokenizer, JAVA_VARS, ids, offsets, REACH, "java", distractors=3)
    variables = {"maxRetries", "timeoutMs", "bufferSize", "UPPER_BOUND", "CRIMSON", "AZURE"}
    assert [(s.name, s.kind, s.symbol, s.far) for s in sites if s.symbol == "variable"] == [
        ("maxRetries", "reference", "variable", True),
        ("AZURE", "reference", "variable", True),
    ]
    for site in sites:
        if site.symbol == "variable":
            assert len(names_of(site, tokenizer)) == 4 and set(names_of(site, tokenizer)) <= variables
        assert site.name != "localCount"
    assert "maxRetries" not in names_of(sites[-1], tokenizer)  # in AZURE's window


def test_javascript_top_level_declarators_are_variables():
    names = ["alphaRate", "betaRate", "gammaRate", "deltaRate", "epsilonRate"]
    files = [
        "".join(f"const {name} = {i};\n" for i, name in enumerate(names))
        + "const helperFn = () => 1;\nfunction setup() {\n  const localCount = 1;\n  return localCount;\n}\n",
        "let x = 1;\n" * 6,
        "print(localCount, helperFn, alphaRate);\n",
    ]
    tokenizer = Words()
    ids, offsets = tokenize(tokenizer, files)
    sites = call_sites(tokenizer, files, ids, offsets, REACH, "javascript", distractors=4)
    (site,) = sites  # helperFn: a function (of too few), localCount: a local
    assert (site.name, site.symbol, site.far) == ("alphaRate", "variable", True)
    assert set(names_of(site, tokenizer)) == set(names)


def test_one_site_per_gold_unless_asked():
    files = [PY_CALLS[0], FILL * 8, "a = parse_header(1)\n", FILL * 8, "b = parse_header(2)\n"]
    tokenizer = Words()
    ids, offsets = tokenize(tokenizer, files)
    found = [i for i, t in enumerate(ids) if t == tokenizer.vocab[" parse_header"]][1:]
    assert len(found) == 2
    (one,) = call_sites(tokenizer, files, ids, offsets, REACH, "python")
    assert one.start == found[0]
    two = call_sites(tokenizer, files, ids, offsets, REACH, "python", per_gold=2)
    assert [s.start for s in two] == found and all(s.far for s in two)
    # distinct golds before repeats: with room for two sites, the second gold wins over a repeat
    files = [*files, FILL * 8, "c = read_block(3)\n"]
    ids, offsets = tokenize(tokenizer, files)
    picked = call_sites(tokenizer, files, ids, offsets, REACH, "python", per_gold=2, far_limit=2)
    assert [s.name for s in picked] == ["parse_header", "read_block"]
    assert len(call_sites(tokenizer, files, ids, offsets, REACH, "python", per_gold=2)) == 3


def test_call_site_fields_keep_their_defaults():
    site = CallSite(5, "f", ((1,), (2,)), 0, 1, 4, True)
    assert (site.kind, site.symbol) == ("call", "function")
    import inspect

    assert inspect.signature(call_sites).parameters["far_limit"].default == 16


def test_no_candidate_is_a_prefix_of_another():
    names = ["load", "load_all", "loader", "save", "save_as", "store", "fetch", "fetch_one", "drop"]
    files = ["".join(f"def {n}(a):\n    return a\n" for n in names), FILL * 40, "y = load(1)\nz = save(2)\n"]
    sites, _, tokenizer = sites_of(files, Chars(), reach=120, distractors=3)
    assert [s.name for s in sites] == ["load", "save"]
    for seed in range(20):
        for site in sites_of(files, Chars(), reach=120, distractors=3, seed=seed)[0]:
            for i, a in enumerate(site.candidates):
                for b in site.candidates[i + 1 :]:
                    assert a[: len(b)] != b and b[: len(a)] != a, names_of(site, tokenizer)


def test_call_sites_are_deterministic_under_the_seed():
    first = sites_of(PY_CALLS, seed=3)[0]
    assert first == sites_of(PY_CALLS, seed=3)[0]
    orders = {tuple(s.candidates for s in sites_of(PY_CALLS, seed=seed)[0]) for seed in range(10)}
    assert len(orders) > 1
    for seed in range(10):  # the seed changes the order and the distractors, never the sites
        assert [s.start for s in sites_of(PY_CALLS, seed=seed)[0]] == [s.start for s in first]


# -- probes: use sites after the document ----------------------------------------------------------------

PROBE_DOC = [
    "".join(f"def {name}(arg):\n    return arg\n\n" for name in PY_DEFS)
    + "".join(f"class {name}:\n    pass\n\n" for name in CLASSES)
    + "".join(f"{name} = {i}\n" for i, name in enumerate(VARS)),
    FILL * 8,
    # the window: the last 20 tokens (noisy_fn mentioned, late_fn defined there)
    FILL + "# noisy_fn is mentioned here\ndef late_fn():\n    return 1\n",
]
PROBE_AFTER = [
    "result = parse_header(text)\n",  # a probe: " parse_header" after "result ="
    "y = noisy_fn(2)\n",  # mentioned in the window: no probe
    "m = late_fn()\n",  # defined in the window: no probe
    "from helpers import write_block\n",  # an import: no site
    "def g_fn(write_block=write_block):\n    return 1\n",  # a binding; then the gold is in its own line
    "z = obj.read_block(3)\n",  # a probe without a leading space
    "w = parse_header(4)\n",  # parse_header again: one probe per gold
    "parse_header(5)\n",  # an empty line prefix: no probe
    "obj = BetaBox()\n",  # a class
    "t = alpha_rate * 2\n",  # a variable
    "def tail_fn(a):\n    return close_file(a) + open_file\n",  # open_file's line mentions close_file
]


def probes_of(doc, tail, tokenizer=None, language="python", **options) -> tuple[list[Probe], list[int], object]:
    """Probes of the document ``doc`` (files), read as the first tokens of the project ``doc + tail``."""
    tokenizer = tokenizer or Words()
    files = [*doc, *tail]
    ids, offsets = tokenize(tokenizer, files)
    n = sum(1 for _, end in offsets if end <= len("".join(doc)))
    probes = probe_sites(tokenizer, files, ids[:n], offsets[:n], REACH, language, **options)
    return probes, ids[:n], tokenizer


def test_probes_python_by_hand():
    probes, ids, tokenizer = probes_of(PROBE_DOC, PROBE_AFTER)
    assert [(p.name, p.kind, p.symbol, tokenizer.decode(p.context)) for p in probes] == [
        ("parse_header", "call", "function", "\nresult ="),
        ("read_block", "call", "function", "\nz = obj."),
        ("BetaBox", "call", "class", "\nobj ="),
        ("alpha_rate", "reference", "variable", "\nt ="),
        ("close_file", "call", "function", "\n    return"),
    ]
    window = tokenizer.decode(ids[-REACH:])
    assert "noisy_fn" in window and "late_fn" in window and "read_block" not in window
    pools = {"function": set(PY_DEFS) - {"noisy_fn"}, "class": set(CLASSES), "variable": set(VARS)}
    for probe in probes:
        names = names_of(probe, tokenizer)
        assert len(names) == 5 and len(set(probe.candidates)) == 5 and names[probe.gold] == probe.name
        assert set(names) == pools[probe.symbol]  # same kind, defined before the window, unseen in it
        assert tokenizer.pieces[ids[probe.definition]].strip() == probe.name and probe.definition < len(ids) - REACH
        gold = probe.candidates[probe.gold]
        assert tokenizer.encode(tokenizer.decode(probe.context + gold)) == [*probe.context, *gold]
        leading = tokenizer.decode(gold).startswith(" ")
        assert leading == (probe.name != "read_block")  # the leading space goes with the candidates
        assert all(tokenizer.decode(c).startswith(" ") == leading for c in probe.candidates)
    # open_file's line mentions close_file: only 3 distractors left; with 3 asked it is a probe,
    # and close_file is none of its candidates
    probes3, _, tokenizer = probes_of(PROBE_DOC, PROBE_AFTER, distractors=3)
    (last,) = [p for p in probes3 if p.name == "open_file"]
    assert tokenizer.decode(last.context) == "\n    return close_file(a) +"
    assert set(names_of(last, tokenizer)) == {"open_file", "parse_header", "read_block", "write_block"}
    # write_block's only source has the gold in its own line ("def g_fn(write_block="): never a probe
    assert "write_block" not in {p.name for p in probes3}


def test_probes_need_a_far_definition_and_an_unseen_gold():
    # the gold mentioned in the window: no probe of it, and no distractor either
    mentioned = [*PROBE_DOC[:2], PROBE_DOC[2].replace("noisy_fn", "read_block")]
    probes, _, tokenizer = probes_of(mentioned, PROBE_AFTER)
    assert "read_block" not in {p.name for p in probes}
    assert all("read_block" not in names_of(p, tokenizer) for p in probes)
    assert "noisy_fn" in {name for p in probes for name in names_of(p, tokenizer)}
    # the first `sinks` tokens ("def", " parse_header") are visible too
    probes, _, tokenizer = probes_of(PROBE_DOC, PROBE_AFTER, sinks=2)
    assert [p.name for p in probes] == ["BetaBox", "alpha_rate"]  # 4 functions left: 3 distractors each
    probes, _, tokenizer = probes_of(PROBE_DOC, PROBE_AFTER, sinks=2, distractors=3)
    assert [p.name for p in probes] == ["read_block", "BetaBox", "alpha_rate", "close_file"]
    assert all("parse_header" not in names_of(p, tokenizer) for p in probes)
    # a cut inside the line of a use: that line gives no probe (its start lies in the document)
    cut = [*PROBE_DOC, "result = "]
    probes, _, tokenizer = probes_of(cut, ["parse_header(text)\n", *PROBE_AFTER[1:]])
    assert [(p.name, tokenizer.decode(p.context)) for p in probes][:2] == [
        ("read_block", "\nz = obj."),
        ("parse_header", "\nw ="),  # its next use
    ]
    # a document no longer than the reach, and a project that ends at the cut, give none
    assert probes_of(PROBE_DOC[2:], PROBE_AFTER)[0] == []
    assert probes_of(PROBE_DOC, [])[0] == []
    assert probe_sites(Words(), [], [], [], REACH, "python") == []


def test_probes_limit_and_seed():
    first = probes_of(PROBE_DOC, PROBE_AFTER, seed=3)[0]
    assert first == probes_of(PROBE_DOC, PROBE_AFTER, seed=3)[0]
    runs = [probes_of(PROBE_DOC, PROBE_AFTER, seed=seed)[0] for seed in range(10)]
    assert len({tuple(p.candidates for p in probes) for probes in runs}) > 1
    assert len({p.gold for probes in runs for p in probes}) > 1
    assert all([p.name for p in probes] == [p.name for p in first] for probes in runs)
    two = probes_of(PROBE_DOC, PROBE_AFTER, limit=2)[0]
    assert len(two) == 2 and {p.name for p in two} < {p.name for p in first}
    assert probes_of(PROBE_DOC, PROBE_AFTER, limit=0)[0] == []
    # sources only within `after` characters of the cut: "result = parse_header" is 28 characters
    assert [p.name for p in probes_of(PROBE_DOC, PROBE_AFTER, after=28)[0]] == ["parse_header"]
    assert probes_of(PROBE_DOC, PROBE_AFTER, after=8)[0] == []


def test_probes_java():
    after = [JAVA[2], "class Tail {\n  int go() {\n    return readBlock(1) + Util.closeFile(2);\n  }\n}\n"]
    probes, ids, tokenizer = probes_of(JAVA[:2], after, language="java")
    assert [(p.name, p.kind, p.symbol, tokenizer.decode(p.context)) for p in probes] == [
        ("parseHeader", "call", "function", "\n    Util."),
        ("readBlock", "call", "function", "\n    return"),
    ]  # Util: no other class before the window; closeFile: readBlock is in its line
    methods = {"parseHeader", "readBlock", "writeBlock", "closeFile", "openFile"}
    for probe in probes:
        assert set(names_of(probe, tokenizer)) == methods and names_of(probe, tokenizer)[probe.gold] == probe.name
        assert tokenizer.pieces[ids[probe.definition]] == " " + probe.name
    assert [p.name for p in probes_of(JAVA[:2], after, language="java", distractors=3)[0]] == [
        "parseHeader",
        "readBlock",
        "closeFile",
    ]


# -- real code -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stdlib_files() -> list[str]:
    texts = [Path(module.__file__).read_text(encoding="utf-8") for module in (argparse, typing)]
    return [t if t.endswith("\n") else t + "\n" for t in texts]


def test_far_sites_are_unseen_in_the_window(stdlib_files):
    """Property: for every far site, no candidate's name is a whole word of the decoded window."""
    text = "".join(stdlib_files)
    tokenizer = byte_level_bpe([text[i : i + 2000] for i in range(0, len(text), 2000)], 400)
    ids, offsets = tokenize(tokenizer, stdlib_files)
    reach = 3000
    sites = call_sites(tokenizer, stdlib_files, ids, offsets, reach, "python", far_limit=20, near_limit=6)
    far = [s for s in sites if s.far]
    assert len(far) >= 5 and len(sites) > len(far)
    assert len({s.name for s in far}) == len(far)  # one site per gold
    assert {s.symbol for s in far} == {"function", "class", "variable"}
    assert {s.kind for s in far} == {"call", "reference"}
    keyword = {"function": "def", "class": "class"}
    defined = {kind: set(re.findall(rf"^\s*{word} (\w+)", text, re.M)) for kind, word in keyword.items()}
    defined["variable"] = set(re.findall(r"^\s*(\w+)\s*[:=]", text, re.M))  # a superset: locals too
    for site in sites:
        names = [tokenizer.decode(c) for c in site.candidates]
        assert {name.strip() for name in names} <= defined[site.symbol]
        assert names[site.gold].strip() == site.name and site.distance == site.start - site.definition
        assert offsets[site.start][0] == text.index(names[site.gold], offsets[site.start][0])
        if site.far:
            window = tokenizer.decode(ids[site.start - reach : site.start])
            assert site.distance > reach
            for name in names:
                assert not re.search(rf"\b{re.escape(name.strip())}\b", window), (site, name)
        else:
            assert site.distance <= reach // 2


def test_probes_on_stdlib_are_unseen_in_the_window(stdlib_files):
    """Property: no probe candidate is a whole word of the decoded window or the context; the gold
    is defined before the window and used, after that context, in the text after the cut."""
    text = "".join(stdlib_files)
    tokenizer = byte_level_bpe([text[i : i + 2000] for i in range(0, len(text), 2000)], 400)
    ids, offsets = tokenize(tokenizer, stdlib_files)
    n, reach = len(ids) // 2, 3000  # the cut lies inside typing.py
    assert len(stdlib_files[0]) < offsets[n][0] < len(text)
    began = time.perf_counter()
    probes = probe_sites(tokenizer, stdlib_files, ids[:n], offsets[:n], reach, "python", limit=12)
    assert time.perf_counter() - began < 2.0
    assert len(probes) >= 8 and len({p.name for p in probes}) == len(probes)
    assert {p.kind for p in probes} == {"call", "reference"}
    window, after = tokenizer.decode(ids[n - reach : n]), text[offsets[n - 1][1] - 1 :]
    defined = set(re.findall(r"^\s*def (\w+)", text, re.M))
    for probe in probes:
        context = tokenizer.decode(probe.context)
        names = [tokenizer.decode(c) for c in probe.candidates]
        assert names[probe.gold].strip() == probe.name and context + names[probe.gold] in after
        assert context.startswith("\n") and "\n" not in context[1:] and context.strip()
        assert tokenizer.encode(context + names[probe.gold]) == [*probe.context, *probe.candidates[probe.gold]]
        assert probe.definition < n - reach
        assert probe.name in tokenizer.decode(ids[probe.definition :][: len(probe.name) + 1])
        if probe.symbol == "function":
            assert {name.strip() for name in names} <= defined
        for name in names:
            assert not re.search(rf"\b{re.escape(name.strip())}\b", window + context), (probe, name)


def test_far_tokens_on_stdlib_are_unseen_in_the_window(stdlib_files):
    text = "".join(stdlib_files)
    _, offsets = tokenize(Chars(), stdlib_files)
    reach = 4000
    began = time.perf_counter()
    far = far_tokens(stdlib_files, offsets, reach, "python")
    assert time.perf_counter() - began < 2.0
    assert len(far) > 100
    starts = [p for i, p in enumerate(far) if i == 0 or far[i - 1] != p - 1]
    first = {}  # word -> where it first occurs as a whole word
    for match in re.finditer(r"\w+", text):
        first.setdefault(match.group(), match.start())
    for p in starts:
        name = re.compile(r"\w+").match(text, p).group()
        assert len(name) >= 3 and name not in re.findall(r"\w+", text[p - reach : p])
        assert first[name] < p - reach  # seen before, far away


# -- bad input ---------------------------------------------------------------------------------------------


def test_documents_without_targets():
    tokenizer = Words()
    assert far_tokens([], [], REACH, "python") == []
    assert call_sites(tokenizer, [], [], [], REACH, "python") == []
    files = ["x = 1\n" * 30]
    ids, offsets = tokenize(tokenizer, files)
    assert far_tokens(files, offsets, REACH, "python") == []
    assert call_sites(tokenizer, files, ids, offsets, REACH, "python") == []
    # a file that does not parse: the function an ERROR node wraps still counts, the identifier an ERROR
    # node holds loose (beta_fn) does not; no crash
    broken = ["def alpha_fn(a):\n    return a\n\nclass (:\n    pass\ndef beta_fn(:\n", FILL * 8 + "alpha_fn(beta_fn)\n"]
    ids, offsets = tokenize(tokenizer, broken)
    assert far_tokens(broken, offsets, REACH, "python") == [ids.index(tokenizer.vocab["alpha_fn"])]
    assert [s.name for s in call_sites(tokenizer, broken, ids, offsets, REACH, "python", distractors=0)] == ["alpha_fn"]
    # non-ASCII text: byte offsets of the parse map back to characters
    files = ["s = 'é✓'\ndef alpha_fn():\n    return 1\n", "t = '日本'\n" + FILL * 8 + "alpha_fn()\n"]
    text = "".join(files)
    _, offsets = tokenize(Chars(), files)
    at = text.rindex("alpha_fn")
    assert far_tokens(files, offsets, 30, "python") == list(range(at, at + 8))


@pytest.mark.parametrize(
    "call",
    [
        lambda: far_tokens("def f(): pass\n", [], REACH, "python"),
        lambda: far_tokens([1], [], REACH, "python"),
        lambda: far_tokens([], [], REACH, "cobol"),
        lambda: far_tokens([], [], REACH, "go"),
        lambda: far_tokens([], [], 0, "python"),
        lambda: far_tokens([], [], True, "python"),
        lambda: far_tokens([], [(0,)], REACH, "python"),
        lambda: far_tokens([], [], REACH, "python", min_chars=0),
        lambda: far_tokens([], [], REACH, "python", sinks=-1),
        lambda: call_sites(object(), [], [], [], REACH, "python"),
        lambda: call_sites(Words(), [], [None], [], REACH, "python"),
        lambda: call_sites(Words(), [], [], [], REACH, "python", distractors=-1),
        lambda: call_sites(Words(), [], [], [], REACH, "python", far_limit=1.5),
        lambda: call_sites(Words(), [], [], [], REACH, "python", per_gold=0),
        lambda: probe_sites(object(), [], [], [], REACH, "python"),
        lambda: probe_sites(Words(), [], [None], [], REACH, "python"),
        lambda: probe_sites(Words(), [], [], [], REACH, "python", distractors=-1),
        lambda: probe_sites(Words(), [], [], [], REACH, "python", limit=1.5),
        lambda: probe_sites(Words(), [], [], [], REACH, "python", after=-1),
        lambda: probe_sites(Words(), [], [], [], 0, "python"),
        lambda: probe_sites(Words(), [], [], [], REACH, "cobol"),
        lambda: probe_sites(Words(), ["x = 1\n"], [0], [(0,)], REACH, "python"),
    ],
)
def test_bad_input_is_one_clear_error(call):
    with pytest.raises(RopelabError):
        call()
