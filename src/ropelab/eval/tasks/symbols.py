"""Code Symbol Understanding (HiRoPE, arXiv 2403.19115, Section 4): list what a long file defines.

Protocol (HiRoPE paper, Section 4; docs/methods.md, "symbols"): a long real code file (about 13K
tokens on average in the paper); the model must list every function and class name defined in
it; gold names come from the AST; the metric is recall averaged over files (paper: TinyLlama origin 0.0067, ReRoPE 0.121, HiRoPE 0.142).

Choices made here:

* Code: the running interpreter's standard library (``ropelab.eval.documents``; ``pydoc_data``,
  ``encodings`` (codec tables, the same few names in every file) and table-like files with fewer
  than one definition per 3,000 characters left out). Each sample
  starts from a file whose estimated token count is within 0.7..1.3 of the code budget
  (``length`` minus the question); a file that is too long is cut at a top-level definition
  boundary (the text before a top-level ``def``/``class`` or its first decorator), and when the
  budget is not yet filled, further whole files -- or their cut heads -- are appended. Every file
  starts with a ``# file: <path>`` comment, so the code stays valid Python (``language="python"``,
  HiRoPE's hierarchy parses it).
* Question: a trailing comment block, ``# Question: list all functions and classes defined
  above, one per line.`` then ``# Answer:``, so the whole prompt is still a Python file.
  ``prompt_ids == encode(prompt)`` (no BOS), at most ``length`` tokens.
* Gold: the unique names of every ``FunctionDef``, ``AsyncFunctionDef`` and ``ClassDef`` in
  ``ast.parse(code)``, in source order -- methods and nested definitions included (the paper's
  task: every function and class name defined in the file); ``scope="top"`` keeps module-level
  ones only.
  A name defined twice (``__init__`` in many classes) counts once.
* Generation: greedy, up to 256 new tokens (a 13K-token file defines more names than fit: recall
  is capped by the budget, as it was in the paper), stopped at a blank line.
* Scoring: the generated *names* are the identifier-like words (``[^\\W\\d]\\w*``) of the
  generation minus Python keywords, as a set. ``recall`` = |gold ∩ generated| / |gold| (the
  paper's metric); ``precision`` = |gold ∩ generated| / |generated| (0 when nothing was generated).
  Dotted forms (``Class.method``) count both parts.
"""

from __future__ import annotations

import ast
import bisect
import keyword
import random
import re
from functools import cache, lru_cache
from pathlib import Path

from ropelab.core.errors import RopelabError
from ropelab.data.corpus import stdlib_root
from ropelab.eval.base import Outputs, Sample, Task
from ropelab.eval.documents import caches_reads, file_header, file_name, python_pool, read_text

