"""Long-context loss of a real pretrained model under several position methods, in one run.

    python -m bench.long_context [--model smollm2-135m] [--methods rope,yarn:factor=2,...]
                                 [--tokens 16384] [--bucket 2048] [--out bench/results/long_context.json]

Text: the longest Python files of the running interpreter's standard library, whole files in a
fixed order (largest first), concatenated until ``--tokens`` tokens. One forward pass per method
scores every position (chunked LM head, ``Transformer.token_losses``); the per-token losses are
averaged over buckets of ``--bucket`` positions. Methods that read code structure (HiRoPE) get
the hierarchy of the same text from ``ropelab.code`` (tree-sitter), the others plain positions.

Every method runs in its own subprocess so its wall time and peak RSS are its own; the parent
collects the results into one JSON file with machine information and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import sysconfig
import time
from datetime import datetime, timezone
from pathlib import Path

DESCRIPTION = "long-context loss per position bucket of a real model under several methods (time, peak RSS)"
DEFAULT_METHODS = "rope,ntk:factor=2,yarn:factor=2,rerope,self-extend,hirope,hirope:split=auto"


def stdlib_code(min_chars: int) -> tuple[str, list[str]]:
    """Whole stdlib .py files, largest first, concatenated until ``min_chars`` characters."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((p for p in stdlib.glob("*.py") if p.is_file()), key=lambda p: (-p.stat().st_size, p.name))
    parts, names, total = [], [], 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text if text.endswith("\n") else text + "\n")
        names.append(path.name)
        total += len(text)
        if total >= min_chars:
            break
    return "".join(parts), names


def worker(args: argparse.Namespace) -> dict:
    import torch

    from ropelab.model.pretrained import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, method=args.method)
    load_seconds = time.perf_counter() - start
    text, files = stdlib_code(args.tokens * 6)
    ids = tokenizer.encode(text)[: args.tokens]
    positions = None
    hierarchy_seconds = 0.0
    if model.pe.uses_hierarchy:
        from ropelab.code import extract

        start = time.perf_counter()
        hierarchy = extract(text, tokenizer, language="python")
        hierarchy_seconds = time.perf_counter() - start
        if list(hierarchy.ids[: args.tokens]) != ids:
            raise SystemExit("hierarchy tokens differ from the tokenizer's")
        positions = hierarchy.positions()[: args.tokens][None]
        if model.pe.levels != positions.shape[-1]:
            positions = positions[..., : model.pe.levels]
    input_ids = torch.tensor([ids])
    start = time.perf_counter()
    with torch.no_grad():
        losses = model.token_losses(input_ids, positions=positions)[0]
    forward_seconds = time.perf_counter() - start
    buckets = []
    for lo in range(0, losses.numel(), args.bucket):
        part = losses[lo : lo + args.bucket]
        buckets.append({"start": lo, "end": lo + part.numel(), "mean_loss": float(part.mean())})
    return {
        "method": model.pe.spec,
        "tokens": len(ids),
        "files": files,
        "load_seconds": load_seconds,
        "hierarchy_seconds": hierarchy_seconds,
        "forward_seconds": forward_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mean_loss": float(losses.mean()),
        "buckets": buckets,
    }


def machine() -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or None,
    }


def render(results: list[dict], bucket: int) -> str:
    longest = max(results, key=lambda r: len(r["buckets"]))["buckets"]
    n = len(longest)
    heads = [f"{b['start'] / 1024:g}-{b['end'] / 1024:g}K" for b in longest]
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
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--bucket", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="bench/results/long_context.json")
    parser.add_argument("--method", help=argparse.SUPPRESS)  # worker mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.long_context", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    if args.method:
        print(json.dumps(worker(args)))
        return 0
    results = []
    for spec in [m.strip() for m in args.methods.split(",") if m.strip()]:
        command = [sys.executable, "-m", "bench.long_context", "--method", spec, "--model", args.model]
        command += ["--tokens", str(args.tokens), "--bucket", str(args.bucket), "--threads", str(args.threads)]
        print(f"[{spec}] running ...", file=sys.stderr, flush=True)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"[{spec}] failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"[{spec}] {result['forward_seconds']:.0f} s, peak RSS {result['peak_rss_mb']:.0f} MB, mean loss {result['mean_loss']:.3f}",
            file=sys.stderr,
        )
        results.append(result)
    if not results:
        return 1
    report = {
        "benchmark": "long_context",
        "model": args.model,
        "machine": machine(),
        "bucket": args.bucket,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(render(results, args.bucket))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
