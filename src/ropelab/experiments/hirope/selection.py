"""How HiRoPE's settings are chosen: the development grid, the selection rule, and the guard that
keeps development and test documents apart.

The rule was written down (here and in docs/methods.md, "How HiRoPE's defaults were chosen")
before any test document was evaluated with the candidates:

1. Every setting of the grid is scored on every **development** document: its mean next-token
   loss over the tokens beyond the train length ``L`` (documents 1.5x-4x ``L`` long, so every
   scored token lies beyond ``L``). With several training seeds, a document's score is its mean
   over the seeds; the document is the unit.
2. The setting with the lowest mean score over the documents is the leader.
3. A setting is *tied* with the leader when the 95 % t interval (documents as units, n - 1 degrees
   of freedom) of its paired per-document difference to the leader contains 0.
4. Among the leader and the tied settings, the one with the **smallest window** is chosen (more of
   the attention then uses the hierarchy, which is what is being tested); equal windows: the
   lowest mean score.

If the chosen window is at least ``L/2``, the setting is close to the window reference in disguise
(most of what the model attends to is near pairs under plain RoPE): reports say so and also carry
the best setting with a smaller window.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ropelab.core.errors import RopelabError
from ropelab.eval.stats import interval, paired

#: the rule, as reports print it
RULE = (
    "lowest mean development loss beyond L over documents; settings whose paired 95% t interval "
    "(documents as units) to that one contains 0 are tied with it; among them the smallest window wins"
)
#: the development grid's windows as fractions of L, and its splits
WINDOWS = (Fraction(1, 16), Fraction(1, 8), Fraction(1, 4), Fraction(1, 2), Fraction(1))
SPLITS = ("0.25", "0.5", "auto")


def grid(train_len: int, windows: Sequence[Fraction] = WINDOWS, splits: Sequence[str] = SPLITS) -> list[str]:
    """Canonical ``hirope`` specs of every ``split x window`` (windows as fractions of ``train_len``),
    token index global (the paper's), in grid order (split-major)."""
    from ropelab.pe import canonical_spec

    specs = []
    for split in splits:
        for fraction in windows:
            window = max(1, round(train_len * fraction))
            specs.append(canonical_spec(f"hirope:split={split},window={window}"))
    return list(dict.fromkeys(specs))


def window_of(spec: str, train_len: int) -> int:
    """The neighbour window in tokens of a ``hirope`` spec (``window=auto`` resolved)."""
    from ropelab.pe import parse_spec
    from ropelab.pe.hirope import auto_window

    part = parse_spec(spec)[0]
    if part.info.name != "hirope":
        raise RopelabError(f"{spec}: not a hirope setting")
    window = part.params["window"]
    return auto_window(train_len) if window == "auto" else int(window)


@dataclass(frozen=True)
class Row:
    """One development setting: its scores, and its paired differences to the leader and reference."""

    spec: str
    window: int
    mean: float  # mean over documents of the per-document loss beyond L
    n: int  # documents
    to_leader: object  # stats.Interval of (this - leader) per document
    to_reference: object | None  # stats.Interval of (this - reference) per document
    tied: bool  # the leader itself, or its interval to the leader contains 0

    def to_dict(self) -> dict:
        out = {"spec": self.spec, "window": self.window, "mean": self.mean, "n": self.n, "tied": self.tied}
        for name in ("to_leader", "to_reference"):
            iv = getattr(self, name)
            out[name] = None if iv is None else {"mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": iv.n, "p": iv.p}
        return out


def select(
    scores: Mapping[str, Mapping[object, float]],
    train_len: int,
    reference: Mapping[object, float] | None = None,
) -> tuple[str, list[Row]]:
    """Apply the rule to ``scores`` (spec -> document -> loss beyond L): the chosen spec and one
    :class:`Row` per spec, sorted by mean. Every spec must be scored on the same documents (the
    rule compares paired differences); ``reference`` (document -> loss, the window reference) is
    only reported beside them, never chosen."""
    if not scores:
        raise RopelabError("no development scores to choose from")
    documents = set(next(iter(scores.values())))
    for spec, by_doc in scores.items():
        if set(by_doc) != documents:
            raise RopelabError(f"{spec}: scored on other development documents than the rest; finish the sweep first")
        if any(not math.isfinite(v) for v in by_doc.values()):
            raise RopelabError(f"{spec}: a development score is not finite")
    if len(documents) < 3:
        raise RopelabError(f"the rule needs at least 3 development documents, got {len(documents)}")
    means = {spec: interval(by_doc.values()).mean for spec, by_doc in scores.items()}
    leader = min(means, key=lambda s: (means[s], s))
    rows = []
    for spec, by_doc in scores.items():
        to_leader = paired(by_doc, scores[leader])
        tied = spec == leader or (to_leader.lo <= 0 <= to_leader.hi)
        to_ref = paired(by_doc, reference) if reference is not None else None
        rows.append(Row(spec, window_of(spec, train_len), means[spec], len(by_doc), to_leader, to_ref, tied))
    rows.sort(key=lambda r: (r.mean, r.spec))
    chosen = min((r for r in rows if r.tied), key=lambda r: (r.window, r.mean, r.spec)).spec
    return chosen, rows


def smaller_window_alternative(chosen: str, rows: Sequence[Row], train_len: int) -> str | None:
    """When the chosen window is at least ``L/2`` (close to the window reference): the lowest-mean
    setting with a window below ``L/2``, reported beside it; else None."""
    if window_of(chosen, train_len) * 2 < train_len:
        return None
    smaller = [r for r in rows if r.window * 2 < train_len]
    return min(smaller, key=lambda r: (r.mean, r.spec)).spec if smaller else None


def choose(path: Path, records: list[dict], documents: list[str], grid: list[str], train_len: int,
           seeds: list[int]) -> dict:  # fmt: skip
    """The rule applied to development ``records`` (``method``, ``document``, ``beyond``; a document's
    score is its mean over ``seeds``), saved to ``path`` (``selection.json``). Once saved, the choice
    is read back and never recomputed: a resumed run cannot re-choose after test documents were read."""
    if path.exists():
        return json.loads(path.read_text())
    from ropelab.core.io import atomic_write_text
    from ropelab.eval.runner import REFERENCE

    def score(spec: str) -> dict[str, float]:
        out = {}
        for name in documents:
            values = [r["beyond"] for r in records if r["method"] == spec and r["document"] == name]
            out[name] = sum(values) / len(values) if len(values) == len(seeds) else float("nan")
        return out

    chosen, rows = select({spec: score(spec) for spec in grid}, train_len, score(REFERENCE))
    found = {"rule": RULE, "documents": list(documents), "seeds": list(seeds), "chosen": chosen,
             "smaller_window": smaller_window_alternative(chosen, rows, train_len),
             "rows": [r.to_dict() for r in rows]}  # fmt: skip
    atomic_write_text(path, json.dumps(found, indent=2))
    return found


def check_disjoint(development: Iterable[str], test: Iterable[str], what: str = "documents") -> None:
    """Raise when a development and a test document (or file) are the same."""
    shared = sorted(set(development) & set(test))
    if shared:
        raise RopelabError(f"development and test {what} overlap: {', '.join(shared[:5])}")


__all__ = ["RULE", "SPLITS", "WINDOWS", "Row", "check_disjoint", "choose", "grid", "select", "smaller_window_alternative",
           "window_of"]  # fmt: skip
