"""Training throughput of ``ropelab.train`` and model FLOP utilisation (MFU) against this
machine's fp32 matmul peak, measured in the same run.

    python -m bench train-speed [--configs small,medium] [--steps 12] [--batch 8] [--pe rope]

For each named model config: a real ``ropelab.train.train`` run (default corpus and tokenizer,
AdamW, fp32 on CPU) of ``--steps`` optimizer steps; the first ``--warmup-steps`` are not timed
(data loading, allocator warm-up). Step times come from the trainer's per-step callback.

Model FLOPs per token follow the PaLM appendix B count: ``6 * N + 12 * n_layers * dim * T``
(forward + backward), where ``N`` counts the parameters that take part in matmuls (every
weight matrix, the LM head included; the embedding lookup is not a matmul) and the second term
is attention's score and value products at sequence length ``T``. MFU = model FLOPs per second /
the best fp32 ``2048 x 2048`` matmul rate measured just before (``bench.common.matmul_peak_gflops``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

NAME = "train-speed"
DESCRIPTION = "training tokens/s of ropelab.train and MFU vs the measured fp32 matmul peak"


def model_flops_per_token(model, seq_len: int) -> float:
    config = model.config
    # named_parameters() lists a tied embedding once: as the LM head it is a matmul, so it counts
    matmul_params = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    if not config.tie_embeddings:
        matmul_params -= model.embed_tokens.weight.numel()  # an untied embedding is only a lookup
    return 6 * matmul_params + 12 * config.n_layers * config.n_heads * config.head_dim * seq_len


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", default="small,medium", help="named model configs (default: small,medium)")
    parser.add_argument("--pe", default="rope", help="position method (default: rope)")
    parser.add_argument("--steps", type=int, default=14, help="optimizer steps per config (default: 14)")
    parser.add_argument("--warmup-steps", type=int, default=4, help="untimed first steps (default: 4)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (default: 8)")
    parser.add_argument("--out", default="bench/results/train_speed.json")


def run(args: argparse.Namespace) -> int:
    import torch

    from bench.common import items, load_average, machine_info, matmul_peak_gflops, write_json
    from ropelab.core.errors import RopelabError
    from ropelab.pretrained.registry import load_model
    from ropelab.train.config import TrainConfig
    from ropelab.train.trainer import train

    if args.steps <= args.warmup_steps:
        raise RopelabError("--steps must exceed --warmup-steps")
    load_before = load_average()
    peak = matmul_peak_gflops()
    results = []
    for name in items(args.configs):
        stamps: list[float] = []
        config = TrainConfig(
            pe=args.pe,
            model_config=name,
            steps=args.steps,
            batch_size=args.batch,
            checkpoint_every=args.steps,
            eval_every=args.steps,
            val_sequences=args.batch,
            log_every=1,
        )
        with tempfile.TemporaryDirectory() as out:
            print(f"[{name}] training {args.steps} steps ...", file=sys.stderr, flush=True)
            result = train(
                config, out, progress=False, on_step=lambda *_, stamps=stamps: stamps.append(time.perf_counter())
            )
            model, _ = load_model(str(result.checkpoint))
        seq_len = model.config.train_len
        step_seconds = [b - a for a, b in zip(stamps[args.warmup_steps :], stamps[args.warmup_steps + 1 :])]
        if not step_seconds:
            raise RopelabError("no timed steps; raise --steps")
        # the last step also writes a checkpoint and runs validation: the median ignores it
        seconds = statistics.median(step_seconds)
        tokens_per_s = args.batch * seq_len / seconds
        flops = model_flops_per_token(model, seq_len)
        results.append(
            {
                "config": name,
                "pe": args.pe,
                "parameters": model.num_parameters,
                "seq_len": seq_len,
                "batch": args.batch,
                "step_seconds": seconds,
                "tokens_per_s": tokens_per_s,
                "model_flops_per_token": flops,
                "model_gflops": tokens_per_s * flops / 1e9,
                "mfu": tokens_per_s * flops / 1e9 / peak,
                "timed_steps": len(step_seconds),
            }
        )
        r = results[-1]
        print(
            f"[{name}] {r['parameters'] / 1e6:.1f}M params, T={seq_len}: {tokens_per_s:,.0f} tokens/s, "
            f"{r['model_gflops']:.1f} GFLOP/s = {100 * r['mfu']:.0f}% of the {peak:.0f} GFLOP/s matmul peak"
        )
    write_json(
        args.out,
        {
            "benchmark": "train-speed",
            "machine": {**machine_info(), "loadavg_before": load_before},
            "matmul_peak_gflops": peak,
            "settings": {"configs": args.configs, "pe": args.pe, "steps": args.steps, "batch": args.batch},
            "torch_threads": torch.get_num_threads(),
            "results": results,
        },
    )
    print(f"wrote {args.out}")
    return 0
