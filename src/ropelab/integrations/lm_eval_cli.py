"""``ropelab-lm-eval``: lm-eval's command line with the ``ropelab`` model registered
(:mod:`ropelab.integrations.lm_eval_plugin`). lm-evaluation-harness is optional
(``pip install 'ropelab[lm-eval]'``); without it this is one ``error:`` line, not a traceback."""

from __future__ import annotations

import importlib.util
import sys

INSTALL = "pip install 'ropelab[lm-eval]'"


def main(argv: list[str] | None = None) -> None:
    if importlib.util.find_spec("lm_eval") is None:
        print(f"error: ropelab-lm-eval needs lm-evaluation-harness, which is not installed: {INSTALL}", file=sys.stderr)
        raise SystemExit(2)
    from ropelab.integrations.lm_eval_plugin import main as run

    run(argv)
