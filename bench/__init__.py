"""ropelab benchmarks: ``python -m bench`` lists them, ``python -m bench NAME --help`` explains one.

Each benchmark is a module with its ``NAME``, a one-line ``DESCRIPTION``, ``add_arguments(parser)``
and ``run(args) -> int``; list it in :func:`benchmarks` (the same shape as ropelab's method and task
registries: a list of modules' entries, each entry carrying its name).
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: the benchmark modules, in the order ``python -m bench`` lists them (imported on first use:
#: ``bench.common`` and the tests import this package without loading every benchmark)
MODULES = (
    "bench.pe_speed",
    "bench.hierarchy_speed",
    "bench.long_context",
    "bench.hf_speed",
    "bench.train_speed",
    "bench.window_sinks",
    "bench.hirope_sweep",
    "bench.context_study",
    "bench.ruler",
    "bench.gpu_check",
    "bench.render",
    "bench.import_run",
    "bench.suite",
)


def benchmarks() -> dict[str, ModuleType]:
    """Benchmark name -> module."""
    modules = [importlib.import_module(path) for path in MODULES]
    return {module.NAME: module for module in modules}
