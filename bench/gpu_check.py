"""GPU readiness check: does every method give the CPU's numbers on a GPU, and what does a long
prefill cost there?

``python -m bench gpu-check`` on a CUDA machine (one unattended run, about 3-5 minutes on an
H100/H200; ``--budget-minutes`` caps it at 7.5 by default):

1. **parity, tiny model** -- every registered method (windowed ones with a 16-token window, plus
   the sliding-window reference) on a tiny random model (train length 32), a batch of two 160-token
   rows, the second left-padded (a prefill of 156 tokens: long enough for windowed methods to run
   their FlexAttention kernel on CUDA), then four cached decode steps: the device's logits against the
   CPU's float32 logits, in float32 (max |diff| <= 1e-4 x max(1, max |logit|)) and in bfloat16
   (<= 2e-2 x max(1, max |logit|): bf16 keeps 8 significant bits; measured on the CPU, bf16 vs
   fp32 is 2.8-3.4e-3 of the logit scale on this model, see ``tests/test_device_dtype.py``);
2. **parity, SmolLM2-135M** (when installed) -- the parameter-free methods on 2048 tokens of
   real code (windows of 512): float32 as above; bfloat16 by what a user sees -- the mean loss
   within 0.02 nats of the CPU's float32 loss, top-1 agreement >= 0.9 and mean |per-token NLL
   difference| <= 0.1 nats (bf16 vs fp32 on the CPU, same input: loss -0.001 to +0.003 nats,
   top-1 agreement 0.96-0.98, 0.03-0.05 nats per token -- bf16's rounding of weights and
   activations, which ``transformers`` has too; max |logit diff| is 4-8 % of the largest logit);
3. **prefill** -- SmolLM2 time and peak device memory at 16K and 32K tokens (bfloat16) for
   ``rope``, ``yarn``, ``ntk``, ``rerope``, ``self-extend``, ``hirope`` and the ``window``
   reference: the final hidden states of one pass plus the last token's logits (no KV cache,
   except ``window``, which runs as ``ropelab compare`` runs it: the first L tokens with the own
   method, the rest from its cache). HiRoPE uses its fixed-chunk positions (the cost does not
   depend on the position values). ``rerope@chunked`` and ``hirope@chunked`` time the windowed
   methods with the chunked kernel instead of FlexAttention (``window_attention.KERNEL``). A case
   that runs out of memory is recorded as such.

Results go to ``bench/results/gpu_check.json`` with the device's name, rewritten after each
section. The exit status is 1 when a parity check fails, else 0. Without CUDA it prints one line
and exits 0; ``--device cpu --model tiny --lengths 128`` runs the same logic on the CPU (tests).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from pathlib import Path

import torch

from bench.common import RssSampler, items, machine_info, write_json
from ropelab import ModelConfig, Transformer
from ropelab.core.errors import RopelabError
from ropelab.core.lengths import parse_length
from ropelab.model import window_attention
from ropelab.pe import methods
from ropelab.pe.sliding import SlidingWindow

NAME = "gpu-check"
DESCRIPTION = "CUDA vs CPU parity of every method (tiny model, SmolLM2) and SmolLM2 prefill time/memory at 16K/32K"

#: the sliding-window reference (the model's own RoPE, attention limited to a window plus sinks)
REFERENCE = "window"
TIMING_METHODS = (
    "rope",
    "yarn:factor=2",
    "ntk:factor=2",
    "rerope",
    "self-extend",
    "hirope",
    REFERENCE,
    "rerope@chunked",
    "hirope@chunked",
)
#: max |device - cpu| allowed, as a fraction of max(1, max |cpu logit|)
FP32_TOL = 1e-4
BF16_TOL = 2e-2
#: bf16 on a real model: mean-loss difference (nats), top-1 agreement, mean |per-token NLL difference|
BF16_LOSS_TOL, BF16_TOP1, BF16_NLL_TOL = 0.02, 0.9, 0.1
TINY_TRAIN, TINY_LENGTH, TINY_WINDOW, TINY_PAD, DECODE_STEPS = 32, 160, 16, 10, 4
MODEL_LENGTH, MODEL_WINDOW = 2048, 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to test this script")
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="the real model of parts 2-3 (default smollm2-135m; 'tiny': a random tiny model, for tests)",
    )
    parser.add_argument(
        "--lengths", type=items, default=["16384", "32768"], help="prefill lengths in tokens (default 16384,32768)"
    )
    parser.add_argument(
        "--methods",
        type=items,
        default=list(TIMING_METHODS),
        help=f"prefill methods (default {','.join(TIMING_METHODS)})",
    )
    parser.add_argument(
        "--parity-methods", type=items, default=None, help="tiny-model parity specs (default: every method)"
    )
    parser.add_argument("--timing-dtype", default="bfloat16", help="dtype of the prefill part (default bfloat16)")
    parser.add_argument("--repeats", type=int, default=2, help="timed prefills per case; the fastest counts")
    parser.add_argument("--budget-minutes", type=float, default=7.5, help="skip what is left after this long")
    parser.add_argument("--out", default=None, help="JSON (default bench/results/gpu_check.json; _cpu on the CPU)")


# -- methods and comparisons ------------------------------------------------------------------------------------


def tiny_specs(window: int = TINY_WINDOW) -> list[str]:
    """Every registered method, windowed ones with a short window, and the window reference."""
    specs = []
    for info in methods():
        if info.kind == "window":
            extra = {"self-extend": ",group=4", "hirope": ",chunk=8"}.get(info.name, "")
            specs.append(f"{info.name}:window={window}{extra}")
        elif info.name == "learned":
            specs.append(f"learned:max_len={4 * TINY_LENGTH}")
        else:
            specs.append(info.name)
    return [*specs, f"rerope:window={window},logn=true", REFERENCE]


def pretrained_specs(window: int = MODEL_WINDOW) -> list[str]:
    """The parameter-free methods a pretrained RoPE model runs sensibly. ALiBi is left to the tiny
    model: SmolLM2 under it is far out of distribution (loss 7.1 instead of 2.3) and numerically
    chaotic -- its bf16 and fp32 losses differ by 0.2 nats per token on the CPU too (0.04 for RoPE),
    whatever precision the bias has."""
    return [
        "rope",
        "pi:factor=2",
        "ntk:factor=2",
        "dynamic-ntk:factor=2",
        "yarn:factor=2",
        "hope",
        "nope",
        f"rerope:window={window}",
        f"self-extend:window={window},group=4",
        f"hirope:window={window}",
        REFERENCE,
    ]


def set_method(model: Transformer, spec: str, window: int) -> None:
    """Switch ``model`` to ``spec``; ``window`` is the sliding-window reference around RoPE."""
    if spec == REFERENCE:
        model.with_method("rope")
        model.pe = SlidingWindow(model.pe, window)
    else:
        model.with_method(spec)


def compare(reference: torch.Tensor, output: torch.Tensor, targets: torch.Tensor | None = None) -> dict:
    """How far ``output`` logits are from ``reference`` (both ``[B, T, V]``, compared in float32 on the CPU)."""
    reference, output = reference.float().cpu(), output.float().cpu()
    diff = (output - reference).abs()
    scale = float(reference.abs().max())
    row = {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "scale": scale,
        "relative": float(diff.max()) / max(1.0, scale),
        "top1_agree": float((output.argmax(-1) == reference.argmax(-1)).float().mean()),
        "finite": bool(torch.isfinite(output).all()),
    }
    if targets is not None:
        targets = targets.cpu()
        nll_ref = -reference[:, :-1].log_softmax(-1).gather(-1, targets[:, 1:, None])[..., 0]
        nll_out = -output[:, :-1].log_softmax(-1).gather(-1, targets[:, 1:, None])[..., 0]
        row["loss"] = float(nll_ref.mean())
        row["loss_diff"] = float(nll_out.mean() - nll_ref.mean())
        row["nll_abs_diff"] = float((nll_out - nll_ref).abs().mean())
    return row


def verdict(row: dict, dtype: str, real_model: bool) -> bool:
    """Whether a parity row passes (see the module docstring for the tolerances and why)."""
    if not row["finite"]:
        return False
    if dtype == "float32":
        return row["relative"] <= FP32_TOL
    if real_model:
        return (
            abs(row["loss_diff"]) <= BF16_LOSS_TOL
            and row["top1_agree"] >= BF16_TOP1
            and row["nll_abs_diff"] <= BF16_NLL_TOL
        )
    return row["relative"] <= BF16_TOL


# -- parity -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def _tiny_logits(model: Transformer, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Prefill of a left-padded batch, then ``DECODE_STEPS`` cached single-token steps: logits ``[B, T, V]``."""
    device = model.device
    ids, mask = ids.to(device), mask.to(device)
    prompt = ids.shape[1] - DECODE_STEPS
    cache = model.new_cache()
    pieces = [model(ids[:, :prompt], cache=cache, attention_mask=mask[:, :prompt])]
    pieces += [model(ids[:, t : t + 1], cache=cache) for t in range(prompt, ids.shape[1])]
    logits = torch.cat(pieces, dim=1).float()
    return logits.masked_fill(~mask.bool()[..., None], 0.0).cpu()  # padding outputs mean nothing


