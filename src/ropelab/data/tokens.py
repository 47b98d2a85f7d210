"""Tokenize a corpus once: a tokenizer plus each split packed into a flat memory-mapped array.

``prepare_data(corpus, tokenizer="bpe-8k")`` returns :class:`TokenData`. The result lives in
``$ROPELAB_HOME/data/<key>/`` (default ``~/.cache/ropelab``), where ``key`` hashes the corpus
(every file's split, name and content), the tokenizer spec (and the tokenizer file's content for
an external one) and the format version; a later call with the same corpus and settings opens the
cached arrays instead of tokenizing again. The directory is built under a temporary name and
renamed into place, so a crash never leaves a half-written cache entry.

Tokenizers (``tokenizer=``):

* ``bpe-8k``, ``bpe-4k``, ``bpe-<N>``: a byte-level BPE (GPT-2 style pre-tokenizer, every byte in
  the initial alphabet, so any text encodes) trained with Hugging Face ``tokenizers`` on the
  *train* split only, vocabulary N including the special token ``<|endoftext|>`` (id 0), which
  is both BOS and EOS;
* a ``tokenizer.json`` file, a directory holding one, or a model name from the registry
  (``smollm2-135m``): that tokenizer, unchanged.

Packing: the tokens of every file of a split, each file followed by the EOS id (when the
tokenizer has one), concatenated in corpus order into ``train.bin`` / ``val.bin`` (``uint16``
when the vocabulary fits, else ``uint32``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm

from ropelab.core.errors import RopelabError
from ropelab.core.io import ropelab_home
from ropelab.core.log import log
from ropelab.data.corpus import Corpus
from ropelab.model.config import LIMITS
from ropelab.pretrained.registry import TokenizerNotFound, load_tokenizer, tokenizer_path
from ropelab.pretrained.tokenizer import Tokenizer

FORMAT_VERSION = 1
SPECIAL_TOKEN = "<|endoftext|>"
SPLITS = ("train", "val")
_BPE = re.compile(r"bpe-(\d+)(k?)")


def data_home() -> Path:
    return ropelab_home() / "data"


@dataclass
class TokenData:
    """A tokenized corpus: its tokenizer and one flat token array per split (memory-mapped)."""

    directory: Path
    tokenizer: Tokenizer
    train: np.ndarray
    val: np.ndarray
    meta: dict

    @property
    def tokenizer_files(self) -> list[Path]:
        return [self.directory / "tokenizer.json", self.directory / "special_tokens.json"]

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise RopelabError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        return getattr(self, name)


def bpe_vocab_size(spec: str) -> int | None:
    """``bpe-8k`` -> 8192, ``bpe-300`` -> 300; None for anything else."""
    match = _BPE.fullmatch(spec.strip().lower())
    if not match:
        return None
    digits = match.group(1)
    size = int(digits) * (1024 if match.group(2) else 1) if len(digits) <= 12 else LIMITS["vocab_size"] + 1
    if size < 257:
        raise RopelabError(f"tokenizer {spec!r}: a byte-level BPE needs a vocabulary of at least 257 (256 bytes + 1)")
    if size > LIMITS["vocab_size"]:  # the BPE trainer would allocate for this many entries up front
        raise RopelabError(f"tokenizer {spec!r}: a byte-level BPE vocabulary is at most {LIMITS['vocab_size']} tokens")
    return size


def cache_key(corpus: Corpus, tokenizer: str) -> str:
    settings: dict = {"format": FORMAT_VERSION, "corpus": corpus.content_hash, "tokenizer": tokenizer.strip().lower()}
    if bpe_vocab_size(tokenizer) is None:
        try:
            path = tokenizer_path(tokenizer)
        except TokenizerNotFound as error:
            raise RopelabError(f"{error}; or bpe-8k / bpe-4k / bpe-<N> for a byte-level BPE") from None
        settings["tokenizer"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


def train_bpe(texts, vocab_size: int) -> Tokenizer:
    """A byte-level BPE with ``<|endoftext|>`` (id 0) as BOS and EOS, trained on ``texts``."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    special = backend.token_to_id(SPECIAL_TOKEN)
    return Tokenizer(backend, bos_id=special, eos_id=special, name=f"bpe-{vocab_size}")


