"""``analysis.md``: the index of an analysis directory -- tables of the headline numbers, the plots,
and what each plot shows."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from ropelab.reporting.analysis_plots import make_plots, slug


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _skipped(subjects: list[dict], key: str) -> list[str]:
    lines = []
    for s in subjects:
        value = s.get(key)
        if isinstance(value, dict) and "skipped" in value:
            lines.append(f"- `{s['label']}`: skipped ({value['skipped']})")
    return lines


def _embed(plots: list[str], *names: str) -> list[str]:
    have = {Path(p).name for p in plots}
    return [f"![{Path(n).stem}]({n})" for n in names if n in have]


def _input_line(config: dict) -> str:
    if config["input"] == "probe":
        return (
            f"Input: the paper's probe, `[BOS] t t ... t` with one random non-special token `t` per sample; "
            f"{config['samples']} sample(s), seed {config['seed']}."
        )
    return f"Input: {config['samples']} window(s) of real text from `{config['input']}` (each starting with BOS)."


def _layers_text(layers: list[int]) -> str:
    """``3-7`` for a run of consecutive layers, else ``1,4,9``."""
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def _subject_row(s: dict) -> str:
    m = s["model"]
    step = f"step {s['step']}" if s.get("step") is not None else Path(s["checkpoint"]).name
    lower = m["bands"]["lower"]
    return (
        f"| `{s['label']}` | `{s['method']}` | {step} | {m['train_len']} | {m['head_dim']} | {m['base']:g} | "
        f"{', '.join(map(str, m['bands']['activated'])) or 'none'} | "
        f"{f'{lower[0]}-{lower[-1]}' if lower else 'none'} | {_layers_text(s['analysed_layers'])} |"
    )


def _header(config: dict, subjects: list[dict]) -> list[str]:
    """Title, what was measured on which input, one row per subject, and the lengths that failed."""
    lines = [
        f"# ropelab analysis: `{config['path']}`",
        "",
        _input_line(config) + f" Lengths: {', '.join(config['lengths'])} (x = times the train length L).",
        "Logits are pre-softmax (`q.k / sqrt(d)` plus any bias), of the last query against every key; key 0 "
        "(BOS) is left out of all statistics. Data: `analysis.json` (summary), `pattern.json`, "
        "`components.json`, `ood.json`, `hierarchy.json`.",
        "",
        "| subject | method | checkpoint | L | head dim | base | activated band j | lower band j | layers |",
        "|---|---|---|---:|---:|---:|---|---|---|",
        *map(_subject_row, subjects),
        "",
    ]
    for s in subjects:
        for length, error in s.get("errors", {}).items():
            lines.append(f"- `{s['label']}` could not run at length {length}: {error}")
    return [*lines, ""]


def _pattern_section(subjects: list[dict], plots: list[str]) -> list[str]:
    lines = [
        "## Position-related attention pattern",
        "",
        "What the plot shows: the logit the last query gives each key position, averaged over samples, "
        "heads and layers (the paper's Figures 2, 6, 8); one column per subject, one row per length. "
        "Keys at distance >= L from the query (only in rows beyond the train length) are shaded. A U-shape "
        "(high at the first keys and at the nearest keys, low in between) is what the paper reports for "
        "trained RoPE models; `pattern_layers.png` shows every layer separately.",
        "",
        "| subject | length | first 10% | middle 10% | last 10% | U-shape (ends - middle) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in subjects:
        for entry in s["pattern"] if isinstance(s.get("pattern"), list) else []:
            shape = entry["shape"]
            lines.append(
                f"| `{s['label']}` | {entry['length']} | {shape['first']:.4g} | {shape['middle']:.4g} | "
                f"{shape['last']:.4g} | {'yes' if shape['u_shape'] else 'no'} ({shape['u_depth']:+.3g}) |"
            )
    return [*lines, "", *_skipped(subjects, "pattern"), *_embed(plots, "pattern.png", "pattern_layers.png"), ""]


def _vaf_row(s: dict) -> str:
    comp = s["components"]
    activated = ", ".join(f"{a['index']}: {_pct(a['vaf'])}" for a in comp["activated"]) or "none"
    top = ", ".join(f"{j} ({_pct(comp['vaf'][j])})" for j in comp["ranking"][:3])
    bands = comp["vaf_bands"]
    return (
        f"| `{s['label']}` | {comp['length']} | {activated} | {_pct(bands['activated'])} | "
        f"{_pct(bands['lower'])} | {_pct(bands['high'])} | {top} |"
    )


def _vaf_training(subjects: list[dict]) -> list[str]:
    """The VAF of the activated sum at every checkpoint, for subjects analysed over training."""
    series = [
        s for s in subjects if isinstance(s.get("components"), dict) and len(s["components"].get("series", [])) > 1
    ]
    if not series:
        return []
    lines = [
        "",
        "Over training (`vaf_training.png`, Figure 3b): VAF of the summed activated components at each checkpoint.",
        "",
        "| subject | " + " | ".join(f"step {e['step']}" for e in series[0]["components"]["series"]) + " |",
        "|---|" + "---:|" * len(series[0]["components"]["series"]),
    ]
    for s in series:
        cells = " | ".join(_pct(e["vaf_bands"]["activated"]) for e in s["components"]["series"])
        lines.append(f"| `{s['label']}` | " + cells + " |")
    return lines


def _vaf_section(subjects: list[dict], plots: list[str]) -> list[str]:
    lines = [
        "## RoPE components and VAF",
        "",
        "What the plots show: `components.png` splits the pattern into its per-frequency terms C_j (Eq. 4; "
        "activated band red, lower band blue, high frequencies grey) and, below, the whole logit next to "
        "the sum of the activated components (Figure 3a). `vaf.png` is VAF_j = 1 - sum((y - C_j)^2) / sum(y^2) "
        "(Eq. 5) for every component of the layer-averaged pattern y (Figure 3b); hatched bars are "
        "components the method makes position-independent (HoPE). Uncentred, per-layer and centred VAF "
        "are in `components.json`.",
        "",
        "| subject | length | activated j: VAF | VAF of activated sum | VAF of lower sum | VAF of high sum | top components (VAF) |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    lines += [
        _vaf_row(s) for s in subjects if isinstance(s.get("components"), dict) and "skipped" not in s["components"]
    ]
    lines += [*_vaf_training(subjects), "", *_skipped(subjects, "components")]
    return [*lines, *_embed(plots, "components.png", "vaf.png", "vaf_training.png"), ""]


def _ood_row(s: dict) -> str:
    ood = s["ood"]
    frac = ood["ood_fraction"]
    worst = max(range(len(frac)), key=lambda i: frac[i])
    return (
        f"| `{s['label']}` | {ood['in_range_length']} -> {ood['length']} | {_pct(frac[0])} | "
        f"{_pct(sum(frac) / len(frac))} | layer {ood['layers'][worst]}: {_pct(frac[worst])} | "
        f"{sum(ood['ood_excess']) / len(ood['ood_excess']):.3g} | {ood['ood_ks'][0]:.3f} | "
        f"{sum(ood['ood_ks']) / len(ood['ood_ks']):.3f} |"
    )


def _ood_section(subjects: list[dict], plots: list[str]) -> list[str]:
    lines = [
        "## Extrapolation OOD check",
        "",
        "What the plot shows (Figure 3c): top, the first analysed layer's logits against distance from the "
        "last query in the longest run, over the band (green) its logits spanned in the in-range run; "
        "red points are beyond-L logits outside that band. Bottom: the OOD score of every layer. "
        "OOD score = fraction of last-query logits at keys with distance >= L lying outside the in-range "
        "[min, max] band of the same sample and head (+1% of its width), averaged over samples and heads "
        "(definition and limitations: `ropelab.analysis.ood`). KS: Kolmogorov-Smirnov distance between the "
        "in-range and the beyond-L logits (0 = same distribution, 1 = disjoint), which also sees shifts inside "
        "the band.",
        "",
        "| subject | in-range -> beyond | first layer | mean over layers | worst layer | mean excess (band widths) "
        "| KS first layer | KS mean |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    lines += [_ood_row(s) for s in subjects if isinstance(s.get("ood"), dict) and "skipped" not in s["ood"]]
    return [*lines, "", *_skipped(subjects, "ood"), *_embed(plots, "ood.png"), ""]


def _hierarchy_row(s: dict) -> str:
    h = s["hierarchy"]
    counts = [h["frequency_level"].count(i) for i in range(len(h["level_names"]))]
    per_level = ", ".join(f"{name} {n}" for name, n in zip(h["level_names"], counts) if n)
    mass = sum(h["same_segment_mass"]) / len(h["same_segment_mass"])
    return (
        f"| `{s['label']}` | {h['length']} | {len(h['segments'])} | {per_level} | {_pct(mass)} | "
        f"{_pct(h['same_segment_uniform'])} |"
    )


def _hierarchy_section(subjects: list[dict], plots: list[str]) -> list[str]:
    done = [s for s in subjects if isinstance(s.get("hierarchy"), dict) and "skipped" not in s["hierarchy"]]
    lines = [
        "## Hierarchy",
        "",
        "What the plots show: left, the position level each frequency reads (HiRoPE: high frequencies the "
        "token level, low ones the segment level) with the activated and lower bands marked; right, the "
        "attention probabilities on a real source file (log scale, averaged over heads and layers) with its "
        "function/class segments drawn as cyan lines. 'Own segment' is the attention a query puts on keys of "
        "its own segment; 'uniform' is what uniform causal attention would put there.",
        "",
    ]
    if done:
        lines += [
            "| subject | tokens | segments | frequencies per level | own segment | uniform |",
            "|---|---:|---:|---|---:|---:|",
            *map(_hierarchy_row, done),
        ]
    lines += ["", *_skipped(subjects, "hierarchy")]
    return [*lines, *_embed(plots, *(f"hierarchy_{slug(s['label'])}.png" for s in done)), ""]


def _reproduce(config: dict) -> list[str]:
    """The command line that repeats the analysis (options at their defaults left out)."""
    return [
        f"Reproduce: `ropelab analyze {config['path']} --analyses {','.join(config['analyses'])} "
        f"--lengths {','.join(config['lengths'])} --samples {config['samples']} --seed {config['seed']}"
        + (f" --documents {config['input']}" if config["input"] != "probe" else "")
        + (f" --methods {','.join(config['methods'])}" if config.get("methods") else "")
        + (f" --checkpoints {config['checkpoints']}" if config["checkpoints"] != "latest" else "")
        + (f" --layers {config['layers']}" if config.get("layers") else "")
        + (f" --hierarchy-input {config['hierarchy_input']}" if config.get("hierarchy_input") else "")
        + (f" --hierarchy-length {config['hierarchy_length']}" if config["hierarchy_length"] != 1024 else "")
        + "`",
        "",
    ]


#: analysis -> its section of ``analysis.md`` (in this order, each only when the analysis ran)
_SECTIONS: dict[str, Callable[[list[dict], list[str]], list[str]]] = {
    "pattern": _pattern_section,
    "vaf": _vaf_section,
    "ood": _ood_section,
    "hierarchy": _hierarchy_section,
}


def render_markdown(data: dict, plots: list[str]) -> str:
    config, subjects = data["config"], data["subjects"]
    lines = _header(config, subjects)
    for analysis, section in _SECTIONS.items():
        if analysis in config["analyses"]:
            lines += section(subjects, plots)
    return "\n".join([*lines, *_reproduce(config)])


DATA_FILES = {"pattern": "pattern.json", "vaf": "components.json", "ood": "ood.json", "hierarchy": "hierarchy.json"}


# -- the files of an analysis ------------------------------------------------------------------------------------


def _clean(value, digits: int = 6):
    """JSON-safe copy: tensors to lists, floats to ``digits`` significant digits, NaN/inf to None."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, digits) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist(), digits)
    return value


