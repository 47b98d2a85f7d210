"""ropelab benchmarks: ``python -m bench`` lists them, ``python -m bench NAME --help`` explains one.

Each benchmark is a module with a one-line ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``; register it in :data:`BENCHMARKS`.
"""

from __future__ import annotations

BENCHMARKS: dict[str, str] = {
    "pe-speed": "bench.pe_speed",
    "hierarchy-speed": "bench.hierarchy_speed",
    "long-context": "bench.long_context",
    "hf-speed": "bench.hf_speed",
    "train-speed": "bench.train_speed",
    "window-sinks": "bench.window_sinks",
    "hirope-sweep": "bench.hirope_sweep",
    "render": "bench.render",
    "import-run": "bench.import_run",
    "all": "bench.suite",
}
