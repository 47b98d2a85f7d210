"""Tokenizers: a thin wrapper over Hugging Face ``tokenizers`` with character offsets.

Every model ropelab loads comes with one of these, built from a ``tokenizer.json`` (Hugging Face
model directories, ropelab's model cache, tokenizers trained by ``ropelab train``). Offsets map
each token to the characters it covers -- the code hierarchy (HiRoPE) aligns syntax-tree
segments to tokens through them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as _Backend

from ropelab.core.checks import is_int
from ropelab.core.errors import RopelabError
from ropelab.core.io import atomic_path, atomic_write_text

_SURROGATE = re.compile("[\ud800-\udfff]")


def without_surrogates(text: str) -> str:
    """``text`` with every lone surrogate (what ``errors="surrogateescape"`` decoding or a JSON
    ``"\\ud800"`` leaves) replaced by U+FFFD, one character for one, so character offsets stay valid.
    The ``tokenizers`` library refuses such strings; any other non-string is one clear error."""
    if not isinstance(text, str):
        raise RopelabError(f"text to encode must be a string, got {type(text).__name__}")
    return _SURROGATE.sub("\ufffd", text)


def _special_ids(path: Path) -> tuple[int | None, int | None]:
    try:
        data = json.loads(path.read_text())
        ids = tuple(data.get(key) for key in ("bos_id", "eos_id"))
    except (OSError, ValueError, AttributeError) as error:
        raise RopelabError(f'{path}: unreadable ({error}); expected {{"bos_id": int, "eos_id": int}}') from None
    if any(i is not None and not (is_int(i) and i >= 0) for i in ids):
        raise RopelabError(f"{path}: bos_id and eos_id must be non-negative integers or null, got {ids}")
    return ids


@dataclass(frozen=True)
class Encoding:
    ids: list[int]
    offsets: list[tuple[int, int]]  # [start, end) character offsets into the text


class Tokenizer:
    """``encode(text) -> ids``, ``decode(ids) -> text``, ``encode_with_offsets``, special ids."""

    def __init__(self, backend: _Backend, bos_id: int | None = None, eos_id: int | None = None, name: str = "") -> None:
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.name = name

    @classmethod
    def from_file(cls, path: str | os.PathLike, bos_id: int | None = None, eos_id: int | None = None) -> Tokenizer:
        path = Path(path)
        try:
            backend = _Backend.from_file(str(path))
        except FileNotFoundError:
            raise RopelabError(f"{path}: tokenizer file not found") from None
        except Exception as error:  # tokenizers raises plain Exceptions for bad JSON
            raise RopelabError(f"{path}: not a valid tokenizer.json ({error})") from None
        special = path.with_name("special_tokens.json")
        if special.is_file() and bos_id is None and eos_id is None:
            bos_id, eos_id = _special_ids(special)
        return cls(backend, bos_id, eos_id, name=str(path))

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` and ``special_tokens.json`` into ``directory``."""
        directory = Path(directory)
        with atomic_path(directory / "tokenizer.json") as tmp:
            self.backend.save(str(tmp))
        atomic_write_text(directory / "special_tokens.json", json.dumps({"bos_id": self.bos_id, "eos_id": self.eos_id}))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.backend.encode(without_surrogates(text), add_special_tokens=False).ids
        return ([self.bos_id] if add_bos and self.bos_id is not None else []) + ids

    def encode_with_offsets(self, text: str) -> Encoding:
        encoding = self.backend.encode(without_surrogates(text), add_special_tokens=False)
        return Encoding(ids=list(encoding.ids), offsets=[tuple(o) for o in encoding.offsets])

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name or 'in-memory'}, vocab={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"
