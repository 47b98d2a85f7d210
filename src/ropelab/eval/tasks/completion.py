"""Long code completion: predict the next line after a long code prefix (LCC / LongBench ``lcc``).

Protocol (HiRoPE paper's evaluation; docs/methods.md, "completion"): the model reads a long code
prefix and must write the next line; the metric is edit similarity, with exact match reported
beside it.

Choices made here:

* Source: the running interpreter's standard library (``ropelab.eval.documents``), ``pydoc_data``
  (documentation strings) and ``encodings`` (generated codec tables, the same lines in every
  file) left out. Each sample picks a *target file* of at least 8 KB and an
  *answer line* in its second half, so the answer has real in-file context. A line qualifies
  when a statement starts it (``ast``: a statement whose ``col_offset`` is the line's
  indentation; docstrings and other bare string expressions excluded) and its stripped text has
  8..100 characters and is not a comment -- so the answer is non-trivial code, not a blank line,
  a closing bracket or prose inside a string, and fits in ``max_new_tokens``.
* Prefix: the target file up to the start of the answer line, so it ends with a newline and the
  very next line of the source is the answer. When the file alone is shorter than ``length``
  tokens, whole other stdlib files (drawn at random) are put before it; every file starts with a
  ``# file: <path>`` line (RepoBench-style path comment; the text stays valid Python, so
  ``language="python"`` and HiRoPE's tree-sitter hierarchy apply). Sample ``i`` draws its file,
  answer line and context files from a generator seeded by ``(seed, i)`` alone, so every length
  asks for the same line and only the amount of context grows.
* The prompt is the last ``length`` tokens of the prefix, left-truncated at a line boundary:
  the first whole line starting at or after the first kept token's character; ``prompt_ids ==
  encode(prompt)`` exactly (no BOS). The prompt ends with ``"\\n"`` on its own token, so the
  model must also generate the indentation (byte-level BPE would otherwise merge it with the
  newline); scoring ignores leading/trailing whitespace as LCC does.
* Scoring (``generate``, stop at a newline, up to 48 new tokens): the prediction is the first
  line of the generation (leading newlines skipped), stripped; the gold is the stripped answer
  line. ``edit_similarity = 1 - levenshtein(pred, gold) / max(len(pred), len(gold))`` over
  characters (1.0 when both are empty) -- the classic normalised Levenshtein similarity;
  LongBench uses ``fuzz.ratio`` (an insertion/deletion distance over the summed lengths), which
  gives somewhat higher values. ``exact_match`` = stripped strings equal.
"""

from __future__ import annotations

import ast
import random
from functools import lru_cache
from pathlib import Path

from ropelab.core.errors import RopelabError
from ropelab.data.corpus import stdlib_root
from ropelab.eval.base import Outputs, Sample, Task
from ropelab.eval.documents import caches_reads, file_header, file_name, python_pool, read_text

MIN_FILE_BYTES = 8000
MIN_ANSWER_CHARS = 8
MAX_ANSWER_CHARS = 100
_CHARS_PER_TOKEN_BOUND = 8  # gather at least this many characters per wanted token before encoding


