"""``ropelab export``: a checkpoint as a plain Hugging Face ``transformers`` directory.

    ropelab export runs/hope/checkpoints/step-000500 --format hf --out exported/
    ropelab export smollm2-135m --methods yarn:factor=2 --out smollm2-yarn/

The work is :func:`ropelab.integrations.hf_export.export_hf`; torch and transformers are imported
inside the command.
"""

from __future__ import annotations

import argparse

from ropelab.cli.common import methods_argument, model_argument, one_method
from ropelab.integrations.hf_export import export_hf

DESCRIPTION = (
    "Write a model as a transformers directory (config.json, model.safetensors, tokenizer files) that "
    "transformers.AutoModelForCausalLM.from_pretrained loads without ropelab. Only methods a transformers "
    "config can express are exported: rope, pi, ntk, dynamic-ntk, llama3, proportional, longrope, yarn, hope (and ntk followed by one of the others); "
    "any other method is refused. The directory appears whole or not at all."
)


def export_options(p: argparse.ArgumentParser) -> None:
    model_argument(p)
    p.add_argument("--format", choices=("hf",), default="hf", help="output format (default: hf)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist, or be empty)")
    methods_argument(p, None, "the position method to export, one spec, e.g. yarn:factor=2 (default: the model's own)")
    p.add_argument(
        "--train-len",
        type=int,
        default=None,
        metavar="N",
        help="training length the method reads (default: the checkpoint's)",
    )


def cmd_export(args: argparse.Namespace) -> int:

    result = export_hf(args.model, args.out, method=one_method(args.methods, "export"), train_len=args.train_len)
    rope = ", ".join(f"{k}={v}" for k, v in result.rope_parameters.items())
    print(f"wrote {result.directory} ({result.architecture}, method {result.method}; rope: {rope})")
    print(f"files: {', '.join(result.files)}")
    print(f"load with: transformers.AutoModelForCausalLM.from_pretrained({str(result.directory)!r})")
    return 0
