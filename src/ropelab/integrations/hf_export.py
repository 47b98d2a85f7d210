"""``ropelab export CKPT --format hf --out DIR``: a model as a plain ``transformers`` directory.

:func:`export_hf` loads ``CKPT`` (a ropelab checkpoint, a registry name, a ``.gguf`` file or a
Hugging Face directory) with :func:`ropelab.integrations.hf.load`, under its own position method
or ``method``, and writes ``config.json`` + ``model.safetensors`` (+ ``generation_config.json``)
+ the tokenizer files with ``save_pretrained``. ``transformers.AutoModelForCausalLM.from_pretrained(DIR)``
then computes what ropelab computes -- which is only possible for the methods a transformers
config can express (:mod:`ropelab.integrations.hf_native`): ``rope``, ``pi``, ``ntk``,
``dynamic-ntk``, ``llama3``, ``proportional``, ``longrope``, ``yarn``, plain ``hope``. Any other method is refused with a :class:`RopelabError` that says why
(transformers would silently run plain RoPE on the weights); the directory's ``config.json``
also carries ropelab's ``ropelab`` entry, which plain transformers ignores.

The export is atomic: everything is written into a hidden sibling directory that is renamed to
``DIR`` at the end, and removed on any failure, so ``DIR`` appears whole or not at all. An
existing non-empty ``DIR`` is refused. Files get the permissions ``open(path, "w")`` gives
(0o666 & ~umask), as everything ropelab writes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ropelab.core.errors import RopelabError
from ropelab.core.io import default_file_mode
from ropelab.integrations import hf

FORMATS = ("hf",)


@dataclass(frozen=True)
class Exported:
    """What :func:`export_hf` wrote."""

    directory: Path
    architecture: str  # e.g. LlamaForCausalLM
    method: str  # the ropelab spec the directory computes
    rope_parameters: dict  # the rope fields written to config.json
    files: tuple[str, ...]


def _refuse(source: str, spec: str, reason: str) -> RopelabError:
    return RopelabError(
        f"export --format hf: {spec!r} ({source}) cannot be written as a plain transformers model: {reason}; "
        "transformers would run these weights with plain RoPE and compute different logits "
        "(exportable methods: rope, pi, ntk, dynamic-ntk, llama3, proportional, longrope, yarn, hope; use ropelab.integrations.hf.load for the others)"
    )


def export_hf(
    source: str | os.PathLike,
    out: str | os.PathLike,
    method: str | None = None,
    train_len: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Exported:
    """Write ``source`` under ``method`` (default: its own) as a transformers directory ``out``."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RopelabError(f"export: {out} already exists and is not empty; choose a new --out")
    try:
        model, tokenizer = hf.load(source, method=method, train_len=train_len, dtype=dtype)
    except RopelabError as error:
        raise RopelabError(f"export --format hf: {error}") from None
    entry = hf.config_entry(model.config)
    spec = entry["method"] if entry else "rope"
    if entry is not None and entry.get("hf_rope_type") is None:
        raise _refuse(str(source), spec, entry.get("hf_unsupported") or "no transformers rope type computes it")

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save_pretrained(partial)
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
        for path in partial.rglob("*"):  # transformers writes the weights with tempfile's 0o600
            if path.is_file():
                os.chmod(path, default_file_mode())
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    rope = {key: value for key, value in model.config.to_dict().items() if key in ("rope_parameters", "rope_scaling")}
    return Exported(
        directory=out,
        architecture=type(model).__name__,
        method=spec,
        rope_parameters=rope.get("rope_parameters") or rope.get("rope_scaling") or {},
        files=tuple(sorted(path.name for path in out.iterdir())),
    )
