"""HiRoPE's settings for a pretrained model, chosen on development projects by the pre-stated rule,
then reported on test projects.

    python -m bench hirope-sweep [--model smollm2-135m] [--length 1.5x] [--windows 1/16,1/4,1/2,1]
        [--splits 0.25,0.5,auto] [--languages python,java] [--dev 3] [--test 3]
        [--work runs/hirope-sweep] [--out bench/results/hirope_sweep.json] [--threads N]

The grid (``split x window``, windows as fractions of the model's train length ``L``) and the window
reference run on the first ``--dev`` development projects per language of ropelab's corpus, each
its first ``--length`` tokens (1.5x-4x ``L``: every scored token lies beyond ``L``). The rule of
:mod:`ropelab.experiments.hirope.selection` (written before any test project was read) picks one
setting; ``selection.json`` in ``--work`` keeps it, and it is never recomputed. The chosen setting,
the best setting with a window below ``L/2`` when the chosen one is ``L/2`` or more, the library
default and the window reference then run on the first ``--test`` test projects per language; the
report gives each minus the window on the loss beyond ``L`` and on far-dependent tokens, with
documents as units (t, n - 1 df, Holm). ``ropelab experiment hirope`` does the same for the
ShortLLM model with several seeds.

Each pass is appended to ``--work``/``dev.jsonl`` or ``test.jsonl`` as it finishes, so an
interrupted sweep resumes; ``--publish`` copies the work folder to ``bench/results/hirope_sweep/``
(committed), and a new checkout starts from there.
"""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction
from pathlib import Path

from bench.common import items, restore, save

