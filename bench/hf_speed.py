"""ropelab's model vs Hugging Face ``transformers`` on the same pretrained weights: prefill time,
decode speed, peak memory, and whether the outputs agree.

    python -m bench hf-speed [--model smollm2-135m] [--lengths 1024,4096,8192] [--new-tokens 32]

For every length, each implementation runs in its own process (fresh interpreter, so one's
allocations do not count against the other): the ropelab model is loaded with
``ropelab.load_model``; the transformers twin is ``ropelab.pretrained.hf_dir.to_hf_model`` of it
(``LlamaForCausalLM``, SDPA attention, float32), after which the ropelab copy is freed. Both read
the same real code (stdlib Python) and:

* **prefill**: the prompt into a KV cache, logits of the last position only, timed: ropelab as
  ``generate`` does it (:func:`ropelab.model.generate.prefill`, 2048 tokens per pass, linear
  weights stored column-major by ``load_model``), transformers in one forward
  (``logits_to_keep=1``);
* **decode**: ``--new-tokens`` greedy steps from that cache, timed, reported as tokens/s;
* ``--repeats`` rounds (default 3): each round runs both implementations, one after the other,
  each in a fresh process, so that a drift of the machine's speed during the run falls on both;
  the median of the rounds counts, and the spread (min-max) is reported beside it;
* a 16-token warm-up forward first (it pages in the weights, which ropelab memory-maps from its
  checkpoint, and initialises kernels), so load costs are not counted as prefill;
* **peak memory**: the largest resident set size sampled every 5 ms during prefill + decode,
  minus the resident set before it (the model weights are not counted), measured after the
  allocator has returned its free pages to the system (``release_free_memory``): otherwise memory
  freed before the run (transformers' worker frees the ropelab copy it converted from) is reused
  unseen and the growth undercounts.

The parent checks equal outputs: the last-position logits of the prefill (max absolute
difference) and the greedy tokens (identical or not). Target: ropelab at least as fast as
transformers, with equal outputs.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

from bench.common import RssSampler, at_least, items, release_free_memory

NAME = "hf-speed"
DESCRIPTION = "ropelab vs transformers on the same weights: prefill s, decode tokens/s, peak memory, equal outputs"
IMPLEMENTATIONS = ("ropelab", "transformers")


def prompt_ids(tokenizer, length: int) -> list[int]:
    from ropelab.eval.documents import first_tokens, long_code

    text, _ = long_code(min_chars=length * 6)
    return first_tokens(tokenizer, text, length)


def worker(args: argparse.Namespace) -> dict:
    import torch

    from ropelab.pretrained.registry import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, method=args.method)
    ids = torch.tensor([prompt_ids(tokenizer, args.length)])
    if args.impl == "transformers":
        from ropelab.pretrained.hf_dir import to_hf_model

        hf = to_hf_model(model)
        del model
        gc.collect()

        def prefill():
            out = hf(ids, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1].float(), out.past_key_values

        import inspect

        # transformers >= 5.2x names the cache argument ``cache``; older versions ``past_key_values``
        cache_arg = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"

        def step(token, cache):
            out = hf(token, use_cache=True, **{cache_arg: cache})
            return out.logits[:, -1].float(), out.past_key_values

    else:
        from ropelab.model.generate import prefill as prefill_cache

        def prefill():
            cache = model.new_cache(capacity=ids.shape[1] + args.new_tokens)  # as generate allocates it
            return prefill_cache(model, ids, cache).float(), cache

        def step(token, cache):
            return model(token, cache=cache)[:, -1].float(), cache

    with torch.no_grad():  # warm-up: touches every weight page (ropelab maps the checkpoint lazily) and kernel
        warm = ids[:, :16]
        hf(warm) if args.impl == "transformers" else model(warm)
    release_free_memory()  # both libraries start from the memory they hold, nothing freed and reusable
    with torch.no_grad(), RssSampler() as memory:
        start = time.perf_counter()
        logits, cache = prefill()
        prefill_s = time.perf_counter() - start
        first_logits = logits[0].clone()
        generated = []
        start = time.perf_counter()
        for _ in range(args.new_tokens):
            token = logits.argmax(-1, keepdim=True)
            generated.append(int(token))
            logits, cache = step(token, cache)
        decode_s = time.perf_counter() - start
    return {
        "impl": args.impl,
        "method": args.method or "rope",
        "length": ids.shape[1],
        "prefill_s": prefill_s,
        "decode_tokens_per_s": args.new_tokens / decode_s,
        "peak_memory_mb": memory.peak - memory.before,
        "generated": generated,
        "last_logits": [round(float(x), 6) for x in first_logits],
        "threads": torch.get_num_threads(),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="smollm2-135m", help="a plain-RoPE Llama/Qwen2 model (default: smollm2-135m)"
    )
    parser.add_argument(
        "--lengths", default="1024,4096,8192", help="prompt lengths in tokens (default: 1024,4096,8192)"
    )
    parser.add_argument("--new-tokens", type=at_least(1), default=32, help="greedy decode steps (default: 32)")
    parser.add_argument(
        "--repeats",
        type=at_least(1),
        default=3,
        help="rounds, each running both implementations in fresh processes; the median counts (default: 3)",
    )
    parser.add_argument("--threads", type=at_least(0), default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="bench/results/hf_speed.json")
    parser.add_argument(
        "--methods",
        default="rope",
        help="ropelab's position methods to decode with, beside transformers' RoPE (default: rope; e.g. "
        "rope,rerope,self-extend,hirope): only rope is compared for equal outputs",
    )
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)  # worker mode
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)


#: what one worker run measures, summarised over the rounds
METRICS = ("prefill_s", "decode_tokens_per_s", "peak_memory_mb")


def summarise(runs: list[dict]) -> dict:
    """One implementation at one length over its rounds: the median of each metric, its range,
    and the rounds themselves."""
    import statistics

    row = {key: runs[0][key] for key in ("impl", "method", "length", "generated", "threads")}
    for metric in METRICS:
        values = [r[metric] for r in runs]
        row[metric] = statistics.median(values)
        row[f"{metric}_range"] = [min(values), max(values)]
    row["prefill_tokens_per_s"] = row["length"] / row["prefill_s"]
    row["rounds"] = [{metric: round(r[metric], 4) for metric in METRICS} for r in runs]
    row["same_tokens_every_round"] = all(r["generated"] == runs[0]["generated"] for r in runs)
    return row


def _compare(ours_runs: list[dict], theirs_runs: list[dict]) -> dict:
    """ratios of the medians, and the range of the ratios within each round (the two processes of
    a round ran one after the other, so they saw the same machine)."""
    import torch

    ours, theirs = summarise(ours_runs), summarise(theirs_runs)
    diff = (torch.tensor(ours_runs[0]["last_logits"]) - torch.tensor(theirs_runs[0]["last_logits"])).abs().max()
    paired = list(zip(ours_runs, theirs_runs))
    ratios = {
        "prefill_speedup": [t["prefill_s"] / o["prefill_s"] for o, t in paired],
        "decode_speedup": [o["decode_tokens_per_s"] / t["decode_tokens_per_s"] for o, t in paired],
        "memory_ratio": [o["peak_memory_mb"] / max(t["peak_memory_mb"], 1e-9) for o, t in paired],
    }
    return {
        "length": ours["length"],
        "prefill_speedup": theirs["prefill_s"] / ours["prefill_s"],
        "decode_speedup": ours["decode_tokens_per_s"] / theirs["decode_tokens_per_s"],
        "memory_ratio": ours["peak_memory_mb"] / max(theirs["peak_memory_mb"], 1e-9),
        **{f"{name}_rounds": [min(values), max(values)] for name, values in ratios.items()},
        "rounds": len(paired),
        "max_logit_diff": float(diff),
        "same_tokens": all(o["generated"] == t["generated"] for o, t in paired),
    }


def _spread(row: dict, metric: str, digits: int) -> str:
    low, high = row[f"{metric}_range"]
    return f"{row[metric]:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def format_table(results: list[dict], comparisons: list[dict]) -> str:
    lines = [
        "| tokens | impl | method | prefill s | decode tok/s | peak MB |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['length']} | {r['impl']} | {r['method']} | {_spread(r, 'prefill_s', 2)} | {_spread(r, 'decode_tokens_per_s', 1)} "
            f"| {_spread(r, 'peak_memory_mb', 0)} |"
        )
    lines += [
        "",
        "| tokens | prefill speed-up | decode speed-up | memory ratio | max logit diff | same greedy tokens |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for c in comparisons:
        cells = [
            f"{c[name]:.2f}{unit} ({c[name + '_rounds'][0]:.2f}-{c[name + '_rounds'][1]:.2f})"
            for name, unit in (("prefill_speedup", "x"), ("decode_speedup", "x"), ("memory_ratio", ""))
        ]
        lines.append(
            f"| {c['length']} | {' | '.join(cells)} | {c['max_logit_diff']:.1e} | {'yes' if c['same_tokens'] else 'NO'} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.impl:
        import json

        print(json.dumps(worker(args)))
        return 0
    from tqdm import tqdm

    from bench.common import isolated, load_average, machine_info, write_json
    from ropelab.core.errors import RopelabError

    try:
        lengths = [int(x) for x in items(args.lengths)]
    except ValueError:
        raise RopelabError(f"--lengths expects comma-separated token counts, got {args.lengths!r}") from None
    load_before = load_average()
    methods = items(args.methods)
    if "rope" not in methods:
        methods = ["rope", *methods]  # the row compared with transformers
    runs: dict[tuple[int, str, str], list[dict]] = {}
    errors = []
    kinds = [("transformers", "rope")] + [("ropelab", m) for m in methods]
    cases = [(n, impl, m) for n in lengths for _ in range(args.repeats) for impl, m in kinds]
    for n, impl, method in tqdm(cases, desc="hf-speed", unit="run", file=sys.stderr):
        common = ["--model", args.model, "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
        if impl == "ropelab" and method != "rope":
            common += ["--method", method]
        row = isolated("bench.hf_speed", ["--impl", impl, "--length", str(n), *common])
        if "error" in row:
            errors.append({"impl": impl, "method": method, "length": n, "error": row["error"]})
            continue
        runs.setdefault((n, impl, method), []).append(row)
    results = [summarise(found) for found in runs.values()]
    comparisons = []
    for n in lengths:
        ours, theirs = runs.get((n, "ropelab", "rope"), []), runs.get((n, "transformers", "rope"), [])
        if ours and len(ours) == len(theirs):
            comparisons.append(_compare(ours, theirs))
    print(format_table(results, comparisons))
    for e in errors:
        print(f"error: {e['impl']} {e['method']} at {e['length']}: {e['error']}")
    write_json(
        args.out,
        {
            "benchmark": "hf-speed",
            "machine": {**machine_info(), "loadavg_before": load_before},
            "settings": {
                "model": args.model,
                "lengths": lengths,
                "new_tokens": args.new_tokens,
                "repeats": args.repeats,
                "methods": methods,
                "dtype": "float32",
            },
            "results": results,
            "comparisons": comparisons,
            "errors": errors,
        },
    )
    print(f"wrote {args.out}")
    return 0 if not errors else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hf_speed", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
