"""Your own code as evaluation documents (``--documents`` on ``ropelab eval`` and ``compare``).

The grammar is ``train --data``'s (:func:`ropelab.data.corpus.expand_source`): directories, files
and globs. Each argument gives documents, the statistical unit of every verdict:

* a **directory** is one document -- a project, like the built-in ones
  (:mod:`ropelab.eval.projects`): its source files in path order, each file kept whole and headed
  by a comment naming its path (``# file: pkg/module.py``);
* a **file** is one document;
* a **glob** gives one document per file it matches.

A document holds the files of one programming language (from the file extensions of
:mod:`ropelab.hierarchy.languages`): the language with the most characters; files in other
languages, files of no known language inside a directory, and files that are empty, binary or
not UTF-8 are left out and counted (:attr:`Document.skipped`). A file named directly whose
extension no grammar knows is read as plain text (language ``text``: ``ppl`` and ``passkey``
read it, HiRoPE gives it no hierarchy). Every file is parsed on its own for HiRoPE's hierarchy.

The run records each document's name, language, file count and the sha256 of its text, so a
resumed run refuses documents that changed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ropelab.core.errors import RopelabError
from ropelab.data.corpus import expand_source, read_source_file
from ropelab.eval.documents import read_text
from ropelab.hierarchy.languages import TEXT, language_for_path

#: the comment mark of each language's file headers (every other known language writes ``//``)
_HASH_COMMENT = {"python": "#", TEXT: "#"}


@dataclass(frozen=True)
class Document:
    """One document of yours: the texts of its files (header line included, each ending in a newline)."""

    name: str  # the directory or file as given
    language: str  # a language of ropelab.hierarchy.languages, or "text"
    texts: tuple[str, ...]
    files: tuple[str, ...]  # each file's path relative to the argument
    paths: tuple[Path, ...] = ()  # each file's path on disk
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files left out
    era: str = "yours"  # the built-in projects' "old" / "new" (memorisation checks) does not apply

    @property
    def sha256(self) -> str:
        return hashlib.sha256("".join(self.texts).encode("utf-8")).hexdigest()

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def describe(self) -> dict:
        """What a run records about the document (``config.json``)."""
        return {"name": self.name, "language": self.language, "files": len(self.files), "sha256": self.sha256}


def load_documents(sources: list[str]) -> list[Document]:
    """The documents of ``sources`` (directories, files, globs), in the order given; one
    :class:`RopelabError` naming the argument when one gives nothing to read."""
    if isinstance(sources, str) or not sources:
        raise RopelabError("documents: give one or more directories, files or globs")
    documents: list[Document] = []
    for source in sources:
        if not isinstance(source, str) or not source.strip():
            raise RopelabError(f"documents: expected a path, got {source!r}")
        found = expand_source(source)
        if Path(source).expanduser().is_dir() or source == "stdlib":
            documents.append(_document(source, found, directory=True))
        else:
            documents += [_document(str(path), [(path, path.name)], directory=False) for path, _ in found]
    names = Counter(d.name for d in documents)
    repeated = [name for name, count in names.items() if count > 1]
    if repeated:
        raise RopelabError(f"documents: {repeated[0]} is given twice; every document counts once")
    return documents


def _document(source: str, found: list[tuple[Path, str]], directory: bool) -> Document:
    skipped: Counter = Counter()
    by_language: dict[str, list[tuple[str, str]]] = {}
    for path, name in found:
        language = language_for_path(path) or (None if directory else TEXT)
        if language is None:
            skipped["not code"] += 1
            continue
        _, reason = read_source_file(path)
        text = None if reason else read_text(path)
        if text is None:
            skipped[reason or "undecodable"] += 1
            continue
        by_language.setdefault(language, []).append((name, text, path))
    if not by_language:
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        raise RopelabError(f"{source}: holds no readable code file" + (f" ({counts})" if counts else ""))
    language = max(by_language, key=lambda lang: (sum(len(t) for _, t, _ in by_language[lang]), lang))
    for other, files in by_language.items():
        if other != language:
            skipped[f"{other} (the document is {language})"] += len(files)
    mark = _HASH_COMMENT.get(language, "//")
    kept = by_language[language]
    texts = tuple(f"{mark} file: {name}\n{text}" + ("" if text.endswith("\n") else "\n") for name, text, _ in kept)
    files, paths = tuple(name for name, _, _ in kept), tuple(path for _, _, path in kept)
    return Document(source, language, texts, files, paths, dict(skipped))
