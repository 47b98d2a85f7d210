"""Training (forward+backward) and inference (forward) speed of every position method, relative to RoPE.

Every method gets its own model, built once from the same seed and fed the same random tokens
(fp32, CPU, train mode; the loss is next-token cross-entropy). After a warm-up, the methods are
timed round-robin (each round starts one method later), so slow drift on a shared machine hits all
of them alike; the median of the rounds is reported. A method whose step raises (e.g. one that
cannot be trained) is reported with its error instead of a time, and the run goes on.

After the timed rounds, one more untimed step per method and phase measures its peak memory: the
highest resident set size during the step (Linux ``/proc/self/clear_refs``, which resets the
process's high-water mark) and its growth over the resident size before the step.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import ropelab
from bench.common import at_least, items, load_average, machine_info, write_json
from ropelab.core.errors import RopelabError
from ropelab.model.bias_attention import chunk_length
from ropelab.pe import methods, parse_spec

NAME = "pe-speed"
DESCRIPTION = "forward+backward and forward-only time of every position method, as a ratio to rope"
REFERENCE = "rope"
#: Allowed fwd+bwd slowdown vs rope per method family; families not listed have no target.
TARGETS: dict[str, float] = {"rope": 1.10, "scaling": 1.10, "bias": 2.0}
#: Allowed forward-only (inference) slowdown vs rope, used when only ``fwd`` is measured: bias
#: methods within 1.5x, windowed ones (ReRoPE, Self-Extend, HiRoPE) within 1.2x.
INFERENCE_TARGETS: dict[str, float] = {"rope": 1.10, "scaling": 1.10, "bias": 1.5, "window": 1.2, "hirope": 1.2}
#: Bias methods at inference must also stay under this peak resident memory (MB) -- 3 GB at 16K.
BIAS_PEAK_MB = 3 * 1024
#: Beyond this length the bias methods' inference target is the memory limit alone: FIRE's bias
#: depends on the query position as well as the distance (its normalisation), so it costs an MLP
#: evaluation per query-key pair and its ratio to rope grows with length.
BIAS_SPEED_MAX_LEN = 4096
#: An interquartile ratio (Q3/Q1 of a method's samples) above this means the machine was busy.
NOISY = 1.3

Step = Callable[[ropelab.Transformer, torch.Tensor], None]


def train_step(model: ropelab.Transformer, tokens: torch.Tensor) -> None:
    """Next-token cross-entropy, forward and backward."""
    model.zero_grad(set_to_none=True)
    logits = model(tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()


def infer_step(model: ropelab.Transformer, tokens: torch.Tensor) -> None:
    """Forward only, without autograd."""
    with torch.no_grad():
        model(tokens[:, :-1])


#: What is timed, by the name used in the JSON.
PHASES: dict[str, Step] = {"fwd_bwd": train_step, "fwd": infer_step}


@dataclass
class Case:
    """One method under test: its model, its timings so far (seconds) and any phase that failed."""

    spec: str
    family: str
    model: ropelab.Transformer
    samples: dict[str, list[float]] = field(default_factory=lambda: {phase: [] for phase in PHASES})
    errors: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None  # why the method was not run at this size (memory), if it was not
    memory: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> peak/growth of the RSS, MB

    def attempt(self, phase: str, tokens: torch.Tensor) -> float | None:
        """Run one step of ``phase``; its wall time, or ``None`` once the phase has failed."""
        if phase in self.errors or self.skipped:
            return None
        start = time.perf_counter()
        try:
            PHASES[phase](self.model, tokens)
        except Exception as error:  # report the method as broken, keep benchmarking the others
            self.errors[phase] = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
            return None
        return time.perf_counter() - start

    def measure_memory(self, phase: str, tokens: torch.Tensor) -> None:
        """One untimed step of ``phase``: the peak resident set size during it and its growth over the
        resident size before it (MB); nothing where the high-water mark cannot be reset (not Linux)."""
        if phase in self.errors or self.skipped:
            return
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
            before = _status_mb("VmRSS")
        except OSError:
            return
        self.attempt(phase, tokens)
        peak = _status_mb("VmHWM")
        if before is not None and peak is not None and phase not in self.errors:
            self.memory[phase] = {"peak_mb": peak, "growth_mb": peak - before}


def _status_mb(key: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="small", help="named model config (default: small)")
    parser.add_argument("--seq-len", type=at_least(1), default=256, help="tokens per sequence (default: 256)")
    parser.add_argument("--batch", type=at_least(1), default=8, help="sequences per batch (default: 8)")
    parser.add_argument("--repeats", type=at_least(1), default=5, help="timed rounds over all methods (default: 5)")
    parser.add_argument("--warmup", type=at_least(0), default=2, help="untimed iterations per method (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and tokens (default: 0)")
    parser.add_argument("--methods", nargs="+", metavar="SPEC", help="method specs (default: every registered method)")
    parser.add_argument(
        "--phases", default="fwd_bwd,fwd", help="comma-separated phases: fwd_bwd (training), fwd (inference)"
    )
    parser.add_argument(
        "--max-bias-gb",
        type=float,
        default=3.0,
        help="skip bias methods whose largest bias tensor (one query chunk's) would exceed this many GB (default: 3)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/pe_speed.json"), help="JSON results path")


def family_of(spec: str) -> str:
    """The family of the last method in the spec (``pi`` -> ``rope+pi`` -> scaling)."""
    return parse_spec(spec)[-1].info.family


def bias_gb(model: ropelab.Transformer, batch: int, seq_len: int) -> float:
    """Memory of the largest float32 bias a bias method holds at once: one query chunk's
    ``[batch, heads, chunk, T]`` (``ropelab.model.bias_attention``; it never builds ``T x T``)."""
    rows = batch * model.config.n_heads
    return rows * chunk_length(rows, seq_len, seq_len) * seq_len * 4 / 2**30


def measure(
    specs: list[str],
    config: str,
    seq_len: int,
    batch: int,
    repeats: int,
    warmup: int,
    seed: int,
    phases: tuple[str, ...] = tuple(PHASES),
    max_bias_gb: float = float("inf"),
) -> list[Case]:
    """Build one model per spec, warm each up, then time them round-robin ``repeats`` times."""
    cases = []
    for spec in specs:
        torch.manual_seed(seed)
        model = ropelab.Transformer(ropelab.ModelConfig.from_name(config, pe=spec)).train()
        case = Case(spec, family_of(spec), model, samples={phase: [] for phase in phases})
        if case.family == "bias" and bias_gb(model, batch, seq_len) > max_bias_gb:
            case.skipped = f"T x T bias {bias_gb(model, batch, seq_len):.1f} GB > {max_bias_gb:g} GB"
        cases.append(case)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cases[0].model.config.vocab_size, (batch, seq_len + 1), generator=generator)

    with tqdm(total=len(cases) * (warmup + repeats), desc="pe-speed", unit="step", leave=False) as bar:
        for case in cases:
            bar.set_postfix_str(f"warm-up {case.spec}")
            for _ in range(warmup):
                for phase in case.samples:
                    case.attempt(phase, tokens)
                bar.update()
        for round_ in range(repeats):
            for i in range(len(cases)):
                case = cases[(i + round_) % len(cases)]
                bar.set_postfix_str(f"round {round_ + 1}/{repeats} {case.spec}")
                for phase in case.samples:
                    seconds = case.attempt(phase, tokens)
                    if seconds is not None:
                        case.samples[phase].append(seconds)
                bar.update()
        for case in cases:
            bar.set_postfix_str(f"memory {case.spec}")
            for phase in case.samples:
                case.measure_memory(phase, tokens)
    return cases


def _iqr_ratio(samples: list[float]) -> float:
    """Q3/Q1: how far apart the middle half of the samples lies (1.0 = no spread)."""
    if len(samples) < 2:
        return 1.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q3 / q1


def _median(samples: list[float]) -> float | None:
    return statistics.median(samples) if samples else None


def summarise(cases: list[Case], seq_len: int | None = None) -> list[dict]:
    """Median times (ms), ratios to the reference, PASS/MISS (or ERROR) per method; ``seq_len``
    decides whether the bias methods' inference speed target applies (:data:`BIAS_SPEED_MAX_LEN`)."""
    ref = next(case for case in cases if case.spec == REFERENCE)
    rows = []
    for case in cases:
        row: dict = {"method": case.spec, "spec": case.model.pe.spec, "family": case.family}
        for phase, samples in case.samples.items():
            median, ref_median = _median(samples), _median(ref.samples[phase])
            row[f"{phase}_ms"] = None if median is None else 1e3 * median
            row[f"{phase}_ratio"] = None if median is None or ref_median is None else median / ref_median
        # the target applies to training when it was measured, otherwise to inference
        row["target_phase"] = "fwd_bwd" if "fwd_bwd" in case.samples else "fwd"
        target = (TARGETS if row["target_phase"] == "fwd_bwd" else INFERENCE_TARGETS).get(case.family)
        ratio = row[f"{row['target_phase']}_ratio"]
        if row["target_phase"] == "fwd" and case.family == "bias" and (seq_len or 0) > BIAS_SPEED_MAX_LEN:
            target = None  # judged by memory alone; the ratio is still reported
        row["target"] = target
        row["memory_target_mb"] = BIAS_PEAK_MB if case.family == "bias" and row["target_phase"] == "fwd" else None
        for phase in case.samples:
            row[f"{phase}_peak_mb"] = case.memory.get(phase, {}).get("peak_mb")
            row[f"{phase}_growth_mb"] = case.memory.get(phase, {}).get("growth_mb")
        checks = []
        if target is not None and ratio is not None:
            checks.append(ratio <= target)
        if row["memory_target_mb"] is not None and row.get("fwd_peak_mb") is not None:
            checks.append(row["fwd_peak_mb"] <= row["memory_target_mb"])
        if case.skipped:
            row["status"] = "SKIP"
        elif case.errors:
            row["status"] = "ERROR"
        else:
            row["status"] = ("PASS" if all(checks) else "MISS") if checks else None
        row["errors"] = case.errors
        row["skipped"] = case.skipped
        row["iqr_ratio"] = max((_iqr_ratio(samples) for samples in case.samples.values() if samples), default=None)
        for phase, samples in case.samples.items():
            row[f"{phase}_samples_ms"] = [1e3 * t for t in samples]
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """The readable table: method, family, fwd+bwd ms, ratio and peak memory, the same for fwd, target verdict."""

    def number(value: float | None, width: int, digits: int) -> str:
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    header = (
        f"{'method':<14} {'family':<9} {'fwd+bwd ms':>10} {'ratio':>6} {'peak MB':>8} "
        f"{'fwd ms':>8} {'ratio':>6} {'peak MB':>8}  target"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        verdict = r["status"] or "-"
        if r["status"] in ("PASS", "MISS"):
            limits = [f"<= {r['target']:.2f}x"] if r["target"] is not None else []
            limits += [f"peak <= {r['memory_target_mb'] / 1024:g} GB"] if r.get("memory_target_mb") else []
            verdict += f" ({', '.join(limits)})"
        if r["errors"]:
            verdict += " in " + ", ".join(r["errors"])
        if r.get("skipped"):
            verdict += f": {r['skipped']}"
        lines.append(
            f"{r['method']:<14} {r['family']:<9} {number(r.get('fwd_bwd_ms'), 10, 1)} {number(r.get('fwd_bwd_ratio'), 6, 2)} "
            f"{number(r.get('fwd_bwd_peak_mb'), 8, 0)} {number(r.get('fwd_ms'), 8, 1)} {number(r.get('fwd_ratio'), 6, 2)} "
            f"{number(r.get('fwd_peak_mb'), 8, 0)}  {verdict}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    specs = list(dict.fromkeys([REFERENCE, *(args.methods or [m.name for m in methods()])]))
    for spec in specs:
        parse_spec(spec)  # fail fast on a bad spec, before any model is built
    start = time.perf_counter()
    load_before = load_average()
    phases = tuple(items(args.phases))
    unknown = [p for p in phases if p not in PHASES]
    if unknown or not phases:
        raise RopelabError(f"--phases: unknown phase(s) {', '.join(unknown) or '(none)'}; known: {', '.join(PHASES)}")
    cases = measure(
        specs,
        args.config,
        args.seq_len,
        args.batch,
        args.repeats,
        args.warmup,
        args.seed,
        phases=phases,
        max_bias_gb=args.max_bias_gb,
    )
    rows = summarise(cases, args.seq_len)
    machine = {**machine_info(), "loadavg_before": load_before}

    print(
        f"pe-speed: config={args.config} seq_len={args.seq_len} batch={args.batch} repeats={args.repeats} "
        f"fp32 CPU, {machine['torch_threads']} threads, torch {machine['torch']}, {machine['cpu']}"
    )
    print(format_table(rows))
    for r in rows:
        for phase, message in r["errors"].items():
            print(f"error: {r['method']} {phase}: {message}")
    noisy = [r["method"] for r in rows if r["iqr_ratio"] is not None and r["iqr_ratio"] > NOISY]
    if noisy:
        print(
            f"warning: samples spread more than {NOISY}x (Q3/Q1) for {', '.join(noisy)}; the machine was busy "
            f"(load average {' '.join(load_before)} before, {' '.join(machine['loadavg'])} after): rerun when idle"
        )
    misses = [r["method"] for r in rows if r["status"] == "MISS"]
    print(
        f"targets: {'all met' if not misses else 'MISS: ' + ', '.join(misses)}  ({time.perf_counter() - start:.0f} s)"
    )

    write_json(
        args.out,
        {
            "benchmark": "pe-speed",
            "machine": machine,
            "settings": {
                "config": args.config,
                "seq_len": args.seq_len,
                "batch": args.batch,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "seed": args.seed,
                "phases": list(phases),
                "max_bias_gb": args.max_bias_gb,
                "dtype": "float32",
                "device": "cpu",
                "reference": REFERENCE,
                "targets": TARGETS,
                "inference_targets": INFERENCE_TARGETS,
                "bias_peak_mb": BIAS_PEAK_MB,
                "bias_speed_max_len": BIAS_SPEED_MAX_LEN,
            },
            "model_config": {k: v for k, v in cases[0].model.config.to_dict().items() if k != "pe"},
            "results": rows,
        },
    )
    print(f"wrote {args.out}")
    return 0
