"""What the ShortLLM model trains on and what it is evaluated on, kept apart.

Evaluation documents are projects of ropelab's fixed corpus (:mod:`ropelab.eval.projects`): the
settings are chosen on its ``dev`` projects, the verdicts made on its ``test`` projects, each
document the first ``length`` tokens of one project. The model trains on the Python standard
library and the JDK's ``java.base`` packages :data:`JDK_PACKAGES` **minus every project of the
corpus** (both splits), so no evaluation document is ever trained on; :func:`check_held_out`
verifies that before anything is evaluated.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from ropelab.core.errors import RopelabError
from ropelab.core.io import ropelab_home
from ropelab.data.corpus import stdlib_root
from ropelab.eval import projects as corpus
from ropelab.eval.documents import first_tokens, jdk_sources
from ropelab.experiments.hirope.config import JDK_PACKAGES


def _listed(kind: str) -> list[str]:
    """The ``where`` part of every listed project's source of this ``kind`` (``stdlib``, ``jdk``)."""
    return [p.source.partition(":")[2] for p in corpus.projects() if p.source.startswith(f"{kind}:")]


def python_holdout() -> list[Path]:
    """Every standard-library file that a project of the corpus reads: kept out of training."""
    root = stdlib_root()
    out = []
    for package in _listed("stdlib"):
        directory = root / package
        if directory.is_dir():
            out += sorted(directory.rglob("*.py"))
    return out


def java_training_dir() -> Path | None:
    """The JDK's ``java.base`` sources of :data:`JDK_PACKAGES` minus every Java package of the corpus
    (a package's own files, as a project reads them), extracted once under
    ``$ROPELAB_HOME/data/jdk-train-<key>`` (a plain directory ``ropelab train`` can read); the key
    names the excluded packages, so a new corpus version extracts anew. None without JDK sources."""
    archive = jdk_sources()
    if archive is None:
        return None
    excluded = sorted(_listed("jdk"))
    key = hashlib.sha256("\n".join([*JDK_PACKAGES, "--", *excluded]).encode()).hexdigest()[:10]
    target = ropelab_home() / "data" / f"jdk-train-{key}"
    done = target / ".complete"
    if done.is_file():
        return target
    prefixes = tuple(f"java.base/java/{p}/" for p in JDK_PACKAGES)
    skip = set(excluded)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = info.filename
            if name.startswith(prefixes) and name.endswith(".java") and name.rpartition("/")[0] not in skip:
                path = target / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(zf.read(info))
    done.write_text("extracted\n")
    return target


def training_sources(languages: list[str], data: list[str] | None) -> list[str]:
    """The training corpus' sources: ``data`` when given, else the stdlib and (for Java) the JDK tree."""
    if data is not None:
        return list(data)
    sources = ["stdlib"]
    java = java_training_dir() if "java" in languages else None
    if java is not None:
        sources.append(str(java))
    return sources


def documents(split: str, languages: list[str], count: int, tokenizer, length: int) -> list[dict]:
    """The first ``count`` projects per language of ``split``, each cut to its first ``length``
    tokens: ``{"name", "language", "era", "files", "file_chars", "ids"}``. A project with fewer
    tokens is an error (the list is fixed: a shorter one would silently change the set)."""
    out = []
    for language in languages:
        listed = corpus.projects(split, language)
        if len(listed) < count:
            raise RopelabError(f"the corpus has {len(listed)} {split} projects in {language}; asked for {count}")
        for project in listed[:count]:
            texts, names = corpus.load(project)
            ids = first_tokens(tokenizer, "".join(texts), length)
            if len(ids) < length:
                raise RopelabError(f"{project.name} has {len(ids)} tokens here, fewer than {length}")
            out.append({"name": project.name, "language": language, "era": project.era, "files": names,
                        "file_chars": [len(t) for t in texts], "ids": ids, "texts": texts})  # fmt: skip
    return out


def check_held_out(docs: list[dict], sources: list[str]) -> None:
    """Raise when an evaluation document's file is part of the training sources: a Python project
    of the standard library while ``stdlib`` is trained on without it held out, or a Java
    package's file present in a training directory."""
    held = {str(p.resolve()) for p in python_holdout()}
    root = stdlib_root()
    trees = [Path(s) for s in sources if s != "stdlib" and Path(s).is_dir()]
    for doc in docs:
        project = corpus.get(doc["name"])
        kind, _, where = project.source.partition(":")
        if kind == "stdlib" and "stdlib" in sources:
            missing = [n for n in doc["files"] if str((root / n).resolve()) not in held]
            if missing:
                raise RopelabError(f"{doc['name']}: {missing[0]} is in the training data")
        if kind == "jdk":
            for tree in trees:
                if (tree / where).is_dir() and any((tree / where).glob("*.java")):
                    raise RopelabError(f"{doc['name']}: its package is in the training data ({tree / where})")
