"""``ropelab generate``: stream a continuation of a prompt under any method.

ropelab generate MODEL --prompt TEXT [--methods SPEC] [--max-new-tokens N] [--temperature T] [--no-echo]
ropelab generate MODEL --prompt-file long.py --methods yarn:factor=2
"""

from __future__ import annotations

import argparse
import sys

from ropelab.cli.common import device_options, methods_argument, model_argument, one_method, read_text_file
from ropelab.core.args import positive_int, thread_count
from ropelab.core.errors import RopelabError
from ropelab.model.device import resolve_placement
from ropelab.model.generate import check_prompt_length, check_sampling, default_prompt_limit, stream
from ropelab.pretrained.registry import load_model
from ropelab.pretrained.tokenizer import without_surrogates

#: ``ropelab generate`` reads at most this many bytes of prompt per allowed token before tokenizing
#: (no real text needs more), so a huge prompt is refused at once
PROMPT_BYTES_PER_TOKEN = 64


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream a continuation. Checked before the model loads: the sampling settings
    (:func:`ropelab.model.generate.check_sampling`); after: the prompt's length, at most
    ``--max-prompt-tokens`` tokens (default: :data:`ropelab.model.generate.PROMPT_LIMIT_FACTOR`
    times the model's training length) and at most :data:`PROMPT_BYTES_PER_TOKEN` bytes a token."""
    import torch

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_placement(args.device, args.dtype)  # before the model loads
    model, tokenizer = load_model(args.model, method=one_method(args.methods, "generate"), device=device, dtype=dtype)
    if tokenizer is None:
        raise RopelabError(f"{args.model}: has no tokenizer.json, so text cannot be encoded")
    limit = args.max_prompt_tokens or default_prompt_limit(model.config.train_len)
    max_bytes = limit * PROMPT_BYTES_PER_TOKEN
    prompt = args.prompt
    if args.prompt_file:
        prompt = read_text_file(args.prompt_file, max_bytes)
    prompt = without_surrogates(prompt)  # a lone surrogate from the command line neither encodes nor prints
    if len(prompt) > max_bytes or len(prompt.encode("utf-8")) > max_bytes:
        raise RopelabError(
            f"the prompt is more than {max_bytes} bytes, too long for the limit of {limit} tokens (--max-prompt-tokens)"
        )
    ids = tokenizer.encode(prompt)
    if not ids:
        raise RopelabError("the prompt is empty")
    check_prompt_length(len(ids), limit)
    if args.prompt_file:  # a file's text is not echoed: say where the continuation starts instead
        print(f"[{args.prompt_file}: {len(ids)} prompt tokens; the continuation follows]", file=sys.stderr, flush=True)
    elif not args.no_echo:
        print(prompt, end="", flush=True)
    generated: list[int] = []
    shown = ""
    for token in stream(
        model,
        torch.tensor([ids]),
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        eos_id=tokenizer.eos_id,
    ):
        if tokenizer.eos_id is not None and int(token[0]) == tokenizer.eos_id:
            break
        generated.append(int(token[0]))
        # decode the whole continuation so multi-byte characters split across tokens print once
        text = tokenizer.decode(generated)
        if not text.endswith("\ufffd"):
            print(text[len(shown) :], end="", flush=True)
            shown = text
    print(tokenizer.decode(generated)[len(shown) :], flush=True)
    return 0


def generate_options(p: argparse.ArgumentParser) -> None:
    model_argument(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text")
    source.add_argument("--prompt-file", help="read the prompt from a file (not echoed: only the continuation prints)")
    p.add_argument("--no-echo", action="store_true", help="print only the continuation, not the --prompt text")
    methods_argument(p, None, "the position method, one spec (default: the model's own)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: a number in (0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-prompt-tokens",
        type=positive_int,
        default=None,
        help="refuse a longer prompt (default: 4 x the model's training length)",
    )
    p.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads (1 to 1024)")
    p.add_argument(
        "--no-progress", action="store_true", help="accepted as on every command (this one shows no progress bar)"
    )
    device_options(p)