QUESTION = "\n# Question: list all functions and classes defined above, one per line.\n# Answer:\n"
SCOPES = ("all", "top")
NEAR = (0.7, 1.3)  # a starting file's estimated tokens, as a fraction of the code budget
_MAX_CHARS_PER_DEFINITION = 3000
_IDENTIFIER = re.compile(r"[^\W\d]\w*")
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class Symbols(Task):
    name = "symbols"
    description = (
        "HiRoPE Code Symbol Understanding: a long stdlib code file, then a request to list every "
        "function and class defined in it (recall of the AST's names)"
    )
    mode = "generate"
    metric = "recall"
    max_new_tokens = 256
    reads_documents = True  # the Python files of --documents
    stop = ("\n\n",)
    min_length = 128

    def __init__(self, scope: str = "all") -> None:
        if scope not in SCOPES:
            raise RopelabError(f"symbols: unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
        self.scope = scope

    def build(self, tokenizer, length: int, n: int, seed: int, train_len: int) -> list[Sample]:
        self.check_length(length)
        files = _source_files(python_pool(self.documents))
        if not files:
            where = "the Python files of your documents" if self.documents is not None else str(stdlib_root())
            raise RopelabError(f"symbols: no usable Python file (ASCII, with definitions) in {where}")
        budget = length - len(tokenizer.encode(QUESTION))
        chars_per_token = _chars_per_token(tokenizer)
        samples = []
        for index in range(n):
            rng = random.Random(f"{self.name}:{seed}:{index}")
            parts = _choose_parts(tokenizer, rng, files, budget, chars_per_token)
            while True:
                code = "".join(text for _, text in parts)
                prompt = code + QUESTION
                prompt_ids = list(tokenizer.encode(prompt))
                if len(prompt_ids) <= length:
                    break
                parts = _drop_last_unit(parts)  # joining changed a few tokens at a seam
                if not parts:
                    raise RopelabError(f"symbols: length {length} leaves no room for code")
            names = defined_names(code, self.scope)
            samples.append(
                self.sample(
                    length, index, seed, prompt, prompt_ids,
                    answer="\n".join(names), language="python", names=names, num_names=len(names),
                    files=[file_name(path) for path, _ in parts], code_chars=len(code), scope=self.scope,
                )
            )  # fmt: skip
        return samples

    def score(self, sample: Sample, outputs: Outputs) -> dict[str, float]:
        if outputs.generated is None:
            raise RopelabError("symbols: scoring needs the generated text")
        gold = set(sample.extra["names"])
        generated = generated_names(outputs.generated)
        hits = len(gold & generated)
        return {
            "recall": hits / len(gold) if gold else 1.0,
            "precision": hits / len(generated) if generated else 0.0,
        }


def defined_names(code: str, scope: str = "all") -> list[str]:
    """Unique names of the function and class definitions in ``code``, in source order."""
    tree = ast.parse(code)
    nodes = tree.body if scope == "top" else ast.walk(tree)
    definitions = sorted((n for n in nodes if isinstance(n, _DEFINITIONS)), key=lambda n: (n.lineno, n.col_offset))
    return list(dict.fromkeys(n.name for n in definitions))


def generated_names(text: str) -> set[str]:
    """Identifier-like words of a generation, Python keywords left out."""
    return {word for word in _IDENTIFIER.findall(text) if not keyword.iskeyword(word)}


# -- choosing code -------------------------------------------------------------------------------


def _choose_parts(tokenizer, rng: random.Random, files, budget: int, chars_per_token: float):
    """[(path, text)] filling ``budget`` tokens: a file near the budget, then more files."""
    estimate = {path: path.stat().st_size / chars_per_token for path in files}  # ASCII files: bytes == chars
    low, high = NEAR[0] * budget, NEAR[1] * budget
    near = [p for p in files if low <= estimate[p] <= high]
    longer = sorted((p for p in files if estimate[p] > high), key=estimate.get)
    first = rng.choice(near or longer[:8] or list(files[:8]))
    parts, remaining = [], budget
    head = _head(tokenizer, first, remaining)
    if head is not None:
        parts.append((first, head[0]))
        remaining -= head[1]
    others = [p for p in files if p != first]
    rng.shuffle(others)
    for path in others:
        if remaining < max(32, budget // 20):
            break
        if estimate[path] > 1.5 * remaining:
            continue
        head = _head(tokenizer, path, remaining)
        if head is not None:
            parts.append((path, head[0]))
            remaining -= head[1]
    if not parts:
        raise RopelabError(f"symbols: no file has a definition that fits in {budget} tokens")
    return parts


def _head(tokenizer, path: Path, budget: int) -> tuple[str, int] | None:
    """The longest head of ``path`` (header + code cut at a top-level boundary) within ``budget``
    tokens that still holds a definition, and its token count; None when even one does not fit."""
    text, boundaries = _file(path)
    if not boundaries:
        return None
    piece = file_header(path) + text
    starts = [start for start, _ in tokenizer.encode_with_offsets(piece).offsets]
    shift = len(file_header(path))
    for end in (len(text), *reversed(boundaries[1:])):  # cutting at boundaries[0] would keep no definition
        tokens = bisect.bisect_left(starts, shift + end)
        if tokens <= budget:
            return piece[: shift + end], tokens
    return None


def _drop_last_unit(parts):
    """``parts`` with the last top-level unit of the last part cut off (the whole part if it has one)."""
    path, text = parts[-1]
    _, boundaries = _file(path)
    shift = len(file_header(path))
    inside = [b for b in boundaries[1:] if shift + b < len(text)]
    if inside:
        return [*parts[:-1], (path, text[: shift + inside[-1]])]
    return parts[:-1]


@caches_reads
@cache
def _file(path: Path) -> tuple[str, list[int]]:
    """A file's text (newline-terminated) and the character offsets where top-level definitions start."""
    text = read_text(path) or ""
    text = text if text.endswith("\n") else text + "\n"
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return text, []
    line_starts = [0]
    for line in text.split("\n")[:-1]:
        line_starts.append(line_starts[-1] + len(line) + 1)
    boundaries = []
    for node in tree.body:
        if isinstance(node, _DEFINITIONS):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            boundaries.append(line_starts[first - 1])
    return text, boundaries


@lru_cache(maxsize=4)
def _source_files(pool: tuple[Path, ...]) -> tuple[Path, ...]:
    """The files of ``pool`` (the stdlib's: no pydoc_data or encodings, ``documents.NOT_CODE``) whose
    definitions are dense enough for the task."""
    usable = []
    for path in pool:
        text = read_text(path)
        if not text or "\r" in text or not text.isascii():
            continue
        definitions = text.count("def ") + text.count("class ")  # a cheap count; files are parsed when used
        if definitions and len(text) <= _MAX_CHARS_PER_DEFINITION * definitions:
            usable.append(path)
    return tuple(usable)


_CHARS_PER_TOKEN: dict[int, tuple[object, float]] = {}


def _chars_per_token(tokenizer) -> float:
    """Characters per token of this tokenizer on stdlib code (to estimate file sizes in tokens)."""
    cached = _CHARS_PER_TOKEN.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    files = _source_files(python_pool(None))
    sample = "".join(read_text(path) or "" for path in files[:: max(1, len(files) // 8)][:8])
    ratio = len(sample) / max(1, len(tokenizer.encode(sample)))
    _CHARS_PER_TOKEN[id(tokenizer)] = (tokenizer, ratio)
    return ratio
