"""Long-context loss of a real pretrained model under several position methods, in one run.

    python -m bench.long_context [--model smollm2-135m] [--methods rope,rerope,self-extend,hirope,window]
                                 [--tokens 32768] [--bucket 2048] [--out bench/results/long_context.json]

Text: the longest Python files of the running interpreter's standard library, whole files in a
fixed order (largest first), concatenated until ``--tokens`` tokens. One forward pass per method
scores every position (chunked LM head, ``Transformer.token_losses``); the per-token losses are
averaged over buckets of ``--bucket`` positions. Methods that read code structure (HiRoPE) get
the hierarchy of the same text from ``ropelab.hierarchy`` (tree-sitter), the others plain positions.

Every method runs in its own subprocess so its wall time and peak RSS are its own; the parent
collects the results into one JSON file with machine information and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.common import at_least, items

NAME = "long-context"
DESCRIPTION = "long-context loss per position bucket of a real model under several methods (time, peak RSS)"
#: rope, the windowed methods and the window reference (``eval.plan.REFERENCE``): the published table
DEFAULT_METHODS = "rope,rerope,self-extend,hirope,window"


def worker(args: argparse.Namespace) -> dict:
    import torch

    from bench.common import RssSampler, peak_rss_mb
    from ropelab.eval.documents import java_parts, python_parts
    from ropelab.eval.runner import REFERENCE, window_prefill
    from ropelab.eval.stats import block_means
    from ropelab.pretrained.registry import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    window = args.method == REFERENCE
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, method="rope" if window else args.method)
    load_seconds = time.perf_counter() - start
    found = (java_parts if args.language == "java" else python_parts)(args.tokens * 6, skip=args.skip)
    if found is None:
        raise SystemExit("no JDK sources (src.zip) installed; apt install openjdk-17-source")
    parts, files = found
    ids = tokenizer.encode("".join(parts))[: args.tokens]
    positions = None
    hierarchy_seconds = 0.0
    granularity = getattr(model.pe, "granularity", "function")
    if model.pe.uses_hierarchy and granularity != "chunk":  # chunk: the encoding's own fixed chunks
        from ropelab.hierarchy import extract_files

        start = time.perf_counter()
        # each file parsed on its own
        hierarchy = extract_files(parts, tokenizer, language=args.language, granularity=granularity)
        hierarchy_seconds = time.perf_counter() - start
        if list(hierarchy.ids[: args.tokens]) != ids:
            raise SystemExit("hierarchy tokens differ from the tokenizer's")
        positions = hierarchy.positions()[: args.tokens][None]
        if model.pe.levels != positions.shape[-1]:
            positions = positions[..., : model.pe.levels]
    input_ids = torch.tensor([ids])
    with torch.no_grad():  # warm-up: pages in the memory-mapped weights, initialises kernels
        model(input_ids[:, :16])
    with torch.no_grad(), RssSampler() as memory:
        start = time.perf_counter()
        if window:  # the sliding-window reference: the model's own RoPE over the last L tokens, 4 sinks
            from ropelab.pe.sliding import SlidingWindow

            own = model.pe
            hidden = window_prefill(model, own, SlidingWindow(own, model.config.train_len), ids, model.new_cache())
            losses = model.losses_from_hidden(hidden[None, :-1], input_ids[:, 1:])[0]
        else:
            losses = model.token_losses(input_ids, positions=positions)[0]
        forward_seconds = time.perf_counter() - start
    buckets = []
    for lo in range(0, losses.numel(), args.bucket):
        part = losses[lo : lo + args.bucket]
        buckets.append({"start": lo, "end": lo + part.numel(), "mean_loss": float(part.mean())})
    return {
        "method": REFERENCE if window else model.pe.spec,
        "tokens": len(ids),
        "train_len": model.config.train_len,
        "files": files,
        "load_seconds": load_seconds,
        "hierarchy_seconds": hierarchy_seconds,
        "forward_seconds": forward_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "forward_memory_mb": memory.peak - memory.before,  # growth of the resident set during the pass
        "mean_loss": float(losses.mean()),
        "buckets": buckets,
        # 128-token block means: the unit of the standard errors (blocks of two methods are paired)
        "blocks": [round(v, 5) for v in block_means(losses.tolist(), 0, losses.numel())],
    }


def bucket_label(bucket: dict) -> str:
    """``14-16K`` for positions 14336..16383 (the last bucket ends one short: entry t scores token t+1)."""
    return f"{bucket['start'] // 1024}-{-(-bucket['end'] // 1024)}K"


def render(results: list[dict], bucket: int) -> str:
    longest = max(results, key=lambda r: len(r["buckets"]))["buckets"]
    n = len(longest)
    heads = [bucket_label(b) for b in longest]
    lines = ["| method | " + " | ".join(heads) + " | mean | forward s | peak RSS MB |", "|---" * (n + 4) + "|"]
    for r in results:
        cells = [f"{b['mean_loss']:.3f}" for b in r["buckets"]]
        lines.append(
            f"| {r['method']} | "
            + " | ".join(cells)
            + f" | {r['mean_loss']:.3f} | {r['forward_seconds']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--tokens", type=at_least(1), default=32768, help="length of the scored pass (default: 32768)")
    parser.add_argument("--bucket", type=at_least(1), default=2048)
    parser.add_argument("--language", choices=("python", "java"), default="python", help="corpus (default: python)")
    parser.add_argument(
        "--skip", type=at_least(0), default=0, help="start after this many of the largest files (default: 0)"
    )
    parser.add_argument(
        "--scaling-lengths",
        default="4096,8192,16384",
        help="shorter passes for the time/memory scaling of --scaling-methods ('' for none; default: 4096,8192,16384)",
    )
    parser.add_argument("--scaling-methods", default=DEFAULT_METHODS)
    parser.add_argument("--threads", type=at_least(0), default=0)
    parser.add_argument("--out", default="bench/results/long_context.json")
    parser.add_argument("--method", help=argparse.SUPPRESS)  # worker mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.long_context", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def scaling_summary(rows: list[dict]) -> list[dict]:
    """Per method and length: time relative to rope at the same length, and how the forward pass's
    memory grows with length (exponent of ``memory ~ tokens^k`` between consecutive lengths:
    1 = linear, 2 = quadratic)."""
    import math

    rope = {r["tokens"]: r for r in rows if r["method"] == "rope"}
    summary = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["tokens"])
        for previous, row in zip([None, *mine], mine):
            ref = rope.get(row["tokens"])
            exponent = None
            if previous and previous["forward_memory_mb"] > 0 and row["forward_memory_mb"] > 0:
                exponent = math.log(row["forward_memory_mb"] / previous["forward_memory_mb"]) / math.log(
                    row["tokens"] / previous["tokens"]
                )
            summary.append(
                {
                    "method": method,
                    "tokens": row["tokens"],
                    "forward_seconds": row["forward_seconds"],
                    "time_vs_rope": row["forward_seconds"] / ref["forward_seconds"] if ref else None,
                    "forward_memory_mb": row["forward_memory_mb"],
                    "memory_exponent": exponent,
                }
            )
    return summary


def _finished(path: str, setting: dict, bucket: int, tokens: int) -> dict:
    """Passes already in ``path`` from a run with the same setting: ``{(spec, tokens): result}``."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if any(old.get(k) != v for k, v in setting.items()) or old.get("bucket") != bucket or old.get("tokens") != tokens:
        return {}
    done = {(r["spec"], r["requested"]): r for r in old.get("scaling_passes", [])}
    done.update({(r["spec"], tokens): r for r in old.get("results", [])})  # with their buckets
    return done


