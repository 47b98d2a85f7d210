"""Offline text sources for evaluation: the running interpreter's standard library.

Files are read in a fixed order (size descending, then name) so every run sees the same text;
undecodable files are skipped and counted, never a crash.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from ropelab.data.corpus import stdlib_root

#: stdlib directories that are not code to read: tests, installed packages, documentation strings
#: (``pydoc_data/topics.py``, the largest ``.py`` file, is one dict of reST text) and generated codec tables
NOT_CODE = ("test", "tests", "idle_test", "site-packages", "pydoc_data", "encodings")


@lru_cache(maxsize=4)
def stdlib_python_files(min_bytes: int = 0) -> tuple[Path, ...]:
    """Top-level and package ``.py`` files of the stdlib (no tests, no data modules), largest first."""
    root = stdlib_root()
    files = [
        p
        for p in root.rglob("*.py")
        if p.is_file()
        and p.stat().st_size >= min_bytes
        and not any(part in NOT_CODE for part in p.relative_to(root).parts)
    ]
    return tuple(sorted(files, key=lambda p: (-p.stat().st_size, str(p))))


#: the sets :func:`recorded_reads` fills, and the caches of functions that read through :func:`read_text`
_RECORDERS: list[set[str]] = []
_CACHES: list = []


def read_text(path: Path) -> str | None:
    """A file's text (None when unreadable or not UTF-8); every evaluation document is read here,
    so :func:`recorded_reads` sees it."""
    for seen in _RECORDERS:
        seen.add(str(Path(path).resolve()))
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def caches_reads(cache):
    """Register a cache (anything with ``cache_clear()``) that keeps what was read through
    :func:`read_text`, so :func:`recorded_reads` can empty it and see every read again."""
    _CACHES.append(cache)
    return cache


@contextmanager
def recorded_reads() -> Iterator[set[str]]:
    """The resolved paths of every file read through :func:`read_text` inside the block (the
    registered caches are emptied first, so cached documents are read, and seen, again): a run
    checks that its evaluation read only files held out of training."""
    for cache in _CACHES:
        cache.cache_clear()
    seen: set[str] = set()
    _RECORDERS.append(seen)
    try:
        yield seen
    finally:
        _RECORDERS.remove(seen)


def file_name(path: Path) -> str:
    """A code file's name in prompts and records: relative to the stdlib for its files, else the path."""
    try:
        return path.relative_to(stdlib_root()).as_posix()
    except ValueError:
        return path.as_posix()


def file_header(path: Path) -> str:
    """The comment line that starts a Python file in a prompt of several files."""
    return f"# file: {file_name(path)}\n"


def python_pool(documents: list | None) -> tuple[Path, ...]:
    """The Python files a task draws from: the stdlib's (:func:`stdlib_python_files`), or those of
    the user's documents (``--documents``)."""
    if documents is None:
        return stdlib_python_files()
    return tuple(path for document in documents if document.language == "python" for path in document.paths)


def long_code(min_chars: int, skip: int = 0) -> tuple[str, list[str]]:
    """Whole stdlib files concatenated (largest first, after ``skip`` files) to ``min_chars``."""
    parts, names = python_parts(min_chars, skip)
    return "".join(parts), names


def python_parts(min_chars: int, skip: int = 0) -> tuple[list[str], list[str]]:
    """The files :func:`long_code` concatenates, one text per file (each ending in a newline)."""
    parts, names, total = [], [], 0
    for path in stdlib_python_files()[skip:]:
        text = read_text(path)
        if text is None:
            continue
        parts.append(text if text.endswith("\n") else text + "\n")
        names.append(str(path.relative_to(stdlib_root())))
        total += len(text)
        if total >= min_chars:
            break
    return parts, names


def jdk_sources() -> Path | None:
    """The JDK's ``src.zip`` (Debian's ``openjdk-17-source`` package), if one is installed."""
    candidates = sorted(Path("/usr/lib/jvm").glob("*/lib/src.zip")) if Path("/usr/lib/jvm").is_dir() else []
    preferred = [p for p in candidates if "17" in p.parent.parent.name]
    return (preferred or candidates or [None])[0]


def long_java(min_chars: int, skip: int = 0) -> tuple[str, list[str]] | None:
    """Whole ``java.base/java/util/`` source files of the installed JDK, largest first, concatenated to
    ``min_chars``; ``None`` when no JDK sources are installed."""
    found = java_parts(min_chars, skip)
    return None if found is None else ("".join(found[0]), found[1])


def java_parts(min_chars: int, skip: int = 0) -> tuple[list[str], list[str]] | None:
    """The files :func:`long_java` concatenates, one text per file; ``None`` without JDK sources."""
    import zipfile

    archive = jdk_sources()
    if archive is None:
        return None
    with zipfile.ZipFile(archive) as zf:
        entries = [
            info
            for info in zf.infolist()
            if info.filename.startswith("java.base/java/util/") and info.filename.endswith(".java")
        ]
        entries.sort(key=lambda info: (-info.file_size, info.filename))
        parts, names, total = [], [], 0
        for info in entries[skip:]:
            try:
                text = zf.read(info).decode("utf-8")
            except (UnicodeDecodeError, OSError, zipfile.BadZipFile):
                continue
            parts.append(text if text.endswith("\n") else text + "\n")
            names.append(info.filename)
            total += len(text)
            if total >= min_chars:
                break
    return parts, names


def first_tokens(tokenizer, text: str, count: int) -> list[int]:
    """The first ``count`` tokens of ``text`` without tokenizing all of it (the largest stdlib
    files are far longer than an input): a prefix of the text tokenizes to the same tokens except
    at its cut, so a prefix that yields a margin of extra tokens gives exactly the same ``count``."""
    cut = count * 8
    while True:
        ids = tokenizer.encode(text[:cut])
        if cut >= len(text) or len(ids) > count + 16:
            return ids[:count]
        cut *= 2
