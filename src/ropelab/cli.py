"""The ``ropelab`` command line.

    ropelab methods [--format json]
    ropelab describe SPEC --head-dim D --train-len L [--base B] [--length N] [--format json]

Bad input (an unknown method, a bad parameter, a length out of range) prints one ``error:`` line
and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from ropelab.errors import RopelabError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _param_doc(param) -> dict:
    return {
        "name": param.name,
        "type": param.type.__name__,
        "default": param.default,
        "allowed": param.allowed(),
        "help": param.help,
    }


def cmd_methods(args: argparse.Namespace) -> int:
    from ropelab.pe import methods

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


def describe(spec: str, head_dim: int, train_len: int, base: float, length: int | None) -> dict:
    """The per-frequency table of a method: angle, period and role of each frequency index."""
    from ropelab import pe
    from ropelab.pe.base import PEContext

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
    if not isinstance(encoding, pe.RotaryEncoding):
        result["note"] = f"{encoding.info.name} has no rotary frequencies ({encoding.info.family} method)"
        return result
    plan = encoding.plan(length or train_len)
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
    return result


def cmd_describe(args: argparse.Namespace) -> int:
    info = describe(args.spec, args.head_dim, args.train_len, args.base, args.length)
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
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ropelab", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("methods", help="list every position method with its parameters")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("describe", help="per-frequency angles, periods and roles of a method")
    p.add_argument("spec", help="method spec, e.g. hope or hope+yarn:factor=2")
    p.add_argument("--head-dim", type=_positive_int, required=True)
    p.add_argument("--train-len", type=_positive_int, required=True)
    p.add_argument("--base", type=float, default=10000.0, help="rotary base (default 10000)")
    p.add_argument(
        "--length", type=_positive_int, default=None, help="input length, for dynamic methods (default: train length)"
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_describe)
    return parser


def _version() -> str:
    from ropelab import __version__

    return f"ropelab {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except RopelabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
