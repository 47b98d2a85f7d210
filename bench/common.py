"""What every benchmark shares: machine information, atomic JSON output, isolated worker
processes (so wall time and peak RSS belong to one case), and the machine's measured fp32 matmul
peak (the denominator of model FLOP utilisation)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from ropelab.core.args import split_list

#: the comma-separated options of every benchmark (``"a, b,"`` -> ``["a", "b"]``)
items = split_list


def at_least(minimum: int):
    """An argparse ``type``: an integer ``>= minimum``, else argparse's one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict:
    """CPU, threads, versions, date, git commit and current load, for the JSON."""
    cpu_lines = [line for line in _read("/proc/cpuinfo").splitlines() if line.startswith("model name")]
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        commit = git.stdout.strip()
        # measured code that differs from the commit (src/ or bench/ edited) says so
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src", "bench/*.py"], check=False)
        if changed.returncode == 1:
            commit += "+modified"
    except (OSError, subprocess.CalledProcessError):
        commit = None
    memory = [line for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")]
    return {
        "cpu": cpu_lines[0].split(":", 1)[1].strip() if cpu_lines else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": round(int(memory[0].split()[1]) / 2**20, 1) if memory else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "loadavg": load_average(),  # 1/5/15-minute load when the run ended
    }


def load_average() -> list[str]:
    return _read("/proc/loadavg").split()[:3]


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write atomically (through ``PATH.tmp``) so an interrupted run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def isolated(module: str, arguments: list[str]) -> dict:
    """Run ``python -m MODULE ARGUMENTS`` in a fresh process; its last stdout line is a JSON result.

    A fresh process per case makes its peak RSS (``ru_maxrss``) and its wall time its own. A case
    that fails returns ``{"error": ...}`` with the end of its stderr, and the benchmark goes on.
    """
    done = subprocess.run([sys.executable, "-m", module, *arguments], capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_gflops(size: int = 2048, seconds: float = 2.0) -> float:
    """The best fp32 ``size x size`` matmul rate this process reaches (GFLOP/s), with torch's
    current thread count: the practical peak that model FLOP utilisation is measured against."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def release_free_memory() -> bool:
    """Collect garbage and hand the allocator's free pages back to the system (glibc's
    ``malloc_trim``), so that a resident-set measurement that starts now counts new allocations:
    memory freed earlier (a converted model's first copy, a warm-up's buffers) otherwise stays
    resident and is silently reused, hiding part of what the measured code allocates -- more for
    one process than another. False where there is no glibc (the measurement then goes on)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


class RssSampler:
    """Peak resident set size (MB) of this process while the ``with`` block runs."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.before = self.rss_mb()
        self.peak = self.before
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_mb())


def restore(run_dir: Path, archive: Path, names: tuple[str, ...] = ("config.json", "results.jsonl")) -> None:
    """Start ``run_dir`` from its committed archive when the archive holds more records (a new
    checkout: ``runs/`` is not in git). ``names``: the run's files, ``.jsonl`` ones (the records,
    counted by line) stored gzipped."""
    import gzip

    records = [n for n in names if n.endswith(".jsonl")]
    saved = {n: archive / (n + ".gz" if n in records else n) for n in names}
    if not all(saved[n].is_file() for n in records):
        return
    texts = {n: gzip.decompress(saved[n].read_bytes()).decode() for n in records}
    here = sum(_lines(run_dir / n) for n in records)
    if here >= sum(t.count("\n") for t in texts.values()):
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name in texts:
            (run_dir / name).write_text(texts[name])
        elif saved[name].is_file():
            (run_dir / name).write_text(saved[name].read_text())
    print(f"restored {run_dir} from {archive}", file=sys.stderr)


def save(run_dir: Path, archive: Path, names: tuple[str, ...] = ("config.json", "results.jsonl")) -> None:
    """Write a run's files to its archive (``.jsonl`` gzipped: the per-token losses compress about 3x)."""
    import gzip

    from ropelab.core.io import atomic_path

    archive.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = run_dir / name
        if not path.is_file():
            continue
        jsonl = name.endswith(".jsonl")
        data = gzip.compress(path.read_bytes(), compresslevel=9, mtime=0) if jsonl else path.read_bytes()
        with atomic_path(archive / (name + ".gz" if jsonl else name)) as tmp:
            tmp.write_bytes(data)


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.is_file() else 0