_CURVES = {
    "pattern": ("mean", "per_layer"),
    "components": ("curves", "vaf_per_layer", "series"),
    "ood": ("in_range_curve", "curve", "ood_fraction_per_head"),
    "hierarchy": ("attention_map",),
}


def summary(data: dict) -> dict:
    """``analysis.json``: everything but the curves (those live in the per-analysis files)."""
    subjects = []
    for subject in data["subjects"]:
        item = {k: v for k, v in subject.items() if k not in _CURVES}
        for key, curves in _CURVES.items():
            value = subject.get(key)
            if isinstance(value, list):
                item[key] = [{k: v for k, v in entry.items() if k not in curves} for entry in value]
            elif isinstance(value, dict):
                item[key] = {k: v for k, v in value.items() if k not in curves}
                if key == "components" and value.get("series"):
                    item[key]["series_steps"] = [entry["step"] for entry in value["series"]]
        if isinstance(item.get("inputs"), dict) and len(item["inputs"].get("tokens", [])) > 64:
            item["inputs"] = {**item["inputs"], "tokens": [*item["inputs"]["tokens"][:64], "..."]}
        subjects.append(item)
    return {"config": data["config"], "subjects": subjects}


def write_outputs(out: Path, data: dict, log: Callable[[str], None] | None = None) -> Path:
    """Write the JSON files, the plots and ``analysis.md``; returns the index's path."""
    out.mkdir(parents=True, exist_ok=True)
    keys = {"pattern": "pattern", "vaf": "components", "ood": "ood", "hierarchy": "hierarchy"}
    for analysis, filename in DATA_FILES.items():
        if analysis in data["config"]["analyses"]:
            payload = {s["label"]: s.get(keys[analysis]) for s in data["subjects"]}
            (out / filename).write_text(json.dumps(_clean(payload)))
    (out / "analysis.json").write_text(json.dumps(_clean(summary(data)), indent=1))
    plots = make_plots(out, data)
    index = out / "analysis.md"
    index.write_text(render_markdown(data, plots))
    if log:
        log(f"wrote {index} ({len(plots)} plot(s))")
    return index
