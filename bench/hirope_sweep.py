"""HiRoPE's settings chosen on development files, then reported on held-out files.

    python -m bench hirope-sweep [--model smollm2-135m] [--length 1.125x] [--splits 0.25,0.5,auto]
        [--windows 1/16,1/4,1/2] [--token-indices global] [--extra SPECS]
        [--dev 4] [--test 0] [--work runs/hirope-sweep] [--out bench/results/hirope_sweep.json]

Every ``split x window x token_index`` setting (windows as fractions of the model's train length
``L``, so one grid serves every model) runs over the *development* documents: runs of whole code
files (Python stdlib, JDK ``java.util``; document ``i`` starts at the ``3 i``-th largest file, the
documents of ``ropelab experiment hirope``), each ``--length`` tokens. The score of a setting is
its next-token loss beyond ``L``, pooled over the documents' 128-token blocks (64 for short
models), paired with the ``window`` reference on the same blocks.

The rule: the setting with the lowest development loss beyond ``L`` is chosen. The chosen
setting, the library default and the window reference are then run on the *test* documents
(other files) and reported there; the development numbers are never reported as the result.

Each pass is appended to ``--work``/results.jsonl as it finishes, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

from bench.common import items

NAME = "hirope-sweep"
DESCRIPTION = "HiRoPE split/window/token_index sweep on development files, chosen setting on held-out files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="registry name or checkpoint (default: smollm2-135m)")
    parser.add_argument(
        "--length", default="1.125x", help="document length: tokens or a train-length multiple (default: 1.125x)"
    )
    parser.add_argument("--splits", default="0.25,0.5,auto")
    parser.add_argument(
        "--windows",
        type=_fractions,
        default="1/16,1/4,1/2",
        help="fractions of the train length (default: 1/16,1/4,1/2)",
    )
    parser.add_argument("--token-indices", default="global", help="global, segment or both")
    parser.add_argument("--extra", default="", help="more hirope specs for the development grid")
    parser.add_argument("--languages", default="python,java", help="languages of the held-out documents")
    parser.add_argument(
        "--dev-languages", default=None, help="languages of the development documents (default: the same)"
    )
    parser.add_argument("--dev", type=_indices, default="4", help="development document indices (default: 4)")
    parser.add_argument("--test", type=_indices, default="0", help="held-out document indices (default: 0)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", default="runs/hirope-sweep", help="resumable per-pass records")
    parser.add_argument("--out", default="bench/results/hirope_sweep.json")


def _fractions(text: str) -> list[Fraction]:
    """An argparse ``type``: comma-separated positive fractions such as ``1/16,1/2``."""
    try:
        values = [Fraction(x) for x in items(text)]
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected fractions such as 1/16,1/2, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive fractions, got {text!r}")
    return values


def _indices(text: str) -> list[int]:
    """An argparse ``type``: comma-separated document indices >= 0."""
    try:
        values = [int(x) for x in items(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected indices such as 0,1,2, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected indices >= 0, got {text!r}")
    return values


def grid(args: argparse.Namespace, train_len: int) -> list[str]:
    from ropelab.pe import canonical_spec, split_specs

    specs = []
    for split in items(args.splits):
        for fraction in args.windows:
            window = max(1, round(train_len * fraction))
            for index in items(args.token_indices):
                specs.append(canonical_spec(f"hirope:split={split},window={window},token_index={index}"))
    specs += [canonical_spec(s) for s in split_specs(args.extra)] if args.extra.strip() else []
    return list(dict.fromkeys(specs))


def explicit_default(model) -> str:
    """The library's ``hirope`` default for this model with its resolved numbers written out
    (``window=auto`` -> the tokens it means), so records stay true if the default changes."""
    from ropelab.pe import build, canonical_spec

    pe = build("hirope", model.pe_context())
    # the window default is the word "auto", so a window in tokens is never dropped as a default
    return canonical_spec(f"hirope:split={pe.split:g},window={pe.window},token_index={pe.token_index}")


def _pairs(by: dict, spec: str, reference: str, docs: list, first: int) -> tuple[list[float], list[float]]:
    """Block losses beyond ``L`` of ``spec`` and ``reference`` on the same blocks of ``docs``."""
    mine, ref = [], []
    for doc in docs:
        a, w = by.get((spec, *doc)), by.get((reference, *doc))
        if a is None or w is None:
            continue
        for i in range(first, min(len(a), len(w))):
            if a[i] is not None and w[i] is not None:
                mine.append(a[i])
                ref.append(w[i])
    return mine, ref


def summarise(
    records: list[dict], specs: list[str], indices: list[int], train_len: int, block: int, best: str | None = None
) -> list[dict]:
    """Per spec: loss beyond ``L`` over the documents' blocks, its paired difference to the window
    and, given ``best``, to that setting (a setting within 2 SE of the best is not worse)."""
    from ropelab.eval.runner import WINDOW
    from ropelab.eval.stats import estimate, paired

    first = -(-train_len // block)  # the first block wholly beyond L
    by = {(r["spec"], r["language"], r["document"]): r["blocks"] for r in records}
    docs = sorted({(lang, d) for (_, lang, d) in by if d in indices})
    rows = []
    for spec in [*specs, WINDOW]:
        mine, ref = _pairs(by, spec, WINDOW, docs, first)
        if not mine:
            continue
        est, diff = estimate(mine), paired(mine, ref)
        row = {"spec": spec, "loss_beyond": est.mean, "se": est.se, "n_blocks": est.n,
               "diff_window": diff.mean, "diff_se": diff.se}  # fmt: skip
        if best is not None:
            to_best = paired(*_pairs(by, spec, best, docs, first))
            row.update(diff_best=to_best.mean, diff_best_se=to_best.se)
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from bench.common import machine_info, write_json
    from ropelab.core.lengths import parse_length
    from ropelab.eval.runner import WINDOW, read_results
    from ropelab.experiments.hirope.run import ShortConfig, block_size, documents, evaluate_document
    from ropelab.pretrained.registry import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = load_model(args.model)
    model.eval()
    L = model.config.train_len
    length = parse_length(args.length, L)
    block = 128 if L >= 256 else block_size(L)
    languages = items(args.languages)
    config = ShortConfig(length=length, languages=languages, train_len=L)
    dev, test = args.dev, args.test
    if set(dev) & set(test):
        raise SystemExit("development and test documents must differ")
    dev_languages = items(args.dev_languages or args.languages)
    dev_config = ShortConfig(length=length, languages=dev_languages, train_len=L)
    docs = {(phase, d["language"], d["index"]): d for phase, ids, cfg in (("dev", dev, dev_config), ("test", test, config))
            for d in documents(cfg, tokenizer, ids)}  # fmt: skip
    used = {
        phase: sorted({f for key, d in docs.items() if key[0] == phase for f in d["files"]})
        for phase in ("dev", "test")
    }
    if set(used["dev"]) & set(used["test"]):
        raise SystemExit(f"development and test documents share files: {sorted(set(used['dev']) & set(used['test']))}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    setting = {"model": args.model, "length": length, "block": block}
    settings_file = work / "setting.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != setting:
        raise SystemExit(f"{work} holds a sweep with other settings; pass another --work")
    settings_file.write_text(json.dumps(setting))
    records = read_results(results) if results.exists() else []
    done = {(r["spec"], r["language"], r["document"]) for r in records}

    def measure(specs: list[str], phase: str) -> None:
        units = [(s, d) for s in specs for key, d in docs.items() if key[0] == phase]
        with open(results, "a") as handle:
            for spec, doc in tqdm(units, desc=f"hirope-sweep {phase}", unit="pass", file=sys.stderr):
                if (spec, doc["language"], doc["index"]) in done:
                    continue
                record = evaluate_document(model, tokenizer, doc, spec, spec, True, block)
                records.append(record)
                done.add((spec, doc["language"], doc["index"]))
                handle.write(json.dumps(record) + "\n")
                handle.flush()

    specs = grid(args, L)
    measure([*specs, WINDOW], "dev")
    development = sorted(summarise(records, specs, dev, L, block), key=lambda r: r["loss_beyond"])
    chosen = next(r["spec"] for r in development if r["spec"] != WINDOW)
    development = sorted(summarise(records, specs, dev, L, block, best=chosen), key=lambda r: r["loss_beyond"])
    default = explicit_default(model)
    reported = list(dict.fromkeys([chosen, default]))
    measure([*reported, WINDOW], "test")
    held_out = summarise(records, reported, test, L, block)
    report = {
        "benchmark": "hirope_sweep",
        "model": args.model,
        "train_len": L,
        "length": length,
        "block": block,
        "languages": languages,
        "dev_languages": dev_languages,
        "files": used,
        "rule": "lowest development loss beyond L",
        "development": development,
        "chosen": chosen,
        "default": default,
        "held_out": held_out,
        "seconds": time.perf_counter() - started,
        "machine": machine_info(),
    }
    write_json(args.out, report)
    for name, rows in (("development", development), ("held-out", held_out)):
        print(f"\n{name} (loss beyond L={L}; difference to the window, paired by block)")
        for r in rows:
            print(
                f"  {r['spec']:<50} {r['loss_beyond']:.3f} ± {r['se']:.3f}   Δ {r['diff_window']:+.3f} ± {r['diff_se']:.3f}"
            )
    print(f"\nchosen: {chosen}; written to {args.out}")
    return 0
