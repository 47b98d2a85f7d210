"""Few-shot following (HoPE paper, Section 4.2.1, Appendix C and Figure 9), on code labels.

Protocol (paper): 5 labelled training examples, then "meaningless sentences" padding the input
to the wanted length, then the query; the score is the *follow ability* (FA): 1 when the output
is any label of the examples' label set, whatever its correctness. The paper draws its examples
from GLUE (SST-2, QNLI, RTE; binary labels), formats them as ``Review:<text>\\nAnswer:<label>``
and pads with "This is a meaningless sentence, used only to fill the prompt length." lines;
it reports lengths 0.5 L .. 2.5 L.

Substitution (no GLUE offline): two label tasks built from code, alternated by sample index
(``subtask="mixed"``, the analogue of the paper's average over three tasks) or chosen alone:

* ``"language"`` -- which programming language is this one-line snippet? Snippets are generated
  deterministically from templates (function header, print call, loop, list literal, null check,
  import) rendered in python / c / javascript / java / go / rust with identifiers from a fixed
  word list (stdlib Python lines would be real, but other-language sources on a machine are not
  reproducible, so every language uses the same generator); every template form is distinct per
  language, so the gold label is determined by the snippet. Each sample uses 3 of the 6
  languages; its 5 examples cover all 3 and the query (never a copy of an example) is in one of
  them, so the label set is the 3 languages shown.
* ``"returns"`` -- does this function return a value? Short functions (at most 6 non-blank lines
  and 200 characters, dedented, blank lines removed) from the stdlib, labelled from ``ast``:
  ``yes`` when a ``return`` with a value other than a literal ``None`` occurs in the function's own
  body (not in nested functions, lambdas or classes), else ``no``; generators are left out. The
  5 examples contain both labels; the query is ``yes`` or ``no`` with equal probability. When a
  draw does not fit the length, the next draws use only functions short enough for it (so at
  the shortest lengths the instance can differ from the longer ones').

Sample ``i`` draws its examples and query from a generator seeded by ``(subtask, seed, i)`` alone,
so every length pads the same instance (the paper's "dynamically pad it with a different number
of meaningless sentences"). Prompt layout (Figure 9, blocks separated by blank lines)::

    Code: for (let index = 0; index < 12; index++) {       |  Function:
    Language: javascript                                    |  def f(x):
                                                            |      return x
    ... 4 more examples ...                                 |  Returns a value: yes
    This is a meaningless sentence, used only to fill the prompt length.
    ... (as many as fit) ...

    Code: fn parse_token(limit: i32, count: i32) -> i32 {
    Language:

Filler: ``filler="paper"`` (default) repeats the paper's sentence; ``filler="varied"`` draws
meaningless but natural-looking sentences from a small grammar. The prompt is the text's own
tokens (no BOS), at most ``length`` of them: filler lines are added greedily and removed from
the end while the encoding is too long; examples and query are never cut.

Scoring (``generate``, stop at a newline): the answer is the first whitespace-separated word of
the generation, lower-cased, with surrounding punctuation removed. ``follow_rate`` = 1 if it is in
the examples' label set (the paper's FA); ``accuracy`` = 1 if it equals the gold label.
"""

from __future__ import annotations

import ast
import random
import textwrap
from functools import lru_cache

from ropelab.core.errors import RopelabError
from ropelab.eval.base import Outputs, Sample, Task
from ropelab.eval.documents import caches_reads, read_text, stdlib_python_files

SUBTASKS = ("language", "returns")
FILLERS = ("paper", "varied")
NUM_EXAMPLES = 5
PAPER_FILLER = "This is a meaningless sentence, used only to fill the prompt length."
LANGUAGES = ("python", "c", "javascript", "java", "go", "rust")
LANGUAGES_PER_SAMPLE = 3

_MAX_FUNCTION_LINES = 6
_MAX_FUNCTION_CHARS = 200
_FUNCTIONS_PER_LABEL = 300  # stop parsing stdlib files once both labels have this many
_PUNCTUATION = ".,;:!?\"'`()[]{}<>"


