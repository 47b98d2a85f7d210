"""The options every command spells the same way: one name per concept.

* **the model**: ``MODEL`` as the first argument of every command about a model (``eval``,
  ``compare``, ``generate``, ``analyze``, ``export``), and ``--model MODEL`` on those and on every
  command that can read one (``describe``, ``task-sample``); any form of a model (registry name,
  ``.gguf`` file, Hugging Face directory, ropelab checkpoint, training run directory).
* **the methods**: ``--methods SPEC,...``; ``--method`` is the same option (a command that runs
  one method, such as ``generate``, takes one spec).
* **the device**: ``--device`` (:func:`device_options`): cpu (the default everywhere), cuda,
  cuda:N, mps or auto.

An old spelling kept for a release (``train --pe``, ``analyze --input``) still works and prints
one ``warning:`` line naming the new one.
"""

from __future__ import annotations

import argparse
import sys

from ropelab.core.errors import RopelabError
from ropelab.model.device import DEVICE_HELP, DTYPE_HELP
from ropelab.pe import split_specs

MODEL_FORMS = "registry name (smollm2-135m), .gguf file, HF model directory, ropelab checkpoint or training run"


def model_argument(p: argparse.ArgumentParser, default: str | None = None, positional: bool = True) -> None:
    """``MODEL`` (first argument, when ``positional``) and ``--model MODEL``, one destination;
    ``default`` None: a model must be given (checked by :func:`check_model`)."""
    p.set_defaults(model=default, needs_model=default is None and positional)  # before the arguments: see below
    # SUPPRESS: an absent argument sets nothing, so neither spelling overwrites the other (set_defaults
    # would copy ``default`` into arguments added before it, and an empty positional would then win)
    if positional:
        p.add_argument(
            "model", nargs="?", default=argparse.SUPPRESS, metavar="MODEL",
            help=MODEL_FORMS + (f" (default: {default})" if default else ""),
        )  # fmt: skip
    p.add_argument(
        "--model", dest="model", default=argparse.SUPPRESS, metavar="MODEL",
        help="the same as MODEL" if positional else MODEL_FORMS + (f" (default: {default})" if default else ""),
    )  # fmt: skip


def check_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The usage error of a command that needs a model and was given none."""
    if getattr(args, "needs_model", False) and args.model is None:
        parser.error("give a model: ropelab COMMAND MODEL ... (or --model MODEL)")


def methods_argument(p: argparse.ArgumentParser, default: str | None, help: str) -> None:
    p.add_argument("--methods", "--method", dest="methods", default=default, metavar="SPEC,...", help=help)


def one_method(methods: str | None, command: str) -> str | None:
    """The one spec of ``--methods`` for a command that runs one method (None: the model's own)."""
    if methods is None or not methods.strip():
        return None
    specs = split_specs(methods)
    if len(specs) > 1:
        raise RopelabError(f"{command} runs one method; --methods gave {len(specs)}: {', '.join(specs)}")
    return specs[0]


class Renamed(argparse.Action):
    """An old option name: stores into the new one's destination and prints one warning line."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {option_string} is renamed {self.new} (one name per concept); it goes in a later release",
              file=sys.stderr)  # fmt: skip
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def renamed_option(p: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs) -> None:
    """``old`` as a hidden alias of ``new`` (same destination), with a warning when used."""
    p.add_argument(old, dest=dest, action=Renamed, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def device_options(p: argparse.ArgumentParser, dtype: bool = True) -> None:
    """``--device`` and ``--dtype``, checked by :func:`ropelab.model.device.resolve_placement` inside the
    command (so a bad value is one ``error:`` line, and ``--help`` never imports a device backend)."""
    p.add_argument("--device", default="cpu", help="where the model runs: " + DEVICE_HELP)
    if dtype:
        p.add_argument("--dtype", default="float32", help=DTYPE_HELP)


def read_text_file(path: str, max_bytes: int | None = None) -> str:
    """The text of ``path`` (undecodable bytes replaced, with a warning); more than ``max_bytes``
    bytes is one :class:`RopelabError`, found without reading the rest of the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    except OSError as error:
        raise RopelabError(f"{path}: cannot be read ({error.strerror or error})") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise RopelabError(f"{path}: more than {max_bytes} bytes, too long a prompt (see --max-prompt-tokens)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        print(f"warning: {path} is not valid UTF-8; undecodable bytes were replaced", file=sys.stderr)
        return data.decode("utf-8", errors="replace")
