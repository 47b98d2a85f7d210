"""The papers' applications, each one command that trains, evaluates, analyses and reports:

* :mod:`ropelab.experiments.hope` -- the HoPE paper's comparison of encodings trained from
  scratch (``ropelab experiment hope``);
* :mod:`ropelab.experiments.hirope` -- HiRoPE's L -> L^2 claim on a short-context code model
  (``ropelab experiment hirope``).

Each holds ``run.py`` (the orchestration, resumable) and ``report.py`` (its tables and plots).
"""