class Completion(Task):
    name = "completion"
    description = (
        "LCC-style long code completion: the last `length` tokens of a stdlib code prefix; "
        "the model writes the next line (edit similarity)"
    )
    mode = "generate"
    metric = "edit_similarity"
    max_new_tokens = 48
    reads_documents = True  # the Python files of --documents
    stop = ("\n",)
    min_length = 64

    def build(self, tokenizer, length: int, n: int, seed: int, train_len: int) -> list[Sample]:
        self.check_length(length)
        pool = python_pool(self.documents)
        files = _target_files(pool)
        if not files:
            where = "the Python files of your documents" if self.documents is not None else str(stdlib_root())
            raise RopelabError(f"completion: no Python file of at least {MIN_FILE_BYTES} bytes in {where}")
        samples, used = [], set()
        for index in range(n):
            rng = random.Random(f"{self.name}:{seed}:{index}")  # the same sample at every length
            for _ in range(100):
                path = rng.choice(files)
                lines = _answer_lines(path)
                if lines:
                    line = rng.choice(lines)
                    if (path, line) not in used:
                        break
            else:
                raise RopelabError("completion: could not find an unused answer line in the stdlib files")
            used.add((path, line))
            samples.append(self._sample(tokenizer, rng, pool, path, line, length, index, seed))
        return samples

    def _sample(self, tokenizer, rng, pool, path: Path, line: int, length: int, index: int, seed: int) -> Sample:
        lines = read_text(path).split("\n")  # ast numbers lines at "\n" only (str.splitlines also splits at \f)
        target = file_header(path) + "".join(f"{text}\n" for text in lines[: line - 1])
        answer_line = lines[line - 1]
        parts, names = [target], [file_name(path)]
        others = [p for p in pool if p != path]
        rng.shuffle(others)
        prefix = target
        while True:
            if len(prefix) >= _CHARS_PER_TOKEN_BOUND * length and len(tokenizer.encode(prefix)) > length:
                break
            if not others:
                if len(tokenizer.encode(prefix)) >= length // 2:
                    break  # the whole stdlib is shorter than asked: use everything there is
                raise RopelabError(f"completion: not enough stdlib code for a {length}-token prefix")
            other = others.pop()
            source = read_text(other)
            if source is None:
                continue
            parts.insert(0, file_header(other) + (source if source.endswith("\n") else source + "\n"))
            names.insert(0, file_name(other))
            prefix = "".join(parts)
        prompt = _left_truncate(tokenizer, prefix, length)
        prompt_ids = list(tokenizer.encode(prompt))
        kept = [name for name, part in zip(names, _part_ends(parts)) if part > len(prefix) - len(prompt)]
        return self.sample(
            length, index, seed, prompt, prompt_ids,
            answer=answer_line.strip(), language="python", file=file_name(path), line=line, answer_line=answer_line,
            files=kept,
        )  # fmt: skip

    def score(self, sample: Sample, outputs: Outputs) -> dict[str, float]:
        if outputs.generated is None:
            raise RopelabError("completion: scoring needs the generated text")
        prediction = first_line(outputs.generated)
        gold = sample.answer.strip()
        return {"edit_similarity": edit_similarity(prediction, gold), "exact_match": float(prediction == gold)}


def first_line(text: str) -> str:
    """The first line of a generation, leading newlines skipped, stripped."""
    return text.lstrip("\r\n").split("\n", 1)[0].strip()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def edit_similarity(prediction: str, gold: str) -> float:
    """``1 - levenshtein / max(len)``; two empty strings are identical (1.0)."""
    longest = max(len(prediction), len(gold))
    return 1.0 if longest == 0 else 1.0 - levenshtein(prediction, gold) / longest


def _left_truncate(tokenizer, text: str, length: int) -> str:
    """The longest tail of ``text`` that starts at a line start and encodes to at most ``length`` tokens."""
    offsets = tokenizer.encode_with_offsets(text).offsets
    if len(offsets) <= length:
        return text
    start = offsets[len(offsets) - length][0]
    while True:
        if start > 0 and text[start - 1] != "\n":
            start = text.find("\n", start) + 1
            if start == 0:
                raise RopelabError(f"completion: the prefix has no line boundary within its last {length} tokens")
        tail = text[start:]
        if len(tokenizer.encode(tail)) <= length:
            return tail
        start += 1  # the cut changed the tokenisation at the start: drop one more line


def _part_ends(parts: list[str]) -> list[int]:
    ends, total = [], 0
    for part in parts:
        total += len(part)
        ends.append(total)
    return ends


@lru_cache(maxsize=4)
def _target_files(pool: tuple[Path, ...]) -> tuple[Path, ...]:
    return tuple(p for p in pool if p.stat().st_size >= MIN_FILE_BYTES)


@caches_reads
@lru_cache(maxsize=256)
def _answer_lines(path: Path) -> tuple[int, ...]:
    """1-based numbers of qualifying answer lines in the second half of ``path``."""
    text = read_text(path)
    if text is None or "\r" in text:
        return ()
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return ()
    lines = text.split("\n")
    starts = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            continue
        line = lines[node.lineno - 1]
        stripped = line.strip()
        if (
            node.col_offset == len(line) - len(line.lstrip())
            and node.lineno > len(lines) // 2
            and MIN_ANSWER_CHARS <= len(stripped) <= MAX_ANSWER_CHARS
            and not stripped.startswith("#")
            and line.isascii()
        ):
            starts.add(node.lineno)
    return tuple(sorted(starts))
