"""The lm-evaluation-harness model ``ropelab``: any model ropelab loads, under any ropelab method.

    ropelab-lm-eval --model ropelab --model_args pretrained=smollm2-135m,method=yarn:factor=2 \\
        --tasks TASK --device cpu --batch_size 1

:class:`RopelabLM` is lm-eval's ``HFLM`` with the model and tokenizer from
:func:`ropelab.integrations.hf.load`: ``pretrained`` is a registry name (``smollm2-135m``), a
``.gguf`` file, a ropelab checkpoint or a Hugging Face directory; ``method`` (optional) patches it
with a ropelab spec and ``train_len`` (optional) overrides the training length the method reads.
Every other model argument is HFLM's (``batch_size``, ``max_length``, ``device``, ``dtype``,
``tokenizer``, ``add_bos_token``, ...); HFLM's loaders for other weight formats (``peft``,
``delta``, ``autogptq``, ``gptqmodel``, ``gguf_file``) and model parallelism (``parallelize``,
``tp_plan``) are refused. ``max_length`` defaults, as in HFLM, to the config's
``max_position_embeddings`` -- the training length -- so pass it to evaluate beyond.

A spec with several parameters contains commas, which lm-eval's ``--model_args`` splits on:
quote it (``method="hirope:split=0.5,window=256"``) or give the arguments as JSON.

How lm-eval finds it. Importing this module registers ``ropelab`` with
``lm_eval.api.registry.register_model``. lm-eval 0.4.x up to at least 0.4.13 has no plugin
discovery -- its command line resolves ``--model`` only against models in its own source tree --
so ropelab installs a wrapper command, ``ropelab-lm-eval`` (also ``python -m
ropelab.integrations.lm_eval_plugin``), that registers the model and runs lm-eval's own command
line with the same arguments. Versions of lm-eval that load plugins from the ``lm_eval.models``
entry point group (added upstream in 2026, lm-evaluation-harness PR #4013) find it through the
entry point ropelab's ``pyproject.toml`` declares, so plain ``lm_eval --model ropelab`` works
there; in Python, ``import ropelab.integrations.lm_eval_plugin`` before
``lm_eval.simple_evaluate(model="ropelab", ...)`` is enough with any version.
"""

from __future__ import annotations

import os
import sys

import torch

from ropelab.core.errors import RopelabError
from ropelab.integrations import hf

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as error:  # pragma: no cover - lm-eval is an optional dependency
    raise ImportError(
        f"ropelab.integrations.lm_eval_plugin needs lm-evaluation-harness: pip install 'ropelab[lm-eval]' ({error})"
    ) from error

#: the name lm-eval knows the model by (``--model ropelab``)
MODEL_NAME = "ropelab"

#: HFLM arguments that load weights or place the model in ways this class does not support
UNSUPPORTED = ("parallelize", "tp_plan", "peft", "delta", "autogptq", "gptqmodel", "gguf_file")
#: HFLM ``_create_model`` arguments that carry no model-loading options of their own
_CREATE_MODEL_ARGS = {
    "revision",
    "trust_remote_code",
    "parallelize",
    "gpus",
    "max_memory_per_gpu",
    "max_cpu_memory",
    "offload_folder",
    "tp_plan",
    "peft",
    "delta",
    "autogptq",
    "gptqmodel",
    "gguf_file",
    "quantization_config",
    "subfolder",
}


class RopelabLM(HFLM):
    """lm-eval's ``HFLM`` over :func:`ropelab.integrations.hf.load` (module docstring)."""

    def __init__(
        self,
        pretrained: str | os.PathLike,
        method: str | None = None,
        train_len: int | None = None,
        **kwargs,
    ) -> None:
        if not isinstance(pretrained, str | os.PathLike):
            raise RopelabError(
                f"lm-eval model {MODEL_NAME!r}: pretrained must be a model name or path, got {type(pretrained).__name__} "
                "(for a model object use lm_eval.models.huggingface.HFLM with a patched model)"
            )
        refused = [name for name in UNSUPPORTED if kwargs.get(name)]
        if refused:
            raise RopelabError(
                f"lm-eval model {MODEL_NAME!r} does not support {', '.join(refused)}; it loads the weights through "
                "ropelab.integrations.hf.load onto one device"
            )
        self._ropelab_args = {"method": method, "train_len": train_len}
        self._ropelab_loaded: tuple | None = None
        super().__init__(pretrained=str(pretrained), **kwargs)

    # HFLM.__init__ calls these three in this order for a model given by name.

    def _get_config(self, pretrained: str, **kwargs) -> None:
        self._ropelab_loaded = hf.load(pretrained, **self._ropelab_args)
        self._config = self._ropelab_loaded[0].config

    def _create_tokenizer(self, pretrained, tokenizer, **kwargs) -> None:
        if tokenizer:
            return super()._create_tokenizer(pretrained, tokenizer, **kwargs)
        found = self._ropelab_loaded[1] if self._ropelab_loaded else None
        if found is None:
            raise RopelabError(f"{pretrained}: no tokenizer.json next to the model; pass tokenizer=PATH in model_args")
        self.tokenizer = found

    def _create_model(self, pretrained: str, dtype: str | torch.dtype | None = "auto", **kwargs) -> None:
        extra = sorted(set(kwargs) - _CREATE_MODEL_ARGS)
        if extra:
            raise RopelabError(f"lm-eval model {MODEL_NAME!r}: unknown model_args {', '.join(extra)}")
        model = self._ropelab_loaded[0]
        self._ropelab_loaded = None
        if dtype not in (None, "auto"):
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        device = torch.device(self._device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RopelabError(
                f"lm-eval model {MODEL_NAME!r}: device {device} requested (lm-eval's default) but CUDA is not "
                "available; pass --device cpu"
            )
        self._model = model.to(device)


if __name__ != "__main__":
    register_model(MODEL_NAME)(RopelabLM)


def main(argv: list[str] | None = None) -> None:
    """``ropelab-lm-eval ARGS``: lm-eval's command line (``lm_eval ARGS``) with the ``ropelab``
    model registered; a ``run`` of RULER tasks on it gets the model's tokenizer, lengths such as
    ``1x,2x`` and a ``max_length`` that holds them (:mod:`ropelab.integrations.lm_eval_ruler`)."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        from lm_eval._cli import HarnessCLI
        from lm_eval.utils import setup_logging
    except ImportError:  # an older lm-eval, without lm_eval._cli: its command line as it is
        from lm_eval.__main__ import cli_evaluate

        cli_evaluate()
        return
    from ropelab.integrations.lm_eval_ruler import prepare_command_line

    setup_logging()  # what lm_eval.__main__.cli_evaluate does, with the RULER step between parse and run
    parser = HarnessCLI()
    args = parser.parse_args()
    if getattr(args, "command", None) == "run":
        try:
            prepare_command_line(args)
        except RopelabError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
    parser.execute(args)


if __name__ == "__main__":  # python -m ropelab.integrations.lm_eval_plugin: register through the real module
    from ropelab.integrations.lm_eval_plugin import main as _main

    _main()
