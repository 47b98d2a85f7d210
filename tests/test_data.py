"""Training data: corpus discovery and skipping, the split by file, BPE + packing + cache, the order."""

from __future__ import annotations

import numpy as np
import pytest

from ropelab.core.errors import RopelabError
from ropelab.data import ChunkSampler, Corpus, evenly_spaced_chunks, prepare_data
from ropelab.data import tokens as tokens_module
from ropelab.data.tokens import bpe_vocab_size

TEXTS = {
    f"pkg/mod{i}.py": "".join(f"def function_{i}_{k}(value):\n    return value * {k} + {i}\n\n" for k in range(40))
    for i in range(8)
}


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    for name, text in TEXTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROPELAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_binary_undecodable_empty_and_hidden_files_are_skipped_and_counted(corpus_dir):
    (corpus_dir / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (corpus_dir / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (corpus_dir / "empty.py").write_text("  \n")
    (corpus_dir / ".hidden").mkdir()
    (corpus_dir / ".hidden" / "secret.py").write_text("x = 1\n")
    (corpus_dir / "__pycache__").mkdir()
    (corpus_dir / "__pycache__" / "m.pyc").write_bytes(b"\0\1")
    corpus = Corpus.from_sources([str(corpus_dir)])
    assert sorted(f.name for f in corpus.files) == sorted(TEXTS)
    assert corpus.skipped == {"binary": 1, "undecodable": 1, "empty": 1}
    assert "skipped 1 binary, 1 undecodable, 1 empty" in corpus.describe()


def test_globs_files_and_directories_are_sources(corpus_dir):
    by_glob = Corpus.from_sources([str(corpus_dir / "**" / "mod[0-3].py")])
    assert len(by_glob.files) == 4
    one = Corpus.from_sources([str(corpus_dir / "pkg" / "mod5.py"), str(corpus_dir / "pkg" / "mod5.py")])
    assert [f.name for f in one.files] == ["mod5.py"]  # a file named twice is read once


@pytest.mark.parametrize("source", ["does/not/exist", "nothing-*.matches"])
def test_missing_sources_give_a_clear_error(tmp_path, source):
    with pytest.raises(RopelabError, match=r"no such file|no files match"):
        Corpus.from_sources([str(tmp_path / source)])


def test_a_directory_without_usable_files_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(RopelabError, match="holds no files"):
        Corpus.from_sources([str(tmp_path / "d")])
    (tmp_path / "d" / "bin").write_bytes(b"\0\0")
    with pytest.raises(RopelabError, match=r"no usable text files.*1 binary"):
        Corpus.from_sources([str(tmp_path / "d")])


def test_split_is_by_file_content_deterministic_and_never_empty(tmp_path, corpus_dir):
    a = Corpus.from_sources([str(corpus_dir)], val_fraction=0.3)
    copy = tmp_path / "elsewhere"
    for f in a.files:
        (copy / f.name).parent.mkdir(parents=True, exist_ok=True)
        (copy / f.name).write_bytes(f.path.read_bytes())
    b = Corpus.from_sources([str(copy)], val_fraction=0.3)
    assert [(f.name, f.split) for f in a.files] == [(f.name, f.split) for f in b.files]
    assert a.content_hash == b.content_hash  # the location does not matter, the content does
    assert a.split("train") and a.split("val")
    # a tiny fraction still yields a validation file; a file given as holdout is always there
    tiny = Corpus.from_sources([str(corpus_dir)], val_fraction=1e-9, holdout=[corpus_dir / "pkg" / "mod0.py"])
    assert [f.name for f in tiny.split("val")] == ["pkg/mod0.py"]
    (corpus_dir / "pkg" / "mod0.py").write_text("changed = True\n")
    assert Corpus.from_sources([str(corpus_dir)], val_fraction=0.3).content_hash != a.content_hash


def test_everything_held_out_is_an_error(corpus_dir):
    with pytest.raises(RopelabError, match="nothing is left to train on"):
        Corpus.from_sources([str(corpus_dir)], holdout=[corpus_dir / name for name in TEXTS])


def test_packed_tokens_equal_each_file_encoded_plus_eos_and_are_cached(corpus_dir, home, monkeypatch):
    corpus = Corpus.from_sources([str(corpus_dir)], val_fraction=0.25)
    data = prepare_data(corpus, "bpe-300", progress=False)
    assert data.directory.parent == home / "data"
    tokenizer = data.tokenizer
    assert tokenizer.vocab_size == 300 and tokenizer.eos_id == tokenizer.bos_id == 0
    for split in ("train", "val"):
        expected = []
        for f in corpus.split(split):
            expected += [*tokenizer.encode(f.path.read_text()), tokenizer.eos_id]
        assert data.split(split).dtype == np.uint16
        assert data.split(split).tolist() == expected
    assert tokenizer.decode(tokenizer.encode(TEXTS["pkg/mod3.py"])) == TEXTS["pkg/mod3.py"]

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(tokens_module, "_build", no_rebuild)
    again = prepare_data(Corpus.from_sources([str(corpus_dir)], val_fraction=0.25), "bpe-300", progress=False)
    assert again.directory == data.directory and again.train.tolist() == data.train.tolist()
    # a truncated array is not a valid cache entry: it is rebuilt (here: the patched builder runs)
    with open(data.directory / "train.bin", "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(AssertionError, match="cache was not used"):
        prepare_data(corpus, "bpe-300", progress=False)


def test_an_external_tokenizer_file_is_used_unchanged(corpus_dir, tmp_path):
    corpus = Corpus.from_sources([str(corpus_dir)])
    first = prepare_data(corpus, "bpe-280", progress=False)
    data = prepare_data(corpus, str(first.directory / "tokenizer.json"), progress=False)
    assert data.directory != first.directory and data.train.tolist() == first.train.tolist()


@pytest.mark.parametrize(("spec", "size"), [("bpe-8k", 8192), ("BPE-4k", 4096), ("bpe-300", 300), ("gpt9", None)])
def test_bpe_specs(spec, size):
    assert bpe_vocab_size(spec) == size


def test_unknown_tokenizer_and_too_small_bpe_are_errors(corpus_dir):
    corpus = Corpus.from_sources([str(corpus_dir)])
    with pytest.raises(RopelabError, match="not understood"):
        prepare_data(corpus, "no-such-tokenizer", progress=False)
    with pytest.raises(RopelabError, match="at least 257"):
        prepare_data(corpus, "bpe-100", progress=False)


def test_chunk_order_covers_every_chunk_once_per_epoch_and_is_a_function_of_the_index():
    tokens = np.arange(1001, dtype=np.uint16)
    sampler = ChunkSampler(tokens, seq_len=10, seed=3)
    assert sampler.num_chunks == 100
    first, second = sampler.chunk_ids(0, 100), sampler.chunk_ids(100, 100)
    assert sorted(first) == sorted(second) == list(range(100)) and first != second
    # the data position is one integer: any split of the stream into batches reads the same
    assert sampler.batch(37, 10).tolist() == sampler.batch(37, 4).tolist() + sampler.batch(41, 6).tolist()
    assert ChunkSampler(tokens, 10, seed=3).batch(150, 5).tolist() == sampler.batch(150, 5).tolist()
    assert ChunkSampler(tokens, 10, seed=4).chunk_ids(0, 100) != first
    row = sampler.chunks([7])[0].tolist()
    assert row == list(range(70, 81))  # inputs and the shifted targets: seq_len + 1 tokens
    assert evenly_spaced_chunks(sampler, 5) == [0, 25, 50, 74, 99]
    with pytest.raises(RopelabError, match="fewer than one sequence"):
        ChunkSampler(tokens[:10], seq_len=10, seed=0)


# -- synthetic record sequences (ropelab.data.synthetic) -------------------------------------------
@pytest.fixture
def token_data(corpus_dir):
    return prepare_data(Corpus.from_sources([str(corpus_dir)]), "bpe-300", progress=False)


def _records(row: list[int], separator: int) -> list[tuple[int, ...]]:
    """The records of a synthetic row, split at the separator (the cut last one left out)."""
    records, current = [], []
    for token in row:
        if token == separator:
            records.append(tuple(current))
            current = []
        else:
            current.append(token)
    return records


def test_a_mixture_with_no_synthetic_share_is_the_natural_order(token_data):
    from ropelab.data.synthetic import MixtureSampler

    natural = ChunkSampler(token_data.train, 32, seed=3)
    mixture = MixtureSampler(natural, token_data.tokenizer, fraction=0.0)
    assert torch_equal(mixture.batch(5, 7), natural.batch(5, 7))


def test_synthetic_rows_are_records_of_the_train_split_with_repeats_and_a_function_of_the_index(token_data):
    from ropelab.data.synthetic import RECORD_TOKENS, MixtureSampler

    tokenizer = token_data.tokenizer
    natural = ChunkSampler(token_data.train, 64, seed=1)
    mixture = MixtureSampler(natural, tokenizer, fraction=1.0, repeat=0.5)
    separator = tokenizer.encode("\n")[0]
    train = token_data.train.tolist()
    text = " ".join(map(str, train))
    rows = mixture.batch(0, 40)
    assert rows.shape == (40, 65)
    repeats = 0
    for row in rows.tolist():
        records = _records(row, separator)
        assert records, "a row holds at least one whole record"
        for record in records:
            assert RECORD_TOKENS[0] <= len(record) <= RECORD_TOKENS[1]
            assert " ".join(map(str, record)) in text  # a span of the training tokens
            assert all("\n" not in tokenizer.decode([t]) for t in record)
        repeats += len(records) - len(set(records))
    assert repeats > 20  # about half the records after the first repeat an earlier one
    again = MixtureSampler(ChunkSampler(token_data.train, 64, seed=1), tokenizer, fraction=1.0, repeat=0.5)
    assert torch_equal(again.batch(17, 3), rows[17:20])  # sample i depends on (seed, i) alone


def test_the_synthetic_share_is_close_to_the_requested_fraction(token_data):
    from ropelab.data.synthetic import MixtureSampler

    mixture = MixtureSampler(ChunkSampler(token_data.train, 32, seed=0), token_data.tokenizer, fraction=0.3)
    share = sum(mixture.is_synthetic(i) for i in range(2000)) / 2000
    assert abs(share - 0.3) < 4 * (0.3 * 0.7 / 2000) ** 0.5
    natural = ChunkSampler(token_data.train, 32, seed=0)
    for i in range(50):  # a natural sample of the mixture is the natural stream's sample i
        if not mixture.is_synthetic(i):
            assert torch_equal(mixture.batch(i, 1), natural.batch(i, 1))


@pytest.mark.parametrize("fraction, repeat", [(-0.1, 0.5), (1.5, 0.5), (0.5, 1.0), (0.5, -0.2)])
def test_out_of_range_synthetic_settings_are_errors(token_data, fraction, repeat):
    from ropelab.data.synthetic import MixtureSampler

    with pytest.raises(RopelabError, match=r"synthetic fraction|repeat probability"):
        MixtureSampler(ChunkSampler(token_data.train, 32, seed=0), token_data.tokenizer, fraction, repeat)


def torch_equal(a, b) -> bool:
    return bool((a == b).all()) and a.shape == b.shape
