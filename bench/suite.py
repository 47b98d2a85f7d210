"""``python -m bench all``: every measurement behind ``docs/results.md``, then the render.

Steps run one after another (each benchmark owns the cores while it runs), each as its own
command so a failure is reported and the rest go on. ``--only``/``--skip`` pick steps by name;
``--with-runs`` also runs the two long jobs (`ropelab compare`, `ropelab experiment hope`) and
imports them. Step names and commands are printed before they run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

NAME = "all"
DESCRIPTION = "run every benchmark (optionally the compare and HoPE runs too), then render docs/results.md"

PY = [sys.executable, "-m", "bench"]
R = "bench/results/"
INFER = ["--repeats", "3", "--warmup", "1", "--out"]
STEPS: dict[str, list[list[str]]] = {
    "pe-speed-train": [
        [*PY, "pe-speed", "--config", "small", "--out", R + "pe_speed_train_small.json"],
        [*PY, "pe-speed", "--config", "medium", "--out", R + "pe_speed_train_medium.json"],
    ],
    "pe-speed-infer": [
        [
            *PY,
            "pe-speed",
            "--phases",
            "fwd",
            "--batch",
            "1",
            "--seq-len",
            str(n),
            *INFER,
            R + f"pe_speed_infer_{n}.json",
        ]
        for n in (1024, 4096, 16384)
    ],
    "hf-speed": [[*PY, "hf-speed"]],
    "long-context": [[*PY, "long-context"]],
    "hierarchy-speed": [[*PY, "hierarchy-speed"]],
    "train-speed": [[*PY, "train-speed"]],
    "window-sinks": [[*PY, "window-sinks"]],
}
RUNS: dict[str, list[list[str]]] = {
    "compare": [
        ["ropelab", "compare", "--out", "runs/bench-compare"],
        [*PY, "import-run", "compare", "runs/bench-compare"],
    ],
    "hope-experiment": [
        ["ropelab", "experiment", "hope", "--out", "runs/bench-hope"],
        [*PY, "import-run", "hope-experiment", "runs/bench-hope"],
    ],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = ", ".join([*STEPS, *RUNS])
    parser.add_argument("--only", default="", help=f"comma-separated steps to run (default: all benchmarks): {names}")
    parser.add_argument("--skip", default="", help="comma-separated steps to leave out")
    parser.add_argument("--with-runs", action="store_true", help="also run `ropelab compare` and the HoPE experiment")


def run(args: argparse.Namespace) -> int:
    from bench.common import items
    from ropelab.core.errors import RopelabError

    known = {**STEPS, **RUNS}
    only = items(args.only)
    skip = set(items(args.skip))
    unknown = [s for s in [*only, *skip] if s not in known]
    if unknown:
        raise RopelabError(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(known)}")
    chosen = only or [*STEPS, *(RUNS if args.with_runs else [])]
    failures, timings = [], {}
    for name in chosen:
        if name in skip:
            continue
        start = time.perf_counter()
        for command in known[name]:
            print(f"[{name}] {' '.join(command)}", flush=True)
            if subprocess.run(command, check=False).returncode != 0:
                failures.append(name)
        timings[name] = time.perf_counter() - start
    from bench.render import write

    print(f"wrote {write()}")
    for name, seconds in timings.items():
        print(f"  {name:<18} {seconds / 60:6.1f} min")
    if failures:
        print(f"failed steps: {', '.join(dict.fromkeys(failures))}")
    return 1 if failures else 0
