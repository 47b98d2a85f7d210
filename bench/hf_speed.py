"""ropelab's model vs Hugging Face ``transformers`` on the same pretrained weights: prefill time,
decode speed, peak memory, and whether the outputs agree.

    python -m bench hf-speed [--model smollm2-135m] [--lengths 1024,4096,8192] [--new-tokens 32]

For every length, each implementation runs in its own process (fresh interpreter, so one's
allocations do not count against the other): the ropelab model is loaded with
``ropelab.load_model``; the transformers twin is ``ropelab.pretrained.hf_dir.to_hf_model`` of it
(``LlamaForCausalLM``, SDPA attention, float32), after which the ropelab copy is freed. Both read
the same real code (stdlib Python) and:

* **prefill**: one forward over the prompt with a KV cache, logits of the last position only
  (``logits_to_keep=1`` in transformers), timed;
* **decode**: ``--new-tokens`` greedy steps from that cache, timed, reported as tokens/s;
* ``--repeats`` times (default 2) in the same process, each from a fresh cache: the best prefill
  time and decode rate count (the least disturbed run), all of them are kept in the JSON;
* a 16-token warm-up forward first (it pages in the weights, which ropelab memory-maps from its
  checkpoint, and initialises kernels), so load costs are not counted as prefill;
* **peak memory**: the largest resident set size sampled every 5 ms during prefill + decode,
  minus the resident set before it (the model weights are not counted).

The parent checks equal outputs: the last-position logits of the prefill (max absolute
difference) and the greedy tokens (identical or not). Target: ropelab at least as fast as
transformers, with equal outputs.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

from bench.common import RssSampler, at_least, items

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
    model, tokenizer = load_model(args.model)
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

        def prefill():
            cache = model.new_cache(capacity=ids.shape[1] + args.new_tokens)  # as generate allocates it
            hidden = model.hidden_states(ids, cache=cache)
            return model.lm_head(hidden[:, -1]).float(), cache

        def step(token, cache):
            return model(token, cache=cache)[:, -1].float(), cache

    with torch.no_grad():  # warm-up: touches every weight page (ropelab maps the checkpoint lazily) and kernel
        warm = ids[:, :16]
        hf(warm) if args.impl == "transformers" else model(warm)
    prefill_times, decode_rates = [], []
    for repeat in range(args.repeats):  # fresh cache each time; memory and outputs from the first
        gc.collect()
        with torch.no_grad(), RssSampler() as memory:
            start = time.perf_counter()
            logits, cache = prefill()
            prefill_times.append(time.perf_counter() - start)
            if repeat == 0:
                first_logits = logits[0].clone()
            generated = []
            start = time.perf_counter()
            for _ in range(args.new_tokens):
                token = logits.argmax(-1, keepdim=True)
                generated.append(int(token))
                logits, cache = step(token, cache)
            decode_rates.append(args.new_tokens / (time.perf_counter() - start))
        if repeat == 0:
            peak, first_generated = memory.peak - memory.before, generated
        del cache, logits
    prefill_s = min(prefill_times)
    return {
        "impl": args.impl,
        "length": ids.shape[1],
        "prefill_s": prefill_s,
        "prefill_tokens_per_s": ids.shape[1] / prefill_s,
        "decode_tokens_per_s": max(decode_rates),
        "prefill_s_all": [round(t, 4) for t in prefill_times],
        "decode_tokens_per_s_all": [round(r, 3) for r in decode_rates],
        "peak_memory_mb": peak,
        "generated": first_generated,
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
        default=2,
        help="prefill + decode runs per process; the best time counts (default: 2)",
    )
    parser.add_argument("--threads", type=at_least(0), default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="bench/results/hf_speed.json")
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)  # worker mode
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)


def _compare(rows: dict[str, dict]) -> dict:
    import torch

    ours, theirs = rows["ropelab"], rows["transformers"]
    diff = (torch.tensor(ours["last_logits"]) - torch.tensor(theirs["last_logits"])).abs().max()
    return {
        "length": ours["length"],
        "prefill_speedup": theirs["prefill_s"] / ours["prefill_s"],
        "decode_speedup": ours["decode_tokens_per_s"] / theirs["decode_tokens_per_s"],
        "memory_ratio": ours["peak_memory_mb"] / max(theirs["peak_memory_mb"], 1e-9),
        "max_logit_diff": float(diff),
        "same_tokens": ours["generated"] == theirs["generated"],
    }


def format_table(results: list[dict], comparisons: list[dict]) -> str:
    lines = [
        "| tokens | impl | prefill s | prefill tok/s | decode tok/s | peak MB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['length']} | {r['impl']} | {r['prefill_s']:.2f} | {r['prefill_tokens_per_s']:.0f} "
            f"| {r['decode_tokens_per_s']:.1f} | {r['peak_memory_mb']:.0f} |"
        )
    lines += [
        "",
        "| tokens | prefill speed-up | decode speed-up | memory ratio | max logit diff | same greedy tokens |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c['length']} | {c['prefill_speedup']:.2f}x | {c['decode_speedup']:.2f}x | {c['memory_ratio']:.2f} "
            f"| {c['max_logit_diff']:.1e} | {'yes' if c['same_tokens'] else 'NO'} |"
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
    results, comparisons, errors = [], [], []
    cases = [(n, impl) for n in lengths for impl in IMPLEMENTATIONS]
    for n, impl in tqdm(cases, desc="hf-speed", unit="case", file=sys.stderr):
        common = ["--model", args.model, "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
        common += ["--repeats", str(args.repeats)]
        row = isolated("bench.hf_speed", ["--impl", impl, "--length", str(n), *common])
        if "error" in row:
            errors.append({"impl": impl, "length": n, "error": row["error"]})
            continue
        results.append(row)
    for n in lengths:
        rows = {r["impl"]: r for r in results if r["length"] == n}
        if len(rows) == 2:
            comparisons.append(_compare(rows))
    print(format_table(results, comparisons))
    for e in errors:
        print(f"error: {e['impl']} at {e['length']}: {e['error']}")
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
                "dtype": "float32",
            },
            "results": [{k: v for k, v in r.items() if k != "last_logits"} for r in results],
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
