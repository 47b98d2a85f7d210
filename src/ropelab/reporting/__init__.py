"""What a person reads: markdown reports and PNG plots of evaluation runs
(:mod:`~ropelab.reporting.eval`) and analyses (:mod:`~ropelab.reporting.analysis`,
:mod:`~ropelab.reporting.analysis_plots`). The experiments' own reports, which read their
experiment's layout, live beside them in :mod:`ropelab.experiments`.

Reporting reads what the runners wrote (``results.jsonl``, the analysis data) and never runs a
model; the runners never render, so a report can be re-rendered at any time (``ropelab report``).
"""
