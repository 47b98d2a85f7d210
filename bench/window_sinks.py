"""Does the one-pass window reference need attention sinks? Loss beyond the train length of the
``window`` reference (``ropelab.pe.sliding``) with 0 and with 4 sink tokens, on the first document
of ``ropelab compare`` (SmolLM2-135M, 1.5x its train length).

    python -m bench window-sinks [--model smollm2-135m] [--sinks 0,4] [--out bench/results/window_sinks.json]

Each setting is one pass: the first ``L`` tokens with the model's own method (the window cuts
nothing there), then the rest with the sliding window over their KV cache -- exactly what the
``context`` task's ``window`` row computes. Losses are averaged over 128-token blocks beyond ``L``
(the needle lines' tokens not scored); the difference is paired by block.
"""

from __future__ import annotations

import argparse
import time

NAME = "window-sinks"
DESCRIPTION = "window reference with and without attention sinks: loss beyond the train length (SmolLM2)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sinks", default="0,4", help="comma-separated sink counts (default: 0,4)")
    parser.add_argument("--length", default="1.5x", help="document length (default: 1.5x the train length)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="bench/results/window_sinks.json")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from bench.common import items, machine_info, write_json
    from ropelab.core.lengths import parse_length
    from ropelab.eval import get_task
    from ropelab.eval.runner import window_prefill
    from ropelab.eval.stats import block_means, estimate, paired
    from ropelab.pe.sliding import SlidingWindow
    from ropelab.pretrained.registry import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    sinks = [int(x) for x in items(args.sinks)]
    model, tokenizer = load_model(args.model)
    L = model.config.train_len
    length = parse_length(args.length, L)
    sample = get_task("context").build(tokenizer, length, 1, 0, L)[0]
    ids = sample.prompt_ids
    skip = {t for n in sample.extra["needles"] for t in range(n["start"], n["end"])}
    own = model.pe
    blocks, rows = {}, []
    with torch.no_grad():
        for count in sinks:
            start = time.perf_counter()
            hidden = window_prefill(model, own, SlidingWindow(own, L, count), ids, model.new_cache())
            losses = model.losses_from_hidden(hidden[None, :-1], torch.tensor([ids[1:]]))[0].tolist()
            token = [None] + [None if t in skip else v for t, v in enumerate(losses, 1)]
            blocks[count] = block_means(token, L, len(token))
            est = estimate(blocks[count])
            rows.append({"sinks": count, "loss_beyond": est.mean, "se": est.se, "n_blocks": est.n,
                         "seconds": time.perf_counter() - start})  # fmt: skip
            print(f"sinks={count}: loss beyond L = {est.mean:.3f} ± {est.se:.3f} (n={est.n} blocks)")
    differences = []
    for count in sinks[1:]:
        diff = paired(blocks[count], blocks[sinks[0]])
        differences.append({"sinks": count, "minus_sinks": sinks[0], "diff": diff.mean, "se": diff.se, "n": diff.n})
        print(f"sinks={count} - sinks={sinks[0]}: {diff.mean:+.3f} ± {diff.se:.3f}")
    write_json(
        args.out,
        {
            "benchmark": "window-sinks",
            "model": args.model,
            "document": sample.extra["document"],
            "length": length,
            "train_len": L,
            "results": rows,
            "differences": differences,
            "machine": machine_info(),
        },
    )
    return 0