def run(args: argparse.Namespace) -> int:
    if args.method:
        print(json.dumps(worker(args)))
        return 0
    from tqdm import tqdm

    from bench.common import isolated, load_average, machine_info, write_json

    load_before = load_average()
    from ropelab.pe import split_specs

    lengths = items(args.scaling_lengths)
    scaling = split_specs(args.scaling_methods) if args.scaling_methods.strip() and lengths else []
    scaling_methods = set(scaling)
    cases = [(spec, args.tokens) for spec in split_specs(args.methods)]
    cases += [(spec, int(n)) for n in lengths for spec in scaling]
    common = ["--model", args.model, "--bucket", str(args.bucket), "--threads", str(args.threads)]
    setting = {"benchmark": "long_context", "model": args.model, "language": args.language, "skip": args.skip}
    done = _finished(args.out, setting, args.bucket, args.tokens)
    machine = {**machine_info(), "loadavg_before": load_before}
    results, scaling, errors = [], [], []
    for spec, tokens in tqdm(cases, desc="long-context", unit="pass", file=sys.stderr):
        result = done.get((spec, tokens))  # resumable: a pass already in --out is not run again
        if result is None:
            arguments = ["--method", spec, "--tokens", str(tokens), "--language", args.language]
            result = isolated("bench.long_context", [*arguments, "--skip", str(args.skip), *common])
        if "error" in result:
            errors.append({"method": spec, "tokens": tokens, "error": result["error"]})
            print(f"[{spec} {tokens}] failed: {result['error']}", file=sys.stderr)
        else:
            result["spec"] = spec
            if tokens == args.tokens:
                results.append(result)
            if spec in scaling_methods:
                copy = {k: v for k, v in result.items() if k not in ("buckets", "blocks")}
                scaling.append({**copy, "requested": tokens})
        report = {
            **setting,
            "machine": machine,
            "bucket": args.bucket,
            "tokens": args.tokens,
            "results": results,
            "scaling_passes": scaling,
            "scaling": scaling_summary(scaling),
            "errors": errors,
        }
        write_json(args.out, report)  # after every pass: an interrupted run keeps what it measured
    if not results:
        return 1
    print(render(results, args.bucket))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
