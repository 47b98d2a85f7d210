"""Seeded fuzzing of the metadata ropelab reads: every mutated input is one :class:`RopelabError`
(or loads), never another exception, and each costs bounded time.

Mutated: a ropelab checkpoint's ``config.json``, a Hugging Face ``config.json``, a GGUF file's
metadata (values of the wrong type, huge, NaN, missing; and flipped header bytes), the lines of a
``results.jsonl``, ``latest.json`` / ``trainer_state.json``, and source text for the code hierarchy
(unicode junk, lone surrogates, deep nesting). CI runs :data:`CASES` cases in all (a few hundred);
``ROPELAB_FUZZ_CASES=5000`` runs more, ``ROPELAB_FUZZ_SEED`` another seed. A failure names the case
(target, seed, index, mutation) so that it can be replayed.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import time
from collections.abc import Callable

import pytest

from ropelab.core.errors import RopelabError
from tests.helpers import GGUF_META, GOOD_HF, GOOD_RECORD, write_tiny_gguf

#: cases over all targets (CI: a few hundred; set ROPELAB_FUZZ_CASES for more)
CASES = int(os.environ.get("ROPELAB_FUZZ_CASES", "400"))
SEED = int(os.environ.get("ROPELAB_FUZZ_SEED", "0"))
#: each target's share of the cases
SHARES = {"checkpoint": 0.3, "hf": 0.25, "gguf": 0.2, "results": 0.1, "pointer": 0.1, "source": 0.05}
#: the most one case may take (seconds): generous, for a busy 2-core machine
CASE_SECONDS = 10.0

#: what the fuzzer writes where a value was (wrong types, boundaries, huge, non-finite, junk text)
JUNK = [
    "abc",
    "",
    "\ud800",
    "\u202e\u0000\ufeff",
    "é" * 300,
    "1e11",
    "rope",
    "learned:max_len=1e11",
    "fire:width=1e9",
    "yarn:factor=1e300",
    "hope+yarn:factor=2",
    "../../etc/passwd",
    -1,
    0,
    1,
    3,
    7,
    2**31,
    2**63,
    2**64 + 1,
    10**30,
    10**400,
    -(10**20),
    0.5,
    1.5,
    1e-300,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
    None,
    [],
    {},
    [1, 2, 3],
    ["a"],
    {"a": 1},
    {"rope_type": "yarn", "factor": "x"},
]


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _junk(rng: random.Random):
    roll = rng.random()
    if roll < 0.04:
        return json.loads(_deep(rng.randint(10, 500)))  # deep, but within what json.dumps can write back
    if roll < 0.08:
        return rng.randint(-(2**70), 2**70)
    if roll < 0.12:
        return "".join(chr(rng.choice([rng.randrange(0x20, 0x7F), rng.randrange(0x80, 0x2FFFF)])) for _ in range(40))
    return copy.deepcopy(rng.choice(JUNK))


def mutate_dict(data: dict, rng: random.Random, nested: tuple[str, ...] = ()) -> tuple[dict, str]:
    """One to three edits of ``data``: a value replaced by junk, a key removed, a junk key added,
    or the same inside one of the ``nested`` objects."""
    data = copy.deepcopy(data)
    notes = []
    for _ in range(rng.randint(1, 3)):
        target = data
        where = ""
        if nested and rng.random() < 0.3:
            key = rng.choice(nested)
            if not isinstance(data.get(key), dict):
                data[key] = {}
            target, where = data[key], f"{key}."
        action = rng.random()
        if action < 0.65 and target:
            key = rng.choice(sorted(target))
            target[key] = _junk(rng)
            notes.append(f"{where}{key}={target[key]!r:.60}")
        elif action < 0.85 and target:
            key = rng.choice(sorted(target))
            del target[key]
            notes.append(f"del {where}{key}")
        else:
            key = rng.choice(["x", "__proto__", "\ud800", "model", "pe", "rope_scaling", "0" * 100])
            target[key] = _junk(rng)
            notes.append(f"add {where}{key}")
    return data, "; ".join(notes)


def mutate_text(text: str, rng: random.Random) -> tuple[bytes, str]:
    """Whole-document damage: truncation, flipped bytes, deep nesting, unicode junk, huge numbers."""
    raw = text.encode()
    roll = rng.random()
    if roll < 0.25:
        cut = rng.randrange(len(raw) + 1)
        return raw[:cut], f"truncated at {cut}"
    if roll < 0.5:
        data = bytearray(raw)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), "flipped bytes"
    if roll < 0.65:
        return _deep(200_000).encode(), "200000-deep nesting"
    if roll < 0.75:
        return b'{"a": ' + b"9" * 5000 + b"}", "5000-digit integer"
    if roll < 0.85:
        return "\ufeff\ud800".encode("utf-8", "surrogatepass") + raw, "BOM and a lone surrogate"
    if roll < 0.95:
        return json.dumps(_junk(rng)).encode(), "a JSON value of the wrong kind"
    return b"", "empty"


def run_cases(name: str, count: int, case: Callable[[random.Random], tuple[Callable[[], object], str]]) -> int:
    """Run ``count`` cases of one target; every call must succeed or raise :class:`RopelabError`
    within :data:`CASE_SECONDS`. Returns the number of cases that raised."""
    rng = random.Random(f"{SEED}:{name}")
    errors = 0
    for index in range(count):
        call, note = case(rng)
        where = f"{name} case {index} (seed {SEED}): {note}"
        start = time.perf_counter()
        try:
            call()
        except RopelabError as error:
            errors += 1
            assert str(error).strip(), where
            assert len(str(error)) < 5000, f"{where}: a message of {len(str(error))} characters"
        except Exception as error:  # the bug this test exists to find
            pytest.fail(f"{where}: {type(error).__name__}: {error!s:.300}")
        seconds = time.perf_counter() - start
        assert seconds < CASE_SECONDS, f"{where}: took {seconds:.1f} s"
    print(f"fuzz {name}: {count} cases, {errors} refused with one error, {count - errors} loaded")
    return errors


def _count(name: str) -> int:
    return max(1, round(CASES * SHARES[name]))


# -- the targets ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from ropelab import ModelConfig, Transformer, save_checkpoint

    directory = tmp_path_factory.mktemp("fuzz") / "ckpt"
    save_checkpoint(directory, Transformer(ModelConfig.from_name("tiny", vocab_size=50, train_len=64)))
    return directory


def test_fuzz_checkpoint_config(checkpoint, tmp_path):
    from ropelab.model import load_checkpoint

    good = json.loads((checkpoint / "config.json").read_text())
    work = tmp_path / "ckpt"
    shutil.copytree(checkpoint, work)

    def case(rng: random.Random):
        if rng.random() < 0.8:
            config, note = mutate_dict(good, rng, nested=("model", "extra"))
            raw = json.dumps(config).encode()
        else:
            raw, note = mutate_text(json.dumps(good), rng)
        (work / "config.json").write_bytes(raw)
        return (lambda: load_checkpoint(work)), note

    errors = run_cases("checkpoint", _count("checkpoint"), case)
    assert errors > 0


def test_fuzz_hf_config(tmp_path):
    from ropelab.pretrained import load_model

    good = {
        **GOOD_HF,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64},
        "tie_word_embeddings": True,
    }
    directory = tmp_path / "hf"
    directory.mkdir()

    def case(rng: random.Random):
        if rng.random() < 0.8:
            config, note = mutate_dict(good, rng, nested=("rope_scaling", "rope_parameters", "ropelab"))
            raw = json.dumps(config).encode()
        else:
            raw, note = mutate_text(json.dumps(good), rng)
        (directory / "config.json").write_bytes(raw)
        # no weights: a config that passes is then "no *.safetensors weights", one error too
        return (lambda: load_model(directory)), note

    errors = run_cases("hf", _count("hf"), case)
    assert errors > 0


def test_fuzz_gguf_metadata(tmp_path, monkeypatch):
    from ropelab.pretrained.gguf import read_gguf

    monkeypatch.setenv("ROPELAB_HOME", str(tmp_path / "home"))
    keys = [*GGUF_META, "general.architecture", "general.name", "tokenizer.ggml.bos_token_id"]
    good = tmp_path / "good.gguf"
    write_tiny_gguf(good, tokenizer=False)
    pristine = good.read_bytes()
    path = tmp_path / "fuzz.gguf"
    gguf_junk = [  # what a GGUF can hold: no objects, no empty arrays, UTF-8 strings
        v
        for v in JUNK
        if not isinstance(v, dict)
        and not (isinstance(v, list) and not v)
        and not (isinstance(v, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in v))
    ]

    def case(rng: random.Random):
        roll = rng.random()
        if roll < 0.6:
            key = rng.choice(keys)
            value = rng.choice(gguf_junk)
            if isinstance(value, list) and any(isinstance(v, str) for v in value) and len(value) > 1:
                value = ["a", "b"]
            write_tiny_gguf(path, meta={key: value}, tokenizer=False)
            note = f"{key}={value!r:.60}"
        elif roll < 0.8:
            key = rng.choice(keys[:6])
            write_tiny_gguf(path, drop=(key,), tokenizer=False)
            note = f"without {key}"
        else:
            data = bytearray(pristine)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(min(len(data), 4096))] = rng.randrange(256)
            path.write_bytes(bytes(data))
            note = "flipped header bytes"
        return (lambda: read_gguf(path)), note

    errors = run_cases("gguf", _count("gguf"), case)
    assert errors > 0


def test_fuzz_results_lines(tmp_path):
    from ropelab.eval.records import done_keys as _done_keys
    from ropelab.eval.records import read_results

    path = tmp_path / "results.jsonl"
    good = json.dumps(GOOD_RECORD)

    def case(rng: random.Random):
        if rng.random() < 0.7:
            record, note = mutate_dict(GOOD_RECORD, rng, nested=("metrics",))
            line = json.dumps(record).encode()
        else:
            line, note = mutate_text(good, rng)
            line = line.replace(b"\n", b" ")
        path.write_bytes(good.encode() + b"\n" + line + b"\n")
        reader = rng.choice([read_results, _done_keys])
        return (lambda: reader(path)), f"{reader.__name__}: {note}"

    run_cases("results", _count("results"), case)


def test_fuzz_latest_and_trainer_state(tmp_path):
    from ropelab.model.checkpoint import LATEST, find_latest_checkpoint
    from ropelab.train import state
    from tests.helpers import write_resumable_checkpoint as _write_resumable

    root = tmp_path / "checkpoints"
    directory = _write_resumable(root)
    good_state = json.loads((directory / state.STATE).read_text())
    good_pointer = json.loads((root / LATEST).read_text())
    (tmp_path / "outside").mkdir()

    def case(rng: random.Random):
        (root / LATEST).write_text(json.dumps(good_pointer))
        (directory / state.STATE).write_text(json.dumps(good_state))
        if rng.random() < 0.5:
            if rng.random() < 0.7:
                pointer, note = mutate_dict(good_pointer, rng)
                if rng.random() < 0.3:
                    pointer["checkpoint"] = rng.choice(["..", ".", "/", "../outside", "step-000001/..", "a/b/c"])
                raw = json.dumps(pointer).encode()
            else:
                raw, note = mutate_text(json.dumps(good_pointer), rng)
            (root / LATEST).write_bytes(raw)
            strict = rng.random() < 0.5
            return (lambda: find_latest_checkpoint(root, strict=strict)), f"latest.json (strict={strict}): {note}"
        if rng.random() < 0.7:
            trainer_state, note = mutate_dict(good_state, rng, nested=("optimizer",))
            raw = json.dumps(trainer_state).encode()
        else:
            raw, note = mutate_text(json.dumps(good_state), rng)
        (directory / state.STATE).write_bytes(raw)
        return (lambda: state.read_resume_state(directory)), f"trainer_state.json: {note}"

    run_cases("pointer", _count("pointer"), case)


def test_fuzz_source_text():
    from ropelab.hierarchy import extract
    from ropelab.pretrained.tokenizer import Tokenizer
    from tests.helpers import bpe_backend

    tokenizer = Tokenizer(bpe_backend(), name="fuzz-bpe")
    pieces = ["def f(x):\n", "    return x\n", "class A:\n", "{", "}", "(", ")", "\ud800", "\udfff", "\x00", "\r\n"]
    pieces += ["é", "\U0001d518", "\u202e", "'''", '"', "#", "/*", "*/", "function a(){ ", "fn main() {"]
    languages = ["python", "javascript", "java", "c", "cpp", "go", "rust", "typescript", "tsx", "text", None]

    def case(rng: random.Random):
        if rng.random() < 0.2:
            text = rng.choice(["(" * 3000, "{" * 3000 + "}" * 10, "def f():\n" + "    " * 2000 + "x"])
        else:
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 400)))
        if rng.random() < 0.1:
            text = os.urandom(rng.randint(0, 300))  # bytes are a source too
        language = rng.choice(languages)
        return (lambda: extract(text, tokenizer, language=language)), f"{language}: {text[:60]!r}"

    run_cases("source", _count("source"), case)
