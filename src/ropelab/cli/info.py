"""Commands that look at methods, models and inputs without running an evaluation.

ropelab methods [--format json]
ropelab describe SPEC --head-dim D --train-len L [--base B] [--length N] [--format json]
ropelab models [--format json]
ropelab generate MODEL --prompt TEXT [--methods SPEC] [--max-new-tokens N] [--temperature T] [--max-prompt-tokens N]
                 [--device D] [--dtype T]
ropelab task-sample TASK --model MODEL --length LEN [--seed S] [--n N] [--format json]
ropelab positions FILE [--language L] [--tokenizer MODEL] [--granularity function|class] [--levels 2|3]
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from ropelab import pe
from ropelab.cli.common import model_argument
from ropelab.core.args import positive_int
from ropelab.core.checks import int_between, is_finite
from ropelab.core.errors import RopelabError
from ropelab.core.lengths import parse_length
from ropelab.eval import get_task
from ropelab.eval.runner import check_samples
from ropelab.hierarchy import canonical_language, extract, read_source
from ropelab.model.config import CONFIGS, LIMITS
from ropelab.pe import methods
from ropelab.pe.base import PEContext
from ropelab.pretrained import load_tokenizer
from ropelab.pretrained.registry import PRETRAINED, load_model


def _param_doc(param) -> dict:
    return {
        "name": param.name,
        "type": param.type.__name__,
        "default": param.default,
        "allowed": param.allowed(),
        "help": param.help,
    }


def cmd_methods(args: argparse.Namespace) -> int:

    entries = [
        {
            "name": m.name,
            "family": m.family,
            "kind": m.kind,
            "description": m.description,
            "paper": m.paper,
            "parameters": [_param_doc(p) for p in m.params],
        }
        for m in methods()
    ]
    if args.format == "json":
        print(json.dumps({"methods": entries}, indent=2))
        return 0
    width = max(len(e["name"]) for e in entries)
    fam = max(len(e["family"]) for e in entries)
    print(f"{'method':<{width}}  {'family':<{fam}}  description")
    for e in entries:
        print(f"{e['name']:<{width}}  {e['family']:<{fam}}  {e['description']}")
        print(f"{'':<{width}}  {'':<{fam}}  paper: {e['paper']}")
        for p in e["parameters"]:
            print(f"{'':<{width}}  {'':<{fam}}  {p['name']}={p['default']!s}  ({p['allowed']}) {p['help']}")
    print("\nCompose with '+': a RoPE-family method then transforms, e.g. hope+yarn:factor=2, hope+pi:factor=4.")
    return 0


#: ``ropelab describe``'s bounds: head_dim and train length as for any model config
#: (:data:`ropelab.model.config.LIMITS`), and the input length
DESCRIBE_MAX_LENGTH = 1 << 30


def _check_describe(head_dim: int, train_len: int, base: float, length: int | None) -> None:

    bounds = {"head_dim": (head_dim, LIMITS["head_dim"]), "train_len": (train_len, LIMITS["train_len"])}
    bounds["length"] = (length, DESCRIBE_MAX_LENGTH)
    for name, (value, high) in bounds.items():
        if value is None and name == "length":
            continue
        if not int_between(value, 1, high):
            raise RopelabError(f"{name} must be an integer from 1 to {high}, got {value!r}")
    if not is_finite(base) or not base > 1:
        raise RopelabError(f"the rotary base must be a finite number > 1, got {base!r}")


def describe(spec: str, head_dim: int, train_len: int, base: float, length: int | None) -> dict:
    """The per-frequency table of a method: angle, period and role of each frequency index.

    ``head_dim`` (at most 4096), ``train_len`` (at most 2**24), ``length`` (at most 2**30) and
    ``base`` (finite, > 1) are checked first: one :class:`RopelabError`, never a table of a
    hundred million rows."""

    _check_describe(head_dim, train_len, base, length)
    ctx = PEContext(head_dim=head_dim, n_heads=1, train_len=train_len, rope_base=base, dim=head_dim)
    encoding = pe.build(spec, ctx)
    result = {
        "spec": encoding.spec,
        "head_dim": head_dim,
        "train_len": train_len,
        "base": base,
        "length": length or train_len,
        "frequencies": [],
        "rotated_frequencies": 0,
        "num_frequencies": head_dim // 2,
        "attention_factor": 1.0,
    }
    plan = encoding.plan(length or train_len)
    if plan is None:
        result["note"] = f"{encoding.info.name} has no rotary frequencies ({encoding.info.family} method)"
        return result
    roles = plan.roles()
    for j, theta in enumerate(plan.theta.tolist()):
        result["frequencies"].append(
            {
                "index": j,
                "theta": theta,
                "period": (2 * math.pi / theta) if theta > 0 else None,
                "role": roles[j],
            }
        )
    result["rotated_frequencies"] = sum(role != "position-independent" for role in roles)
    result["attention_factor"] = plan.attention_factor
    if encoding.is_windowed:  # windowed methods: plain RoPE below this distance
        result["window"] = encoding.window
    return result


def model_shape(name: str):
    """``(config, own method spec)`` of a model (any form :func:`load_model` takes)."""
    model, _ = load_model(name)
    return model.config, model.pe.spec


def cmd_describe(args: argparse.Namespace) -> int:
    spec, head_dim, train_len, base = args.spec, args.head_dim, args.train_len, args.base
    if args.model is not None:  # its numbers, where not given
        config, own = model_shape(args.model)
        spec, head_dim = spec or own, head_dim or config.head_dim
        train_len, base = train_len or config.train_len, base if base is not None else config.rope_base
    if spec is None or head_dim is None or train_len is None:
        raise RopelabError("describe needs a method spec, --head-dim and --train-len, or --model NAME")
    info = describe(spec, head_dim, train_len, 10000.0 if base is None else base, args.length)
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['spec']}: head_dim {info['head_dim']}, train length {info['train_len']}, base {info['base']:g}")
    if "note" in info:
        print(info["note"])
        return 0
    print(f"{'j':>3}  {'theta':>12}  {'period':>12}  role")
    for f in info["frequencies"]:
        period = "inf" if f["period"] is None else f"{f['period']:.1f}"
        print(f"{f['index']:>3}  {f['theta']:>12.6g}  {period:>12}  {f['role']}")
    print(
        f"rotated frequencies: {info['rotated_frequencies']} of {info['num_frequencies']}; "
        f"attention factor: {info['attention_factor']:.6g}"
        + (f"; window: {info['window']} tokens" if "window" in info else "")
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:

    entries = [
        {
            "name": e.name,
            "kind": "pretrained",
            "description": e.description,
            "architecture": e.architecture,
            "train_len": e.train_len,
            "rope_base": e.rope_base,
            "installed": e.installed(),
            "install": e.install,
            "default": e.default,
        }
        for e in PRETRAINED.values()
    ]
    entries += [
        {
            "name": name,
            "kind": "config",
            "description": "architecture for training from scratch",
            "train_len": c["train_len"],
            "installed": True,
        }
        for name, c in CONFIGS.items()
    ]
    if args.format == "json":
        print(json.dumps({"models": entries}, indent=2))
        return 0
    width = max(len(e["name"]) for e in entries)
    for e in entries:
        status = "installed" if e["installed"] else f"not installed: {e['install']}"
        kind = "pretrained" if e["kind"] == "pretrained" else "config    "
        print(f"{e['name']:<{width}}  {kind}  train length {e['train_len']:>6}  {status}")
        print(f"{'':<{width}}  {e['description']}")
    return 0


def cmd_positions(args: argparse.Namespace) -> int:
    """HiRoPE positions of a source file. JSON ``positions`` rows are highest level first:
    ``[segment, token]`` (``[unit, segment, token]`` with ``--levels 3``), the reverse of the
    column order of ``Hierarchy.positions()``."""

    text, warnings = read_source(args.file)
    language = canonical_language(args.language) if args.language else None
    tokenizer = load_tokenizer(args.tokenizer)
    hierarchy = extract(
        text, tokenizer, language=language, path=args.file, granularity=args.granularity, levels=args.levels
    )
    for warning in warnings + hierarchy.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.format == "json":
        info = {
            "language": hierarchy.language,
            "num_tokens": hierarchy.num_tokens,
            "segments": [s.to_dict() for s in hierarchy.segments],
            "positions": hierarchy.positions().flip(1).tolist(),
        }
        print(json.dumps(info))
        return 0
    segments = hierarchy.segments
    print(
        f"{args.file}: {hierarchy.language}, {hierarchy.num_tokens} tokens, {len(segments)} segments "
        f"(granularity {args.granularity}, levels {args.levels})"
    )
    unit = args.levels == 3
    width = max([4, *(len(s.name or "-") for s in segments)])
    print(f"{'seg':>5}  {'unit  ' if unit else ''}{'kind':<8}  {'name':<{width}}  {'lines':>11}  {'tokens':>13}")
    for s in segments:
        print(
            f"{s.index:>5}  {f'{s.unit:>4}  ' if unit else ''}{s.kind:<8}  {s.name or '-':<{width}}  "
            f"{f'{s.start_line}-{s.end_line}':>11}  {f'{s.start_token}-{s.end_token}':>13}"
        )
    return 0


def cmd_task_sample(args: argparse.Namespace) -> int:

    task = get_task(args.task)
    check_samples(args.n)
    model, tokenizer = load_model(args.model)
    length = parse_length(args.length, model.config.train_len)
    task.check_length(length)
    samples = task.build(tokenizer, length, args.n, args.seed, model.config.train_len)
    data = {
        "task": task.name,
        "model": args.model,
        "length": length,
        "seed": args.seed,
        "samples": [s.to_json() for s in samples],
    }
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        for sample in data["samples"]:
            print(f"--- {task.name} sample {sample['index']} ({sample['num_prompt_tokens']} tokens) ---")
            print(sample["prompt"][-2000:])
            print(f"--- answer: {sample['answer']!r}")
    return 0


def methods_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text")


def describe_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", default=None, help="method spec, e.g. hope or hope+yarn:factor=2 "
                   "(default with --model: the model's own)")  # fmt: skip
    model_argument(p, positional=False)
    p.add_argument("--head-dim", type=positive_int, default=None, help="required without --model")
    p.add_argument("--train-len", type=positive_int, default=None, help="required without --model")
    p.add_argument("--base", type=float, default=None, help="rotary base (default: the model's, else 10000)")
    p.add_argument(
        "--length", type=positive_int, default=None, help="input length, for dynamic methods (default: train length)"
    )
    p.add_argument("--format", choices=("text", "json"), default="text")


models_options = methods_options


def positions_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="source file; the language comes from its extension unless --language is given")
    p.add_argument(
        "--language", default=None, help="python, java, c, cpp, javascript, typescript, tsx, go, rust or text"
    )
    p.add_argument(
        "--tokenizer", default="smollm2-135m", help="model name, model dir or tokenizer.json (default: smollm2-135m)"
    )
    p.add_argument("--granularity", choices=("function", "class"), default="function")
    p.add_argument("--levels", type=int, choices=(2, 3), default=2)
    p.add_argument("--format", choices=("text", "json"), default="text")


def task_sample_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("task")
    model_argument(p, default="smollm2-135m", positional=False)
    p.add_argument("--length", required=True, help="e.g. 2x, 4k, 4096")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=positive_int, default=1)
    p.add_argument("--format", choices=("text", "json"), default="text")
