"""Bad run directories and eval run files: output paths that cannot be directories, corrupt or half-written
results lines, damaged records on resume.

Each case is one clear error (or a documented fallback) in bounded work."""

from __future__ import annotations

import json
import time

import pytest

from ropelab.core.errors import RopelabError
from tests.helpers import (
    GOOD_RECORD,
    RUN_CONFIG,
    one_error_line,
    run_cli,
)


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_an_output_path_that_cannot_be_a_directory_is_one_error_line(tmp_path, capsys, checkpoint, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "run"
    code, err = run_cli(
        capsys, "eval", str(checkpoint), "--methods", "rope", "--tasks", "ppl", "--lengths", "100", "--out", str(out)
    )
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert blocker.read_text() == "x"  # nothing written over it


def test_a_corrupt_run_directory_is_one_error_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{broken")
    (run / "results.jsonl").write_text("")
    code, err = run_cli(capsys, "report", str(run))
    assert code == 2 and err.count("\n") == 1 and "config.json: not valid JSON" in err, err
    (run / "config.json").write_text("[]")
    code, err = run_cli(capsys, "report", str(run))
    assert code == 2 and "expected a JSON object" in err, err


# -- 1. corrupt eval run files -----------------------------------------------------------------
BAD_RESULT_LINES = [
    ("123", "expected a record"),
    ("[]", "expected a record"),
    ('"ppl"', "expected a record"),
    ("null", "expected a record"),
    ("{}", "neither a task nor a document"),
    (json.dumps({k: v for k, v in GOOD_RECORD.items() if k != "metrics"}), "metrics is missing"),
    (json.dumps({k: v for k, v in GOOD_RECORD.items() if k != "length"}), "length is missing"),
    (json.dumps({**GOOD_RECORD, "length": "256"}), "length must be a positive integer"),
    (json.dumps({**GOOD_RECORD, "length": True}), "length must be a positive integer"),
    (json.dumps({**GOOD_RECORD, "index": -1}), "index must be a non-negative integer"),
    (json.dumps({**GOOD_RECORD, "method": 7}), "method must be a non-empty string"),
    (json.dumps({**GOOD_RECORD, "metrics": [1.0]}), "metrics must be an object of numbers"),
    (json.dumps({**GOOD_RECORD, "metrics": {"loss": "low"}}), "metrics must be an object of numbers"),
    (json.dumps({**GOOD_RECORD, "seconds": None}), "seconds must be a number"),
    (
        json.dumps({"document": "py:email", "seed": 0, "method": "rope", "language": "python", "blocks": "x"}),
        "blocks must be",
    ),
    (
        json.dumps({"document": 0, "seed": 0, "method": "rope", "language": "python", "blocks": []}),
        "document must be a project name",
    ),
    ("{broken", "not valid JSON"),
    ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    ('{"task": ' + "1" * 5000 + "}", "not valid JSON"),
]


@pytest.mark.parametrize(("line", "message"), BAD_RESULT_LINES, ids=range(len(BAD_RESULT_LINES)))
def test_a_results_line_that_is_not_a_record_is_one_error_naming_the_line(tmp_path, capsys, line, message):
    from ropelab.eval.records import done_keys as _done_keys
    from ropelab.eval.records import read_results

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(RUN_CONFIG))
    results = run / "results.jsonl"
    results.write_text(json.dumps(GOOD_RECORD) + "\n" + line + "\n" + json.dumps({**GOOD_RECORD, "index": 1}) + "\n")
    before = results.read_bytes()
    start = time.perf_counter()
    with pytest.raises(RopelabError, match=rf"results\.jsonl:2: .*{message}.*cannot be trusted"):
        read_results(results)
    with pytest.raises(RopelabError, match=r"results\.jsonl:2: "):  # a resume never reuses nor skips it
        _done_keys(results)
    code, err = run_cli(capsys, "report", str(run))
    assert code == 2 and r"results.jsonl:2: " in one_error_line(err)
    assert time.perf_counter() - start < 5
    assert results.read_bytes() == before  # nothing cut or rewritten


def test_a_half_written_last_line_is_skipped_and_cut_on_resume(tmp_path):
    from ropelab.eval.records import done_keys as _done_keys
    from ropelab.eval.records import drop_partial_line as _drop_partial_line
    from ropelab.eval.records import read_results

    results = tmp_path / "results.jsonl"
    good = json.dumps(GOOD_RECORD) + "\n"
    results.write_text(good + json.dumps({**GOOD_RECORD, "index": 1})[:30])  # interrupted mid-record
    assert read_results(results) == [GOOD_RECORD]  # documented fallback: skipped
    assert _done_keys(results) == {("ppl", "rope", 256, 0)}
    assert results.read_text() == good  # cut, so appends start on a new line
    results.write_bytes(b"\xff" * 200_000)  # one long undecodable line without a newline: cut entirely
    _drop_partial_line(results)
    assert results.read_bytes() == b""
    results.write_bytes(good.encode() + b"\xff\xfe\n")
    with pytest.raises(RopelabError, match=r"results\.jsonl:2: not valid JSON"):
        read_results(results)
    # the experiment runners' records (hirope) are records too; an index is optional for reading
    document = {
        "method": "rope",
        "seed": 0,
        "language": "python",
        "document": "py:email",
        "blocks": [1.0],
        "seconds": 1,
    }
    results.write_text(json.dumps(document) + "\n" + json.dumps({**GOOD_RECORD, "index": None} | {"index": 0}) + "\n")
    assert len(read_results(results)) == 2
    results.write_text(json.dumps({k: v for k, v in GOOD_RECORD.items() if k != "index"}) + "\n")
    assert len(read_results(results)) == 1
    with pytest.raises(RopelabError, match="index must be a non-negative integer"):
        _done_keys(results)  # a resume keys records by index: one without cannot be trusted


def test_resuming_an_eval_run_with_a_corrupt_record_is_one_error(tmp_path, capsys, loadable):
    checkpoint = loadable
    out = tmp_path / "run"
    argv = ("eval", str(checkpoint), "--methods", "rope", "--tasks", "ppl", "--lengths", "300", "--out", str(out))
    code, err = run_cli(capsys, *argv, "--no-reference")
    assert code == 0, err
    results = out / "results.jsonl"
    assert len(results.read_text().splitlines()) == 1
    results.write_text(results.read_text() + "{}\n")
    before = results.read_bytes()
    code, err = run_cli(capsys, *argv, "--no-reference")
    assert code == 2 and "results.jsonl:2: not a result record" in one_error_line(err)
    assert results.read_bytes() == before