def parity_tiny(device: torch.device, log, specs: list[str] | None = None) -> list[dict]:
    """Every method (or ``specs``) on a tiny random model: the device's float32 and bfloat16 logits vs
    the CPU's float32."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 97, (2, TINY_LENGTH), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :TINY_PAD] = 0
    for spec in specs or tiny_specs():
        torch.manual_seed(0)
        base = "rope" if spec == REFERENCE else spec
        model = Transformer(ModelConfig.from_name("tiny", pe=base, vocab_size=97, train_len=TINY_TRAIN)).eval()
        with torch.no_grad():  # sharper attention, so positions matter
            for layer in model.layers:
                layer.self_attn.q_proj.weight.mul_(4)
        if spec == REFERENCE:
            set_method(model, spec, TINY_WINDOW)
        try:
            reference = _tiny_logits(model, ids, mask)
            for dtype in (torch.float32, torch.bfloat16):
                moved = copy.deepcopy(model).to(device=device, dtype=dtype)
                row = {
                    "method": spec,
                    "dtype": str(dtype).removeprefix("torch."),
                    **compare(reference, _tiny_logits(moved, ids, mask)),
                }
                row["passed"] = verdict(row, row["dtype"], real_model=False)
                rows.append(row)
        except (RuntimeError, RopelabError) as error:
            rows.append({"method": spec, "error": _short(error), "passed": False})
        last = rows[-1]
        log(f"parity tiny {spec:32s} " + ("ERROR " + last["error"] if "error" in last else _describe(rows[-2:])))
    return rows


@torch.no_grad()
def parity_model(model: Transformer, ids: torch.Tensor, device: torch.device, log) -> list[dict]:
    """The parameter-free methods on a real model: device float32 and bfloat16 vs CPU float32 logits."""
    rows = []
    copies = {dtype: copy.deepcopy(model).to(device=device, dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    for spec in pretrained_specs():
        try:
            set_method(model, spec, MODEL_WINDOW)
            reference = model(ids).float()
            for dtype, moved in copies.items():
                set_method(moved, spec, MODEL_WINDOW)
                name = str(dtype).removeprefix("torch.")
                row = {"method": spec, "dtype": name, **compare(reference, moved(ids), ids)}
                row["passed"] = verdict(row, name, real_model=True)
                rows.append(row)
        except (RuntimeError, RopelabError) as error:
            rows.append({"method": spec, "error": _short(error), "passed": False})
        last = rows[-1]
        log(f"parity model {spec:32s} " + ("ERROR " + last["error"] if "error" in last else _describe(rows[-2:])))
    del copies
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _describe(rows: list[dict]) -> str:
    parts = []
    for row in rows:
        text = f"{row['dtype']} rel {row['relative']:.1e}"
        if "loss_diff" in row:
            text += f" loss {row['loss_diff']:+.4f} top1 {row['top1_agree']:.3f}"
        parts.append(text + ("" if row["passed"] else " FAIL"))
    return "; ".join(parts)


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"


# -- prefill time and memory ------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def prefill_once(model: Transformer, ids: torch.Tensor, spec: str) -> tuple[float, float, float | None]:
    """One prefill: (seconds, peak memory in GB beyond what was allocated before it, the whole
    device's peak in GB or None). On the CPU the memory is the process's resident set size."""
    from ropelab.eval.runner import window_prefill

    device = model.device
    own = model.pe
    _sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    with RssSampler() if device.type == "cpu" else contextlib.nullcontext() as sampler:
        start = time.perf_counter()
        if spec == REFERENCE:
            sliding = SlidingWindow(own, model.config.train_len)
            hidden = window_prefill(model, own, sliding, ids[0].tolist(), model.new_cache())[None]
        else:
            hidden = model.hidden_states(ids)
        model.lm_head(hidden[:, -1:]).float()
        _sync(device)
        seconds = time.perf_counter() - start
    if device.type == "cuda":
        total = torch.cuda.max_memory_allocated(device)
        return seconds, (total - before) / 2**30, total / 2**30
    if sampler is not None:
        return seconds, (sampler.peak - sampler.before) / 1024, None
    return seconds, 0.0, None


def prefill(model: Transformer, tokens: list[int], lengths: list[int], specs: list[str], repeats: int, deadline, log):
    """Time and peak memory of each method at each length (the fastest of ``repeats`` passes)."""
    rows = []
    device = model.device
    for label in specs:
        spec, _, kernel = label.partition("@")  # "rerope@chunked": the windowed kernel to use
        for length in lengths:
            row: dict = {"method": label, "length": length}
            rows.append(row)
            if time.monotonic() > deadline:
                row["skipped"] = "time budget spent"
                continue
            ids = torch.tensor([tokens[:length]], device=device)
            try:
                set_method(model, "rope" if spec == REFERENCE else spec, model.config.train_len)
                window_attention.KERNEL = kernel or "auto"
                # warm-up at full length: kernels, allocator, and FlexAttention's compile for this shape
                prefill_once(model, ids, spec)
                runs = [prefill_once(model, ids, spec) for _ in range(max(1, repeats))]
                seconds = min(run[0] for run in runs)
                row.update(
                    seconds=round(seconds, 4),
                    tokens_per_s=round(length / seconds, 1),
                    peak_gb=round(max(run[1] for run in runs), 4),
                )
                if runs[0][2] is not None:
                    row["device_peak_gb"] = round(max(run[2] for run in runs), 4)
            except torch.cuda.OutOfMemoryError as error:
                row["error"] = "out of memory: " + _short(error)
            except (RuntimeError, RopelabError) as error:
                row["error"] = _short(error)
            finally:
                window_attention.KERNEL = "auto"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            result = row.get("error") or (
                f"{row['seconds']:.3f} s, peak +{row['peak_gb']:.2f} GB" if "seconds" in row else ""
            )
            log(f"prefill {label:16s} {length:>6} tokens: {result}")
    return rows


# -- the run ----------------------------------------------------------------------------------------------------


def _device_info(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"device": str(device), "device_name": "cpu"}
    props = torch.cuda.get_device_properties(device)
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device),
        "capability": list(torch.cuda.get_device_capability(device)),
        "device_memory_gb": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "bf16_supported": torch.cuda.is_bf16_supported(),
    }


def _real_model(name: str, log):
    """(model on the CPU in float32, its tokens of real code) or (None, reason)."""
    if name == "tiny":
        torch.manual_seed(0)
        model = Transformer(ModelConfig.from_name("tiny", vocab_size=97, train_len=64)).eval()
        generator = torch.Generator().manual_seed(1)
        return model, torch.randint(0, 97, (1 << 16,), generator=generator).tolist()
    from ropelab.eval.documents import long_code
    from ropelab.pretrained.registry import load_model

    try:
        model, tokenizer = load_model(name)
    except RopelabError as error:
        return None, str(error)
    if tokenizer is None:
        return None, f"{name} has no tokenizer"
    log(f"{name}: loaded; tokenizing real code")
    text, _ = long_code(8 * 32768)
    return model, tokenizer.encode(text)


def run(args: argparse.Namespace) -> int:
    from ropelab.model.device import dtype_name, resolve_device, resolve_dtype

    requested = str(args.device).strip().lower()
    if requested.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu-check: CUDA is not available here (torch {torch.__version__}); nothing measured")
        return 0
    device = resolve_device(requested)
    timing_dtype = resolve_dtype(args.timing_dtype)
    lengths = [parse_length(x, 8192) for x in args.lengths]  # 16k, 32768, or 2x of SmolLM2's 8192
    out = Path(
        args.out or ("bench/results/gpu_check.json" if device.type == "cuda" else "bench/results/gpu_check_cpu.json")
    )
    if device.type == "cuda":  # true float32 on the GPU: no TF32 matmuls
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    start = time.monotonic()
    deadline = start + 60 * args.budget_minutes

    def log(message: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {message}", flush=True)

    result: dict = {
        "benchmark": NAME,
        **_device_info(device),
        "torch": torch.__version__,
        "machine": machine_info(),
        "settings": {
            "model": args.model,
            "lengths": lengths,
            "methods": args.methods,
            "timing_dtype": dtype_name(timing_dtype),
            "repeats": args.repeats,
            "tiny": {"train_len": TINY_TRAIN, "length": TINY_LENGTH, "window": TINY_WINDOW, "padded": TINY_PAD},
            "model_parity": {"length": MODEL_LENGTH, "window": MODEL_WINDOW},
        },
        "tolerances": {
            "fp32_relative": FP32_TOL,
            "bf16_relative_tiny": BF16_TOL,
            "bf16_loss_nats": BF16_LOSS_TOL,
            "bf16_top1": BF16_TOP1,
            "bf16_nll_nats": BF16_NLL_TOL,
        },
    }
    log(f"gpu-check on {result['device_name']} ({device}); writing {out}")
    result["parity"] = {"tiny": parity_tiny(device, log, args.parity_methods)}
    write_json(out, result)

    model, tokens = _real_model(args.model, log)
    if model is None:
        result["parity"][args.model] = {"skipped": tokens}
        result["prefill"] = {"skipped": tokens}
        log(f"{args.model}: skipped ({tokens})")
    else:
        if args.model != "tiny":
            ids = torch.tensor([tokens[:MODEL_LENGTH]])
            result["parity"][args.model] = parity_model(model, ids, device, log)
            write_json(out, result)
        timed = copy.deepcopy(model).to(device=device, dtype=timing_dtype)
        del model
        usable = [n for n in lengths if n <= len(tokens)]
        result["prefill"] = prefill(timed, tokens, usable, args.methods, args.repeats, deadline, log)
    # FlexAttention compile failures (windowed methods then ran chunked): none expected
    result["window_kernel_failures"] = list(window_attention._FLEX_FAILED)
    rows = [row for group in result["parity"].values() if isinstance(group, list) for row in group]
    failed = [f"{row['method']} ({row.get('dtype', 'error')})" for row in rows if not row["passed"]]
    result["passed"] = not failed
    result["failed"] = failed
    result["seconds"] = round(time.monotonic() - start, 1)
    write_json(out, result)
    log(f"parity: {len(rows) - len(failed)}/{len(rows)} passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    log(f"written {out}")
    return 1 if failed else 0