class FewShot(Task):
    name = "fewshot"
    description = (
        "HoPE few-shot following on code labels: 5 labelled examples, filler sentences, a query; "
        "scores whether the output is one of the examples' labels"
    )
    mode = "generate"
    metric = "follow_rate"
    max_new_tokens = 8
    stop = ("\n",)
    #: the paper's shortest input (0.5 L at L = 512); 5 function examples + a query need ~200 tokens
    min_length = 256
    variable_size = True  # prompts differ from sample to sample

    def __init__(self, subtask: str = "mixed", filler: str = "paper") -> None:
        if subtask not in (*SUBTASKS, "mixed"):
            raise RopelabError(f"fewshot: unknown subtask {subtask!r}; choose mixed, {', '.join(SUBTASKS)}")
        if filler not in FILLERS:
            raise RopelabError(f"fewshot: unknown filler {filler!r}; choose one of {', '.join(FILLERS)}")
        self.subtask = subtask
        self.filler = filler

    def build(self, tokenizer, length: int, n: int, seed: int, train_len: int) -> list[Sample]:
        self.check_length(length)
        samples = []
        for index in range(n):
            subtask = SUBTASKS[index % len(SUBTASKS)] if self.subtask == "mixed" else self.subtask
            samples.append(self._sample(tokenizer, subtask, length, index, seed))
        return samples

    def _sample(self, tokenizer, subtask: str, length: int, index: int, seed: int) -> Sample:
        # examples and query depend on (seed, index) only: every length pads the same instance
        rng = random.Random(f"{self.name}:{subtask}:{seed}:{index}")
        filler_rng = random.Random(f"{self.name}:filler:{seed}:{index}")
        needed, pools = None, None
        for attempt in range(50):  # redraw when the examples and query alone exceed the length
            if attempt and subtask == "returns":  # then only from functions short enough for this length
                pools = _short_functions(tokenizer, (length - 8) // (NUM_EXAMPLES + 1) - 8)
            examples, query, gold, labels = _draw(rng, subtask, pools)
            head = "\n\n".join(_block(subtask, x, label) for x, label in examples)
            tail = _block(subtask, query, None)
            base = len(tokenizer.encode(f"{head}\n\n{tail}"))
            if base <= length:
                break
            needed = base if needed is None else min(needed, base)
        else:
            raise RopelabError(
                f"fewshot: length {length} is too short for {NUM_EXAMPLES} {subtask} examples and a query "
                f"(the shortest draw needed {needed} tokens)"
            )
        prompt = self._fill(tokenizer, filler_rng, head, tail, base, length)
        prompt_ids = list(tokenizer.encode(prompt))
        return self.sample(
            length, index, seed, prompt, prompt_ids,
            answer=gold, language=None, subtask=subtask, labels=labels,
            examples=[{"input": x, "label": label} for x, label in examples], query_input=query, filler=self.filler,
        )  # fmt: skip

    def _fill(self, tokenizer, rng: random.Random, head: str, tail: str, base: int, length: int) -> str:
        lines: list[str] = []
        budget = length - base - len(tokenizer.encode("\n\n"))
        cost = {}
        while budget > 0:
            sentence = PAPER_FILLER if self.filler == "paper" else _varied_sentence(rng)
            if sentence not in cost:
                cost[sentence] = len(tokenizer.encode(sentence + "\n"))
            if cost[sentence] > budget:
                break
            lines.append(sentence)
            budget -= cost[sentence]

        def assemble(k: int) -> str:
            if not k:
                return f"{head}\n\n{tail}"
            return f"{head}\n\n" + "".join(line + "\n" for line in lines[:k]) + f"\n{tail}"

        count = len(lines)
        while count and len(tokenizer.encode(assemble(count))) > length:
            count -= 1
        return assemble(count)

    def score(self, sample: Sample, outputs: Outputs) -> dict[str, float]:
        if outputs.generated is None:
            raise RopelabError("fewshot: scoring needs the generated text")
        word = first_word(outputs.generated)
        return {"follow_rate": float(word in sample.extra["labels"]), "accuracy": float(word == sample.answer)}


def first_word(text: str) -> str:
    """The first whitespace-separated word, lower-cased, without surrounding punctuation."""
    words = text.strip().split()
    return words[0].strip(_PUNCTUATION).lower() if words else ""


def _block(subtask: str, text: str, label: str | None) -> str:
    if subtask == "language":
        return f"Code: {text}\nLanguage:" + (f" {label}" if label is not None else "")
    return f"Function:\n{text}\nReturns a value:" + (f" {label}" if label is not None else "")


def _draw(rng: random.Random, subtask: str, pools: dict[str, list[str]] | None = None):
    """(examples [(input, label)], query input, gold label, sorted label set)."""
    if subtask == "language":
        languages = rng.sample(LANGUAGES, LANGUAGES_PER_SAMPLE)
        example_labels = languages + [rng.choice(languages) for _ in range(NUM_EXAMPLES - len(languages))]
        rng.shuffle(example_labels)
        gold = rng.choice(languages)
        examples = [(_snippet(rng, label), label) for label in example_labels]
        query = _snippet(rng, gold)
        while query in (x for x, _ in examples):  # the query is never a copy of an example
            query = _snippet(rng, gold)
        return examples, query, gold, sorted(languages)
    pools = pools or _function_pools()
    example_labels = ["yes", "no"] + [rng.choice(("yes", "no")) for _ in range(NUM_EXAMPLES - 2)]
    rng.shuffle(example_labels)
    gold = rng.choice(("yes", "no"))
    unused = {label: iter(rng.sample(pools[label], NUM_EXAMPLES + 1)) for label in ("yes", "no")}  # no repeats
    examples = [(next(unused[label]), label) for label in example_labels]
    return examples, next(unused[gold]), gold, ["no", "yes"]


# -- "returns": stdlib functions labelled from the AST ---------------------------------------------


def returns_value(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A ``return <value>`` (value not a literal ``None``) in the function's own body."""
    return any(
        isinstance(node, ast.Return) and node.value is not None and not _is_none(node.value)
        for node in _own_nodes(function)
    )


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _own_nodes(function):
    """Nodes of a function's body, not descending into nested functions, lambdas or classes."""
    stack = list(function.body)
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                stack.append(child)


@caches_reads
@lru_cache(maxsize=1)
def _function_pools() -> dict[str, list[str]]:
    pools: dict[str, list[str]] = {"yes": [], "no": []}
    seen = set()
    for path in stdlib_python_files():
        if min(len(pools["yes"]), len(pools["no"])) >= _FUNCTIONS_PER_LABEL:
            break
        text = read_text(path)
        if text is None or "def " not in text or "\r" in text:
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        lines = text.split("\n")  # ast numbers lines at "\n" only (str.splitlines also splits at \f)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.end_lineno is None:
                continue
            if node.end_lineno - node.lineno >= 3 * _MAX_FUNCTION_LINES:
                continue
            source = textwrap.dedent(
                "\n".join(line for line in lines[node.lineno - 1 : node.end_lineno] if line.strip())
            )
            if source.count("\n") >= _MAX_FUNCTION_LINES or len(source) > _MAX_FUNCTION_CHARS:
                continue
            if not source.isascii() or source in seen:
                continue
            try:  # the label comes from the snippet exactly as the model sees it
                function = ast.parse(source).body[0]
            except (SyntaxError, ValueError):  # e.g. a docstring indented less than its def
                continue
            if any(isinstance(x, (ast.Yield, ast.YieldFrom)) for x in _own_nodes(function)):
                continue
            seen.add(source)
            pools["yes" if returns_value(function) else "no"].append(source)
    if min(len(pools["yes"]), len(pools["no"])) < NUM_EXAMPLES + 1:
        raise RopelabError("fewshot: too few short stdlib functions found for the 'returns' subtask")
    return pools


_SHORT: dict[int, tuple[object, dict[str, list[int]]]] = {}


def _short_functions(tokenizer, max_tokens: int) -> dict[str, list[str]]:
    """The function pools restricted to functions of at most ``max_tokens`` tokens."""
    pools = _function_pools()
    cached = _SHORT.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        counts = {label: [len(e.ids) for e in tokenizer.backend.encode_batch(pool)] for label, pool in pools.items()}
        cached = _SHORT[id(tokenizer)] = (tokenizer, counts)
    short = {label: [f for f, c in zip(pool, cached[1][label]) if c <= max_tokens] for label, pool in pools.items()}
    if min(len(pool) for pool in short.values()) < NUM_EXAMPLES + 1:
        raise RopelabError(f"fewshot: too few stdlib functions of at most {max_tokens} tokens for this length")
    return short


# -- "language": one-line snippets from templates ------------------------------------------------

_WORDS = (
    "item", "count", "total", "value", "buffer", "index", "limit", "record", "token", "node",
    "width", "height", "offset", "result", "cache", "entry", "score", "level", "name", "size",
    "parse", "load", "store", "merge", "scale", "check", "build", "reset", "fetch", "update",
)  # fmt: skip

_TEMPLATES = {
    "python": (
        "def {f_}({a_}, {b_}):",
        "print({a_} + {b_})",
        "for {i_} in range({n}):",
        "{x_} = [{n}, {m}]",
        "if {x_} is None: return {a_}",
        "from {mod} import {f_}",
    ),
    "c": (
        "int {f_}(int {a_}, int {b_}) {{",
        'printf("%d", {a_} + {b_});',
        "for (int {i_} = 0; {i_} < {n}; {i_}++) {{",
        "int {x_}[] = {{{n}, {m}}};",
        "if ({x_} == NULL) return {a_};",
        "#include <{mod}.h>",
    ),
    "javascript": (
        "function {f}({a}, {b}) {{",
        "console.log({a} + {b});",
        "for (let {i} = 0; {i} < {n}; {i}++) {{",
        "const {x} = [{n}, {m}];",
        "if ({x} === null) return {a};",
        'const {f} = require("{mod}");',
    ),
    "java": (
        "public static int {f}(int {a}, int {b}) {{",
        "System.out.println({a} + {b});",
        "for (int {i} : {x}) {{",  # not C's counting loop: every template must tell its language apart
        "int[] {x} = {{{n}, {m}}};",
        "if ({x} == null) return {a};",
        "import java.util.{F};",
    ),
    "go": (
        "func {f}({a} int, {b} int) int {{",
        "fmt.Println({a} + {b})",
        "for {i} := 0; {i} < {n}; {i}++ {{",
        "{x} := []int{{{n}, {m}}}",
        "if {x} == nil {{ return {a} }}",
        'import "{mod}"',
    ),
    "rust": (
        "fn {f_}({a_}: i32, {b_}: i32) -> i32 {{",
        'println!("{{}}", {a_} + {b_});',
        "for {i_} in 0..{n} {{",
        "let {x_} = vec![{n}, {m}];",
        "if {x_}.is_none() {{ return {a_}; }}",
        "use std::{mod}::{F};",
    ),
}


def _snippet(rng: random.Random, language: str) -> str:
    def pair() -> tuple[str, str]:
        return rng.choice(_WORDS), rng.choice(_WORDS)

    names = {}
    for key in ("f", "a", "b", "i", "x"):
        first, second = pair()
        names[key] = first + second.capitalize()  # camelCase
        names[key + "_"] = f"{first}_{second}"  # snake_case
    names["F"] = names["f"][0].upper() + names["f"][1:]
    names["mod"] = rng.choice(_WORDS)
    names["n"], names["m"] = rng.randint(2, 99), rng.randint(2, 99)
    return rng.choice(_TEMPLATES[language]).format(**names)


# -- filler ---------------------------------------------------------------------------------------

_SUBJECTS = (
    "The old lamp",
    "A quiet river",
    "Every second window",
    "The blue notebook",
    "A distant bell",
    "The morning train",
)
_VERBS = ("rests beside", "drifts toward", "waits under", "leans against", "hums near", "turns around")
_OBJECTS = ("the empty hall", "a folded map", "the painted fence", "an open drawer", "the tall grass", "a paper cup")
_ENDINGS = ("in the afternoon", "for no reason", "as usual", "without a sound", "once again", "every few days")


def _varied_sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}."