NAME = "hirope-sweep"
DESCRIPTION = "HiRoPE settings chosen on development projects by the pre-stated rule, reported on test projects"
OUT = Path("bench/results/hirope_sweep.json")
ARCHIVE = Path("bench/results/hirope_sweep")
FILES = ("setting.json", "selection.json", "dev.jsonl", "test.jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="registry name or checkpoint (default: smollm2-135m)")
    parser.add_argument("--length", default="1.5x", help="tokens or a train-length multiple (default: 1.5x)")
    parser.add_argument("--splits", default="0.25,0.5,auto")
    parser.add_argument("--windows", type=_fractions, default="1/16,1/4,1/2,1",
                        help="fractions of the train length (default: 1/16,1/4,1/2,1)")  # fmt: skip
    parser.add_argument("--languages", default="python,java")
    parser.add_argument("--dev", type=int, default=3, help="development projects per language (default: 3)")
    parser.add_argument("--test", type=int, default=3, help="test projects per language (default: 3)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", default="runs/hirope-sweep", help="resumable per-pass records")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument(
        "--ablations", action="store_true", help="also run the chosen setting's ablations on the test projects"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--publish", action="store_true", help=f"copy --work to {ARCHIVE} (resumable from a new checkout)"
    )


def _fractions(text: str) -> list[Fraction]:
    """An argparse ``type``: comma-separated positive fractions such as ``1/16,1/2``."""
    try:
        values = [Fraction(x) for x in items(text)]
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected fractions such as 1/16,1/2, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive fractions, got {text!r}")
    return values


def explicit_default(model) -> str:
    """The library's ``hirope`` default for this model with its numbers written out (``window=auto``
    -> tokens), so records stay true if the default changes."""
    from ropelab.pe import build, canonical_spec

    pe = build("hirope", model.pe_context())
    return canonical_spec(f"hirope:split={pe.split:g},window={pe.window},token_index={pe.token_index}")


def held_out(records: list[dict], specs: list[str], reference: str = "window") -> list[dict]:
    """Each spec minus ``reference`` per test document (loss beyond L, far-dependent tokens), one
    Holm family (:func:`ropelab.experiments.hirope.report.compare_family`, one model: one seed);
    the reference's own row last."""
    from ropelab.experiments.hirope.report import compare_family, document_means, values_by_seed

    metrics = ("beyond", "far")
    values = {m: values_by_seed(records, m) for m in metrics}
    cells = compare_family(values, {(m, s): (m, s, reference) for s in specs for m in metrics}.items())
    rows = []
    for spec in [*specs, reference]:
        row = {"spec": spec, **{m: _mean(document_means(values[m].get(spec, {})).values()) for m in metrics}}
        for metric in metrics if spec != reference else ():
            cell = cells[(metric, spec)]
            name = f"{metric}_minus_{'window' if reference == 'window' else 'chosen'}"
            row[name] = {**_iv(cell["docs"]), "adjusted_p": cell["verdict"].adjusted_p, "call": cell["verdict"].call}
        rows.append(row)
    return rows


def out_of_range(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per HiRoPE setting and document: the share of far pairs beyond the trained distances."""
    found: dict[str, dict[str, float]] = {}
    for r in records:
        if r.get("out_of_range") is not None:
            found.setdefault(r["method"], {})[r["document"]] = r["out_of_range"]
    return found


def _iv(iv) -> dict:
    return {"mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": iv.n, "p": iv.p}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def run(args: argparse.Namespace) -> int:
    import torch

    from bench.common import machine_info, write_json
    from ropelab.core.lengths import parse_length
    from ropelab.eval.runner import REFERENCE
    from ropelab.experiments.hirope import data, selection
    from ropelab.experiments.hirope.config import ablations
    from ropelab.experiments.hirope.run import measure
    from ropelab.pretrained.registry import load_model

    work = Path(args.work)
    if args.publish:
        save(work, ARCHIVE, FILES)
        print(f"published {work} to {ARCHIVE}")
        return 0
    restore(work, ARCHIVE, FILES)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = load_model(args.model)
    model.eval()
    L = model.config.train_len
    length = parse_length(args.length, L)
    languages = items(args.languages)
    dev_docs = data.documents("dev", languages, args.dev, tokenizer, length)
    test_docs = data.documents("test", languages, args.test, tokenizer, length)
    selection.check_disjoint([d["name"] for d in dev_docs], [d["name"] for d in test_docs], "projects")
    work.mkdir(parents=True, exist_ok=True)
    setting = {"model": args.model, "length": length, "splits": args.splits, "windows": [str(w) for w in args.windows],
               "dev": [d["name"] for d in dev_docs]}  # fmt: skip
    settings_file = work / "setting.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != setting:
        raise SystemExit(f"error: {work} holds a sweep with other settings; pass another --work")
    settings_file.write_text(json.dumps(setting))
    progress = not args.no_progress
    grid = selection.grid(L, args.windows, items(args.splits))
    models = {0: model}
    units = [(0, spec, d) for d in dev_docs for spec in [*grid, REFERENCE]]
    dev_records = measure(work / "dev.jsonl", units, models, tokenizer, progress, "hirope-sweep dev")
    found = selection.choose(work / "selection.json", dev_records, [d["name"] for d in dev_docs], grid, L, [0])
    default = explicit_default(model)
    reported = list(dict.fromkeys([found["chosen"], *([found["smaller_window"]] if found["smaller_window"] else []),
                                   default]))  # fmt: skip
    units = [(0, spec, d) for d in test_docs for spec in [*reported, REFERENCE]]
    changed = [(name, value, spec) for name, value, spec in ablations(found["chosen"])] if args.ablations else []
    units += [(0, spec, d) for d in test_docs for _, _, spec in changed]
    test_records = measure(work / "test.jsonl", units, models, tokenizer, progress, "hirope-sweep test")
    report = {
        "benchmark": "hirope_sweep",
        "model": args.model,
        "train_len": L,
        "length": length,
        "languages": languages,
        "dev": [d["name"] for d in dev_docs],
        "test": [d["name"] for d in test_docs],
        "selection": found,
        "default": default,
        "held_out": held_out(test_records, reported),
        "ablations": [
            {"changed": f"{n}={v}", **row}
            for (n, v, _), row in zip(
                changed, held_out(test_records, [spec for _, _, spec in changed], found["chosen"])
            )
        ],
        "out_of_range": out_of_range(dev_records + test_records),
        "seconds": time.perf_counter() - started,
        "machine": machine_info(),
    }
    write_json(args.out, report)
    print(f"chosen: {found['chosen']} (rule: {found['rule']}); written to {args.out}")
    return 0


COMMAND = "python -m bench hirope-sweep --ablations --work runs/hirope-sweep-smollm2"


def section(data: dict | None, machine) -> list[str]:
    """docs/results.md: the SmolLM2 sweep from ``data`` (``bench/results/hirope_sweep.json``, or None)."""
    lines = [
        "## 10. HiRoPE's settings for a pretrained model: chosen on development projects, reported on test projects",
        "",
    ]
    if not data or "selection" not in data:
        return [*lines, f"*Being re-measured with the pre-stated rule.* Run `{COMMAND}`.", ""]
    found, L = data["selection"], data["train_len"]
    lines += [
        f"Model: `{data['model']}`. Development: {', '.join(f'`{d}`' for d in data['dev'])}, each its first {data['length']} tokens "
        f"({data['length'] / L:g}x L = {L}; every scored token lies beyond L). Rule, fixed before any test project was "
        f"evaluated: {found['rule']}. Units: documents (t interval, n - 1 df). *out of range*: share of far pairs whose "
        f"segment distance, shift included, exceeds {L - 1}, mean over the documents.",
        "",
        "| setting | loss beyond L | minus the leader | minus window | tied | out of range |",
        "|---|---:|---:|---:|---|---:|",
    ]
    shares = data.get("out_of_range", {})
    for r in found["rows"]:
        mark = " **(chosen)**" if r["spec"] == found["chosen"] else ""
        share = _share(shares.get(r["spec"], {}), data["dev"])
        lines.append(
            f"| `{r['spec']}`{mark} | {r['mean']:.3f} | {_interval(r['to_leader'])} | {_interval(r['to_reference'])} "
            f"| {'yes' if r['tied'] else ''} | {share} |"
        )
    if found.get("smaller_window"):
        lines += ["", f"The chosen window is at least L/2 = {L // 2}: close to the window reference in disguise; the "
                  f"best setting with a smaller window, `{found['smaller_window']}`, is reported beside it."]  # fmt: skip
    n = len(data["test"])
    lines += [
        "",
        f"**Test** ({n} projects: {', '.join(f'`{d}`' for d in data['test'])}): each setting minus the window reference, "
        "95 % t interval over the documents, Holm-adjusted over the table; bold = better/worse. The library default is "
        f"`{data['default']}`.",
        "",
        "| setting | loss beyond L | minus window | far-dependent tokens | minus window |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in data["held_out"]:
        mark = (
            " **(chosen)**"
            if r["spec"] == found["chosen"]
            else " (library default)"
            if r["spec"] == data["default"]
            else ""
        )
        cells = [_value(r["beyond"]), _call(r.get("beyond_minus_window")), _value(r["far"])]
        lines.append(f"| `{r['spec']}`{mark} | " + " | ".join([*cells, _call(r.get("far_minus_window"))]) + " |")
    if data.get("ablations"):
        lines += [
            "",
            "**Ablations** on the same test projects: one design choice of the chosen setting changed, each minus the "
            "chosen setting (Holm over this table); *out of range* as above, on the test projects.",
            "",
            "| changed | setting | out of range | loss beyond L | minus chosen | far-dependent tokens | minus chosen |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in data["ablations"]:
            share = _share(shares.get(r["spec"], {}), data["test"])
            cells = [share, _value(r["beyond"]), _call(r.get("beyond_minus_chosen")), _value(r["far"])]
            lines.append(
                f"| {r['changed']} | `{r['spec']}` | " + " | ".join([*cells, _call(r.get("far_minus_chosen"))]) + " |"
            )
    return [*lines, "", f"Machine: {machine(data)}. Regenerate: `{COMMAND}`.", ""]


def _value(x: float) -> str:
    return "-" if x != x else f"{x:.3f}"


def _interval(d: dict | None) -> str:
    if d is None or not d["n"]:
        return "-"
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d["n"] > 1 else f"{d['mean']:+.3f}"


def _call(d: dict | None) -> str:
    if d is None or not d["n"]:
        return "-"
    text = f"{_interval(d)} {d['call']}"
    return f"**{text}**" if d["call"] in ("better", "worse") else text


def _share(by_doc: dict, documents: list[str]) -> str:
    values = [by_doc[d] for d in documents if d in by_doc]
    return f"{100 * sum(values) / len(values):.1f} %" if values else "-"
