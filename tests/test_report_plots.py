"""Plots never hide a series: identical series say so in the legend, and legends sit beside the data."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from ropelab.reporting import common
from ropelab.reporting.common import series_labels


def test_an_identical_series_names_its_twin():
    labels = series_labels({"rope": [1.0, 2.0], "hirope": [1.0, 2.0], "yarn": [1.0, 2.5], "pi": [1.0, 2.5]})
    assert labels == {"rope": "rope", "hirope": "hirope (= rope)", "yarn": "yarn", "pi": "pi (= yarn)"}
    assert series_labels({"a": [(1, 2.0)], "b": [[1, 2.0]]}) == {"a": "a", "b": "b (= a)"}  # points as pairs


def test_the_table_plot_labels_twins_and_keeps_its_legend_off_the_axes(tmp_path, monkeypatch):
    from ropelab.reporting import eval as report

    seen = {}

    def keep(fig, path):
        seen["fig"] = fig
        return str(path)

    monkeypatch.setattr(report, "save_figure", keep)
    cell = {"loss": 2.0, "loss_lo": 1.5, "loss_hi": 2.5, "n": 3}
    task = {"metric": "loss", "cells": {m: {"512": cell, "1024": cell} for m in ("rope", "hirope", "window")}}
    config = {"methods": ["rope", "hirope"], "train_len": 512, "model": "m"}
    report._table_plot(tmp_path, config, "ppl", task, [])
    ax = seen["fig"].axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["rope", "hirope (= rope)", "window (= rope)"]
    seen["fig"].canvas.draw()
    box, axes = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= axes.x1  # beside the axes, not over them
    common.save_figure(seen["fig"], tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 0


def test_length_labels_are_short():
    from ropelab.reporting.common import length_label

    assert length_label(683, 8192) == "683 (0.0834x)"  # was 683 (0.083374x)
    assert length_label(10240, 8192) == "10K (1.25x)" and length_label(640, 512) == "640 (1.25x)"
