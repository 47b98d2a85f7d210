"""``--documents``: your own code as the evaluation documents of ``eval`` and ``compare``."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest

from ropelab.cli import main
from ropelab.core.errors import RopelabError
from ropelab.eval.user_documents import load_documents
from tests.helpers import assert_tables_well_formed, tiny_code_checkpoint


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_directory_is_one_document_of_its_main_language(tmp_path):
    _write(tmp_path / "pkg/b.py", "def b():\n    return 1\n")
    _write(tmp_path / "pkg/a.py", "def a():\n    return 2")  # no final newline: one is added
    _write(tmp_path / "pkg/sub/c.js", "function c() {}\n")
    _write(tmp_path / "pkg/README.txt", "words\n")
    (tmp_path / "pkg/blob.py").write_bytes(b"\xff\xfe\x00")
    [doc] = load_documents([str(tmp_path / "pkg")])
    assert doc.language == "python" and doc.files == ("a.py", "b.py")  # path order
    assert doc.texts == ("# file: a.py\ndef a():\n    return 2\n", "# file: b.py\ndef b():\n    return 1\n")
    assert doc.skipped == {"not code": 1, "javascript (the document is python)": 1, "binary": 1}
    assert doc.describe()["files"] == 2 and len(doc.sha256) == 64


def test_files_and_globs_give_one_document_per_file(tmp_path):
    _write(tmp_path / "x/Main.java", "class Main {}\n")
    _write(tmp_path / "x/util.js", "function f() {}\n")
    _write(tmp_path / "notes.md", "plain text\n")
    docs = load_documents([str(tmp_path / "x/*"), str(tmp_path / "notes.md")])
    assert [(Path(d.name).name, d.language) for d in docs] == [
        ("Main.java", "java"),
        ("util.js", "javascript"),
        ("notes.md", "text"),
    ]
    assert docs[0].texts[0].startswith("// file: Main.java\n") and docs[2].texts[0].startswith("# file: notes.md\n")


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (["missing-dir"], "no such file or directory"),
        (["empty"], "the directory holds no files"),
        (["onlydata"], r"holds no readable code file \(1 not code\)"),
        (["one.py", "one.py"], "is given twice"),
        ([], "give one or more"),
    ],
)
def test_bad_documents_are_one_clear_error(tmp_path, monkeypatch, sources, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "onlydata/data.csv", "1,2\n")
    _write(tmp_path / "one.py", "x = 1\n")
    with pytest.raises(RopelabError, match=message):
        load_documents(sources)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny code checkpoint (train length 512) and a user's code: a package directory and a file."""
    root = tmp_path_factory.mktemp("yours")
    tiny_code_checkpoint(root / "ckpt")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    shutil.copytree(stdlib / "json", root / "mypkg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(stdlib / "textwrap.py", root / "one.py")
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_reads_your_documents_for_every_document_task(workspace, capsys, tmp_path):
    """One sample per document (none asked), the documents named in the report and recorded with
    their hash; a resume over a changed document is refused."""
    out = tmp_path / "run"
    argv = ["eval", str(workspace / "ckpt"), "--documents", str(workspace / "mypkg"), str(workspace / "one.py")]
    argv += ["--methods", "rope", "--tasks", "context,ppl,passkey", "--lengths", "640", "--no-progress"]
    code, stdout, err = run(capsys, *argv, "--out", str(out), "--threads", "1")
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["samples"] == 2 and [d["name"] for d in config["documents"]] == [
        str(workspace / "mypkg"),
        str(workspace / "one.py"),
    ]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for task in ("context", "ppl", "passkey"):
        names = {r["document"] for r in records if r["task"] == task}
        assert names == {str(workspace / "mypkg"), str(workspace / "one.py")}, task
    assert assert_tables_well_formed((out / "report.md").read_text()) >= 5  # a scaled-down run's tables too
    named = f"`{workspace / 'mypkg'}`, `{workspace / 'one.py'}`"  # the context section names them
    assert named in stdout and f"Your documents (--documents): `{workspace / 'mypkg'}` (python, 5 file(s))" in stdout
    changed = tmp_path / "changed"
    shutil.copytree(workspace / "mypkg", changed)
    (changed / "extra.py").write_text("x = 1\n")
    argv[3] = str(changed)
    code, _, err = run(capsys, *argv, "--out", str(out), "--threads", "1")
    assert code == 2 and "holds a run with other settings (documents differ)" in err


def test_tasks_that_build_their_own_inputs_refuse_documents(workspace, capsys, tmp_path):
    code, out, err = run(  # before the model loads: a model that is not there is not reached
        capsys, "eval", str(workspace / "no-such-model"), "--documents", str(workspace / "one.py"), "--tasks", "copy,ppl",
        "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "copy: cannot read --documents" in err and "ppl, passkey, completion, symbols, context" in err


def test_more_samples_than_documents_is_refused(workspace, capsys, tmp_path):
    code, _, err = run(
        capsys, "eval", str(workspace / "ckpt"), "--documents", str(workspace / "one.py"), "--tasks", "ppl",
        "--lengths", "300", "--samples", "2", "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert code == 2 and "1 document(s) given, but sample 2 asked for" in err


def test_completion_and_symbols_draw_from_the_python_files_of_your_documents(workspace):
    from ropelab.eval import get_task
    from ropelab.eval.user_documents import load_documents
    from ropelab.pretrained import load_tokenizer

    tokenizer = load_tokenizer(workspace / "ckpt")
    documents = load_documents([str(workspace / "mypkg"), str(workspace / "one.py")])
    yours = {str(workspace / "mypkg" / name) for name in documents[0].files} | {str(workspace / "one.py")}
    for name in ("completion", "symbols"):
        task = get_task(name)
        task.documents = documents
        for sample in task.build(tokenizer, 2000, 3, 0, 512):
            assert set(sample.extra["files"]) <= yours, name
            assert all(f"# file: {f}" in sample.prompt for f in sample.extra["files"][1:]), name
