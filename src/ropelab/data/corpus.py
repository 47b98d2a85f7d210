"""A training corpus: text files from directories, files or globs, split by file.

Sources (``Corpus.from_sources``):

* ``"stdlib"`` (the default): every ``.py`` file of the running interpreter's standard library
  (``site-packages`` / ``dist-packages`` left out);
* a directory: every file below it (hidden entries and ``__pycache__`` left out);
* a file;
* a glob (``src/**/*.py``; ``**`` recurses).

Files that are binary (a NUL byte in their first 8 KB) or not UTF-8 are skipped and counted;
the counts go to the log, never a crash. Empty files are skipped too.

Split: by file, deterministically from the file's *content*: a file goes to validation when
``sha256(seed, content)`` maps below ``val_fraction`` (so identical files always land on the same
side, and the split does not depend on where the corpus lives). With two or more files both
sides are non-empty. ``holdout`` names files that always go to validation (``ropelab experiment
hope`` holds out the files its evaluation tasks read, so no model is trained on them).

The corpus hash covers every file's split, relative name and content, so a changed file, a new
file or another split gives another hash (the cache key of the tokenized data).
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ropelab.core.errors import RopelabError

STDLIB = "stdlib"
_SNIFF_BYTES = 8192
_SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages"}


@dataclass(frozen=True)
class CorpusFile:
    path: Path  # absolute
    name: str  # relative to its source (for logs and the hash)
    sha256: str
    size: int  # bytes
    split: str  # "train" | "val"


@dataclass
class Corpus:
    """The files of a corpus with their split; texts are read again on demand."""

    sources: list[str]
    files: list[CorpusFile]
    val_fraction: float
    seed: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    @classmethod
    def from_sources(
        cls,
        sources: Iterable[str] | None = None,
        *,
        val_fraction: float = 0.05,
        seed: int = 0,
        holdout: Iterable[str | os.PathLike] = (),
    ) -> Corpus:
        sources = list(sources or [STDLIB])
        if not 0 <= val_fraction < 1:
            raise RopelabError(f"val_fraction must be in [0, 1), got {val_fraction}")
        held = {str(Path(p).resolve()) for p in holdout}
        skipped = {"binary": 0, "undecodable": 0, "empty": 0, "unreadable": 0}
        seen: set[str] = set()
        found: list[tuple[Path, str, bytes]] = []
        for source in sources:
            for path, name in expand_source(source):
                key = str(path.resolve())
                if key in seen:
                    continue
                seen.add(key)
                data, reason = read_source_file(path)
                if reason:
                    skipped[reason] += 1
                    continue
                found.append((path, name, data))
        if not found:
            counts = ", ".join(f"{n} {r}" for r, n in skipped.items() if n)
            raise RopelabError(
                f"no usable text files in {', '.join(map(repr, sources))}" + (f" (skipped: {counts})" if counts else "")
            )
        files = []
        for path, name, data in found:
            digest = hashlib.sha256(data).hexdigest()
            files.append(CorpusFile(path.resolve(), name, digest, len(data), "train"))
        files = _split(files, val_fraction, seed, held)
        return cls(sources, files, val_fraction, seed, {k: v for k, v in skipped.items() if v})

    def split(self, name: str) -> list[CorpusFile]:
        return [f for f in self.files if f.split == name]

    def texts(self, split: str) -> Iterable[str]:
        """The texts of one split, in corpus order (read again; they were checked when listed)."""
        for f in self.split(split):
            yield f.path.read_bytes().decode("utf-8")

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f"{f.split}\0{f.name}\0{f.sha256}\n".encode())
        return digest.hexdigest()

    def describe(self) -> str:
        parts = []
        for split in ("train", "val"):
            files = self.split(split)
            parts.append(f"{split} {len(files)} files ({sum(f.size for f in files) / 1e6:.2f} MB)")
        text = f"corpus {', '.join(self.sources)}: " + ", ".join(parts)
        if self.skipped:
            text += "; skipped " + ", ".join(f"{n} {reason}" for reason, n in self.skipped.items())
        return text


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def expand_source(source: str) -> list[tuple[Path, str]]:
    """(path, name relative to the source) for every candidate file of one source, sorted."""
    if source == STDLIB:
        root = stdlib_root()
        return [(p, str(p.relative_to(root))) for p in _walk(root) if p.suffix == ".py"]
    if any(ch in source for ch in "*?["):
        matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
        files = [Path(m) for m in matches if Path(m).is_file()]
        if not files:
            raise RopelabError(f"no files match {source!r}")
        return [(p, str(p)) for p in files]
    path = Path(source).expanduser()
    if path.is_file():
        return [(path, path.name)]
    if path.is_dir():
        files = _walk(path)
        if not files:
            raise RopelabError(f"{source}: the directory holds no files")
        return [(p, str(p.relative_to(path))) for p in files]
    raise RopelabError(f"{source}: no such file or directory (give directories, files, globs or 'stdlib')")


def _walk(root: Path) -> list[Path]:
    def fail(error: OSError) -> None:
        raise RopelabError(f"{error.filename}: cannot be listed ({error.strerror})")

    files = []
    for directory, dirs, names in os.walk(root, onerror=fail):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
        files += [Path(directory) / n for n in sorted(names) if not n.startswith(".")]
    return [p for p in files if p.is_file()]


def read_source_file(path: Path) -> tuple[bytes, str | None]:
    """A file's UTF-8 bytes, or ``(b"", reason)`` for one to skip: unreadable, empty, binary, undecodable."""
    try:
        data = path.read_bytes()
    except OSError:
        return b"", "unreadable"
    if not data.strip():
        return b"", "empty"
    if b"\0" in data[:_SNIFF_BYTES]:
        return b"", "binary"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return b"", "undecodable"
    return data, None


def _unit(seed: int, sha256: str) -> float:
    """A number in [0, 1) fixed by the seed and the file's content."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _split(files: list[CorpusFile], val_fraction: float, seed: int, held: set[str]) -> list[CorpusFile]:
    units = [_unit(seed, f.sha256) for f in files]
    forced = {i for i, f in enumerate(files) if str(f.path) in held}
    if len(forced) == len(files):
        raise RopelabError("every corpus file is held out for validation; nothing is left to train on")
    val = forced | {i for i, u in enumerate(units) if u < val_fraction}
    if val_fraction > 0 and len(files) >= 2 and not val:
        val = {min(range(len(files)), key=units.__getitem__)}  # a tiny corpus: the file nearest the cut
    if len(val) == len(files):  # keep at least one file for training: the one furthest from the cut
        val.discard(max(val - forced, key=units.__getitem__))
    return [CorpusFile(f.path, f.name, f.sha256, f.size, "val" if i in val else "train") for i, f in enumerate(files)]