def _valid(directory: Path) -> dict | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        Tokenizer.from_file(directory / "tokenizer.json")
        for split in SPLITS:
            itemsize = np.dtype(meta["dtype"]).itemsize
            if (directory / f"{split}.bin").stat().st_size != meta["tokens"][split] * itemsize:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


def open_data(directory: str | os.PathLike) -> TokenData:
    """Open a prepared data directory (``tokenizer.json``, ``train.bin``, ``val.bin``, ``meta.json``)."""
    directory = Path(directory)
    meta = _valid(directory)
    if meta is None:
        raise RopelabError(f"{directory}: not a complete ropelab data directory (missing or truncated files)")
    arrays = {}
    for split in SPLITS:
        count = meta["tokens"][split]
        path = directory / f"{split}.bin"
        arrays[split] = (
            np.memmap(path, dtype=meta["dtype"], mode="r", shape=(count,)) if count else np.zeros(0, meta["dtype"])
        )
    tokenizer = Tokenizer.from_file(directory / "tokenizer.json")
    return TokenData(directory, tokenizer, arrays["train"], arrays["val"], meta)


def prepare_data(
    corpus: Corpus, tokenizer: str = "bpe-8k", *, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> TokenData:
    """Tokenize ``corpus`` with ``tokenizer`` (cached by content); see the module docstring."""
    key = cache_key(corpus, tokenizer)
    root = Path(cache_dir) if cache_dir is not None else data_home()
    target = root / key
    if _valid(target) is not None:
        return open_data(target)
    log(corpus.describe())
    partial = root / f".{key}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        meta = _build(corpus, tokenizer, partial, progress)
        meta["key"] = key
        (partial / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(partial, target)
        except OSError:
            if _valid(target) is None:  # not another process's finished copy: replace the debris
                shutil.rmtree(target, ignore_errors=True)
                os.rename(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return open_data(target)


def _build(corpus: Corpus, spec: str, directory: Path, progress: bool) -> dict:
    vocab = bpe_vocab_size(spec)
    if vocab is not None:
        log(f"training a byte-level BPE tokenizer (vocabulary {vocab}) on the train split")
        tokenizer = train_bpe(corpus.texts("train"), vocab)
    else:
        tokenizer = load_tokenizer(spec)
    tokenizer.save(directory)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    separator = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    counts = {}
    for split in SPLITS:
        files = corpus.split(split)
        count = 0
        with open(directory / f"{split}.bin", "wb") as out:
            bar = tqdm(
                total=sum(f.size for f in files),
                unit="B",
                unit_scale=True,
                desc=f"tokenizing {split}",
                disable=not progress,
                file=sys.stderr,
            )
            for start in range(0, len(files), 64):
                batch = files[start : start + 64]
                texts = [f.path.read_bytes().decode("utf-8") for f in batch]
                for encoding in tokenizer.backend.encode_batch(texts, add_special_tokens=False):
                    ids = np.asarray(encoding.ids + separator, dtype=dtype)
                    ids.tofile(out)
                    count += len(ids)
                bar.update(sum(f.size for f in batch))
            bar.close()
            out.flush()
            os.fsync(out.fileno())
        counts[split] = count
    log(f"tokenized: train {counts['train']:,} tokens, val {counts['val']:,} tokens ({tokenizer.vocab_size} vocab)")
    return {
        "format": FORMAT_VERSION,
        "corpus_hash": corpus.content_hash,
        "sources": corpus.sources,
        "val_fraction": corpus.val_fraction,
        "split_seed": corpus.seed,
        "files": {split: len(corpus.split(split)) for split in SPLITS},
        "bytes": {split: sum(f.size for f in corpus.split(split)) for split in SPLITS},
        "skipped": corpus.skipped,
        "tokenizer": spec,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "dtype": np.dtype(dtype).name,
        "tokens": counts,
    }
