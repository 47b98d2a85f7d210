"""Long-context use: does a method use context beyond the train length ``L``, and what does it
cost inside it? (The task of ``ropelab compare``; docs/evaluation.md.)

A sample is one **project** (:mod:`ropelab.eval.projects`: the source files of one package
concatenated in a fixed order; the document is the statistical unit of every verdict) cut to
``length`` tokens, with needle comment lines inserted. One forward pass per method over it, and
its KV cache, give four views:

1. **Loss by position** -- the next-token loss of every token (needle tokens not scored),
   averaged inside ``L`` and beyond it. The ``window`` reference is the model's own method with
   attention limited to the previous ``L`` tokens plus four sink tokens, in one pass
   (:mod:`ropelab.pe.sliding`): a method whose loss beyond ``L`` is below it uses context a
   window cannot reach; one whose loss inside ``L`` is above it pays for its extension.
2. **Far-dependent tokens** (:func:`ropelab.eval.far.far_tokens`) -- the tokens of identifiers
   whose only earlier mentions lie more than ``L`` back: the window cannot see their evidence.
3. **Needles** -- comment lines ``# The pass key of amber is amber60494. Remember it.`` (``//``
   in Java and JavaScript). *Far* needles lie more than ``L`` tokens before the end of the
   document (one per 100 tokens of that region, at most :data:`FAR_NEEDLES`); *near* needles lie
   in its last ``L/2`` tokens (a positive control: the window must find them). After the
   document, the question ``# The pass key of amber is amber`` is asked about every needle and
   answered teacher-forced from the document's KV cache, truncated back after each question
   (exact match: greedy decoding gives the five digits).
4. **Symbols** (:func:`ropelab.eval.symbol_sites.call_sites`) -- at use sites of a function or class the
   project defined, the gold name ranked by likelihood against distractor names the project
   also defined (a RepoBench-style task). *Far* sites: nothing in the window mentions the gold or
   any distractor, so the window reference sits at chance; *near* sites are its positive control.
   **Probes** (:func:`ropelab.eval.symbol_sites.probe_sites`) add far samples from the project's own
   continuation, text the model never reads: the line of a later use site, up to the symbol, is
   appended after the document and the gold (defined more than ``L`` back, unseen in the window)
   ranked the same way.

The needles, probes and symbols cost no extra pass: the cache is truncated to each question,
probe or site, longest first. That is exact for methods whose angles do not depend on the input length; for
``dynamic-ntk`` (``rotation_depends_on_length``) each needle question gets its own pass over the
document, and the symbol and probe views are not measured (a pass per site would cost more than
the run).

HiRoPE reads the hierarchy of each file of the project parsed on its own (tree-sitter); its
question and candidate tokens extend the segment of the token before them, as cached
generation does.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
import re
from collections import Counter

import torch

from ropelab.core.errors import RopelabError
from ropelab.core.log import log
from ropelab.eval import far, projects, symbol_sites
from ropelab.eval.base import Outputs, Sample, Task

#: at most this many far needles per document (one per 128 tokens of the far region)
FAR_NEEDLES = 16
#: near needles per document (in its last L/2 tokens)
NEAR_NEEDLES = 3
#: tokens of the far region per far needle
NEEDLE_SPACING = 100
#: at most this many far symbol sites per document (at most two per gold name)
FAR_SITES = 32
#: at most this many probes per document (use sites from the project's unseen continuation), one per
#: PROBE_SPACING tokens of the far region (each costs a continuation per candidate)
PROBES, PROBE_SPACING = 12, 640
#: characters of the project after the document searched for probe lines
PROBE_TEXT = 1_000_000
#: rounds of renaming the candidates of far sites and probes (each rebuild may draw new distractors)
RENAME_ROUNDS = 8
#: sink tokens the window reference keeps (``ropelab.pe.sliding``): targets must not be visible there
SINKS = 4
#: distinct names, one per needle of a document
NAMES = (
    "amber", "cobalt", "falcon", "juniper", "marble", "orchid", "saffron", "walnut", "copper",
    "lagoon", "meadow", "harbor", "violet", "granite", "willow", "ember", "thistle", "quartz",
    "heron", "pepper", "canyon", "maple", "indigo", "sparrow",
)  # fmt: skip


def comment(language: str) -> str:
    return "#" if language == "python" else "//"


def needle_text(name: str, key: str, language: str = "python") -> str:
    return f"{comment(language)} The pass key of {name} is {name}{key}. Remember it.\n"


def question_text(name: str, language: str = "python") -> str:
    return f"\n{comment(language)} The pass key of {name} is {name}"


class LongContext(Task):
    name = "context"
    description = (
        "long-context use on code projects (test split): loss inside/beyond L and on far-dependent tokens, "
        "needles and symbol use sites beyond L, each against the one-pass sliding-window reference"
    )
    mode = "session"
    metric = "loss_beyond"
    higher_is_better = False
    min_length = 256
    report_kind = "context"
    reads_documents = True
    #: the projects' split (:mod:`ropelab.eval.projects`)
    split = "test"

    def build(self, tokenizer, length: int, n: int, seed: int, train_len: int) -> list[Sample]:
        self.check_length(length)
        if self.documents is not None:
            candidates, which = _readable(self.documents), "of your documents"
        else:
            candidates, which = projects.projects(split=self.split, min_tokens=length), f"{self.split} project(s)"
        samples: list[Sample] = []
        for project in candidates:
            sample = self._sample(tokenizer, project, length, len(samples), seed, train_len)
            if sample is not None:
                samples.append(sample)
            if len(samples) == n:
                return samples
        raise RopelabError(
            f"{self.name}: only {len(samples)} {which} hold {length} tokens; "
            f"ask for --samples {len(samples)} or a shorter length"
            if samples
            else f"{self.name}: none {which} holds {length} tokens; use a shorter length"
        )

    def _sample(self, tokenizer, project, length: int, index: int, seed: int, train_len: int) -> Sample | None:
        """The project's sample; the names a far symbol site or probe asks about are renamed first.

        A model guesses many real names from the code around their use (``raise ...Error(``), so
        with real names the window reference would find far symbols it cannot see. Every name that
        is a candidate of a far site or probe (gold or distractor) is replaced by a random
        pronounceable one throughout the project (its definition, every use, comments included),
        and the sample is built again on the renamed text: only the far context tells the
        candidates apart. Far sites and probes of the rebuilt sample whose candidates are not all
        renamed are dropped; needles, near sites and the losses use the renamed text too."""
        project_texts, names = _texts(project)
        sample = self._build(tokenizer, project, list(project_texts), names, length, index, seed, train_len)
        rng = random.Random(f"rename:{seed}:{project.name}")
        mapping: dict[str, str] = {}
        for _ in range(RENAME_ROUNDS):  # a rebuilt sample may draw other distractors: rename those too
            if sample is None:
                return None
            fresh = set(mapping.values())
            hidden = {n for item in _far_items(sample.extra) for n in _candidate_names(tokenizer, item)} - fresh
            if not hidden:
                break
            mapping.update(_random_names(sorted(hidden), "".join(project_texts), fresh, rng))
            renamed = [_rename(text, mapping) for text in project_texts]
            sample = self._build(tokenizer, project, renamed, names, length, index, seed, train_len)
        if sample is None or not mapping:
            return sample
        fresh = set(mapping.values())
        extra = sample.extra
        extra["sites"] = [s for s in extra["sites"] if not s["far"] or _candidate_names(tokenizer, s) <= fresh]
        extra["probes"] = [p for p in extra["probes"] if _candidate_names(tokenizer, p) <= fresh]
        extra["renamed"] = len(mapping)
        return sample

    def _build(
        self, tokenizer, project, project_texts: list[str], names: list[str], length, index, seed, train_len
    ) -> Sample | None:
        language = project.language
        rng = random.Random(f"context:{seed}:{length}:{project.name}")
        labels = rng.sample(NAMES, len(NAMES))
        keys = [str(k) for k in rng.sample(range(10000, 100000), len(NAMES))]
        room = max(len(tokenizer.encode(question_text(a, language) + b)) for a, b in zip(labels, keys))
        end = length - room  # the document's tokens; the questions follow them
        texts, names = _enough(tokenizer, project_texts, names, end)
        if texts is None:
            return None
        rest = list(project_texts[len(texts) :])  # the project after the document's files: probe lines
        size = max(len(tokenizer.encode(needle_text(a, b, language))) for a, b in zip(labels, keys))
        plan = _needle_targets(end, train_len, size, rng)
        texts, inserted = _insert(tokenizer, texts, plan, labels, keys, language)
        text = "".join(texts)
        encoding = tokenizer.encode_with_offsets(text)
        if len(encoding.ids) < end:
            return None
        ids, offsets = encoding.ids[:end], encoding.offsets[:end]
        starts = [o[0] for o in offsets]
        needles, skip = [], set()
        for char, label, key in inserted:
            first = bisect.bisect_right(starts, char) - 1
            last = bisect.bisect_left(starts, char + len(needle_text(label, key, language)))
            if last > end:
                raise RopelabError(f"context: needle {label} does not fit in {project.name}")
            needles.append({"name": label, "key": key, "start": first, "end": last, "far": last <= end - train_len})
            skip.update(range(first, last))
        far_ids = [t for t in far.far_tokens(texts, offsets, train_len, language, sinks=SINKS) if t not in skip]
        sites = symbol_sites.call_sites(
            tokenizer, texts, ids, offsets, train_len, language, sinks=SINKS, seed=seed, far_limit=FAR_SITES, per_gold=2
        )
        sites = [s for s in sites if not skip.intersection(range(s.start - 1, s.start + 1))]
        limit = min(PROBES, max(0, end - train_len) // PROBE_SPACING)  # one per 640 tokens of the far region
        probes = symbol_sites.probe_sites(
            tokenizer,
            texts + rest,
            ids,
            offsets,
            train_len,
            language,
            sinks=SINKS,
            seed=seed,
            limit=limit,
            after=PROBE_TEXT,
        )
        return self.sample(
            length, index, seed, tokenizer.decode(ids), ids,
            language=language, document=project.name, era=project.era,
            sha256=project.sha256 if self.documents is not None else projects.text_sha256(project), files=names,
            file_chars=[len(t) for t in texts], needles=needles, room=room, far_tokens=far_ids,
            sites=[
                {
                    "name": s.name,
                    "start": s.start,
                    "candidates": [list(c) for c in s.candidates],
                    "gold": s.gold,
                    "distance": s.distance,
                    "far": s.far,
                    "kind": getattr(s, "kind", "call"),
                    "symbol": getattr(s, "symbol", "function"),
                }
                for s in sites
            ],
            probes=[
                {
                    "name": p.name,
                    "context": list(p.context),
                    "candidates": [list(c) for c in p.candidates],
                    "gold": p.gold,
                    "distance": len(ids) - p.definition,
                    "kind": p.kind,
                    "symbol": p.symbol,
                }
                for p in probes
            ],
        )  # fmt: skip

    def run(self, evaluator, sample: Sample) -> dict:
        return run(evaluator, sample)

    def score(self, sample: Sample, outputs: Outputs) -> dict[str, float]:
        raise RopelabError("the context task is scored by its session (LongContext.run)")


class DevelopmentContext(LongContext):
    """The same views on the development projects: for choosing a setting (a window, a split),
    never for reporting it."""

    name = "context-dev"
    description = "the context task on the development projects (for choosing settings; report on `context`)"
    split = "dev"
    reads_documents = False  # with your documents, ``context`` is the task


def _readable(documents: list) -> list:
    """The user's documents in a language the far views parse (:data:`ropelab.eval.far.LANGUAGES`)."""
    usable = [d for d in documents if d.language in far.LANGUAGES]
    left = [f"{d.name} ({d.language})" for d in documents if d.language not in far.LANGUAGES]
    if left and not usable:
        raise RopelabError(f"context: reads {', '.join(far.LANGUAGES)} code, not {', '.join(left)}")
    if left:
        log(f"skipped: context reads {', '.join(far.LANGUAGES)} code, not {', '.join(left)}")
    return usable


def _texts(project) -> tuple[list[str], list[str]]:
    """A document's file texts and names: a built-in project (:mod:`ropelab.eval.projects`) or yours."""
    if isinstance(project, projects.Project):
        return projects.load(project)
    return list(project.texts), list(project.files)


def _far_items(extra: dict) -> list[dict]:
    return [s for s in extra["sites"] if s["far"]] + extra["probes"]


def _candidate_names(tokenizer, item: dict) -> set[str]:
    return {tokenizer.decode(c).strip() for c in item["candidates"]}


def _random_names(names: list[str], text: str, used: set[str], rng: random.Random) -> dict[str, str]:
    """A new pronounceable name per name (consonant-vowel syllables), in the name's style (a
    leading underscore, a capital or ALL CAPS), unique, absent from ``text`` and from ``used``."""
    taken = set(re.findall(r"\w+", text)) | used
    mapping: dict[str, str] = {}
    for name in names:
        while True:
            word = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3))
            core = name.lstrip("_")
            if core.isupper():
                word = word.upper()
            elif core[:1].isupper():
                word = word.capitalize()
            word = "_" * (len(name) - len(core)) + word
            if word not in taken:
                taken.add(word)
                mapping[name] = word
                break
    return mapping


def _rename(text: str, mapping: dict[str, str]) -> str:
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(mapping, key=len, reverse=True))) + r")\b")
    return pattern.sub(lambda m: mapping[m.group(0)], text)


def _enough(tokenizer, texts: list[str], names: list[str], tokens: int) -> tuple[list[str] | None, list[str]]:
    """The first files of the project holding about ``tokens`` tokens plus a margin for the cut
    (whole files; the last one is cut by the token count later), or (None, names) if it has fewer."""
    kept, chars = [], 0
    for text in texts:
        kept.append(text)
        chars += len(text)
        if chars > 6 * tokens + 4096 and len(tokenizer.encode("".join(kept))) > tokens + 512:
            return kept, names[: len(kept)]
    return (kept if len(tokenizer.encode("".join(kept))) >= tokens + 512 else None), names[: len(kept)]


def _needle_targets(end: int, train_len: int, size: int, rng: random.Random) -> list[tuple[int, bool]]:
    """(target token index in the text before insertion, far?) of each needle of a document of
    ``end`` tokens. Every needle pushes the text after it right by at most ``size`` tokens, so the
    far ones are spread over ``[32, end - L - margin)`` and the near ones over the last ``L/2``
    tokens before ``end - margin``, ``margin`` being all needles' tokens: far needles end more
    than ``L`` tokens before the questions, near ones within ``L/2``."""

    def fits(count: int, near: int) -> bool:
        margin = (count + near) * size
        far_room = count == 0 or (end - train_len - margin - 32) // NEEDLE_SPACING >= count
        near_room = near == 0 or min(train_len, end) // 2 - margin - 16 >= 2 * near * size
        return far_room and near_room

    near = NEAR_NEEDLES
    count = FAR_NEEDLES
    while count and not fits(count, near):
        count -= 1
    if not fits(count, near):  # no room for near needles in the last L/2 tokens: far ones only
        near, count = 0, FAR_NEEDLES
        while count and not fits(count, 0):
            count -= 1
    margin = (count + near) * size
    plan = []
    far_end = end - train_len - margin
    for j in range(count):
        width = (far_end - 32) / count
        plan.append((int(32 + width * (j + 0.25 + 0.5 * rng.random())), True))
    near_start, near_end = end - min(train_len, end) // 2, end - margin - 16
    for j in range(near):
        width = (near_end - near_start) / near
        plan.append((int(near_start + width * (j + 0.25 + 0.5 * rng.random())), False))
    return plan


def _insert(tokenizer, texts, plan, labels, keys, language) -> tuple[list[str], list[tuple[int, str, str]]]:
    """Insert one needle line per planned target at the line start nearest it (in the file that
    holds it, so each file still parses on its own); returns the new file texts and, per needle
    in the order of the text, (its character offset in the joined text, name, key)."""
    text = "".join(texts)
    offsets = tokenizer.encode_with_offsets(text[: 8 * max(t for t, _ in plan) + 8192] if plan else "").offsets
    points = []
    for (target, _), label, key in zip(plan, labels, keys):
        char = offsets[min(target, len(offsets) - 1)][0]
        before = text.rfind("\n", 0, char) + 1
        points.append((before, label, key))
    points.sort(key=lambda p: p[0])
    bounds = [0]
    for t in texts:
        bounds.append(bounds[-1] + len(t))
    texts = list(texts)
    for char, label, key in reversed(points):  # from the end, so earlier offsets stay valid
        f = min(bisect.bisect_right(bounds, char) - 1, len(texts) - 1)
        local = char - bounds[f]
        texts[f] = texts[f][:local] + needle_text(label, key, language) + texts[f][local:]
    shift, inserted = 0, []
    for char, label, key in points:
        inserted.append((char + shift, label, key))
        shift += len(needle_text(label, key, language))
    return texts, inserted


def fingerprint(sample: Sample) -> str:
    """sha256 of everything a record of ``sample`` is measured on (tokens, needles, targets, sites):
    records of two methods pair only when it is equal (a resumed run rebuilds its samples)."""
    extra = sample.extra
    content = [sample.prompt_ids, extra["needles"], extra["far_tokens"], extra["sites"], extra.get("probes", [])]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _continue(model, cache, prefix: int, tokens: list[int]) -> torch.Tensor:
    """Log-probabilities ``[len(tokens) - 1, vocab]`` of ``tokens[1:]`` after the cached prefix of
    ``prefix`` tokens followed by ``tokens[:-1]`` (the cache is truncated back first)."""
    cache.truncate(prefix)
    logits = model(torch.tensor([tokens[:-1]], device=model.embed_tokens.weight.device), cache=cache)[0]
    return torch.log_softmax(logits.float(), dim=-1)


def run(evaluator, sample: Sample) -> dict:
    """Everything the record of one (method, document) holds; see the module docstring."""
    model, tokenizer = evaluator.model, evaluator.tokenizer
    extra, language = sample.extra, sample.language
    ids = list(sample.prompt_ids)
    end, train_len = len(ids), evaluator.train_len
    positions, note = evaluator.positions(sample, ids)
    record: dict = {key: extra[key] for key in ("document", "era", "sha256", "files")}
    record["language"] = language
    record["sample_sha256"] = fingerprint(sample)
    if note:
        record["hierarchy"] = note
    separate = model.pe.rotation_depends_on_length
    cache = model.new_cache()
    hidden = evaluator.prefill(ids, positions, cache)
    losses = model.losses_from_hidden(hidden[None, :-1], torch.tensor([ids[1:]], device=hidden.device))[0].tolist()
    sites = [] if separate else sorted(extra["sites"], key=lambda s: -s["start"])
    first = {}  # log-probabilities of each site's first candidate tokens, from the prefill
    if sites:
        rows = torch.log_softmax(model.lm_head(hidden[[s["start"] - 1 for s in sites]]).float(), dim=-1)
        first = {s["start"]: rows[i] for i, s in enumerate(sites)}
    del hidden
    skip = {t for n in extra["needles"] for t in range(n["start"], n["end"])}
    token_losses = [None] + [None if t in skip else round(v, 4) for t, v in enumerate(losses, 1)]
    record["token_losses"] = token_losses
    record["unigram_loss"] = _unigram_loss(ids, token_losses)
    far_losses = [token_losses[t] for t in extra["far_tokens"] if t < end and token_losses[t] is not None]
    record["far_tokens"] = len(far_losses)
    record["metrics"] = _loss_metrics(token_losses, train_len, far_losses)

    needles = []
    for needle in extra["needles"]:
        question = tokenizer.encode(question_text(needle["name"], language))
        answer = tokenizer.encode(needle["key"])
        if separate:
            cache = model.new_cache()
            evaluator.prefill(ids, positions, cache)
        logp = _continue(model, cache, end, question + answer)[len(question) - 1 :]
        gold = torch.tensor(answer, device=logp.device)
        correct = (logp.argmax(-1) == gold).tolist()
        needles.append(
            {
                "name": needle["name"],
                "far": needle["far"],
                "distance": end - needle["start"],
                "exact": int(all(correct)),
                "digits": sum(correct) / len(correct),
                "loss": -float(logp.gather(1, gold[:, None]).mean()),
            }
        )
    record["needles"] = needles

    probes = []
    for probe in [] if separate else extra.get("probes", []):
        context = probe["context"]
        scores = []
        for candidate in probe["candidates"]:
            logp = _continue(model, cache, end, context + candidate)[len(context) - 1 :]
            gold = torch.tensor(candidate, device=logp.device)[:, None]
            scores.append(round(float(logp.gather(1, gold).sum()), 4))
        best = max(range(len(scores)), key=lambda i: scores[i])
        probes.append(
            {
                "name": probe["name"],
                "far": True,
                "distance": probe["distance"],
                "kind": probe["kind"],
                "symbol": probe["symbol"],
                "correct": int(best == probe["gold"]),
                "candidates": len(scores),
                "scores": scores,
            }
        )
    record["probes"] = probes

    symbols = []
    for site in sites:
        scores = []
        for candidate in site["candidates"]:
            score = float(first[site["start"]][candidate[0]])
            if len(candidate) > 1:
                logp = _continue(model, cache, site["start"], candidate)
                score += float(logp.gather(1, torch.tensor(candidate[1:], device=logp.device)[:, None]).sum())
            scores.append(round(score, 4))
        best = max(range(len(scores)), key=lambda i: scores[i])
        symbols.append(
            {
                "name": site["name"],
                "far": site["far"],
                "distance": site["distance"],
                "kind": site["kind"],
                "symbol": site["symbol"],
                "correct": int(best == site["gold"]),
                "candidates": len(scores),
                "scores": scores,
            }
        )
    del cache
    record["symbols"] = symbols
    if separate:
        record["symbols_note"] = "symbols and probes not measured: the method's angles depend on the input length"
    for key, items, field in (
        ("needle_far", needles, "exact"),
        ("needle_near", needles, "exact"),
        ("symbol_far", symbols, "correct"),
        ("symbol_near", symbols, "correct"),
        ("probe_far", probes, "correct"),
    ):
        want = key.endswith("far")
        values = [x[field] for x in items if x["far"] == want]
        if values:
            record["metrics"][key] = sum(values) / len(values)
            record["metrics"][key + "_n"] = len(values)
    return record


def _unigram_loss(ids: list[int], token_losses: list[float | None]) -> float:
    """The loss of the best unigram model fitted to the document's own scored tokens (their
    entropy, nats): a model no better than this uses no context at all."""
    counts = Counter(t for t, v in zip(ids, token_losses) if v is not None)
    total = sum(counts.values())
    return round(-sum(c / total * math.log(c / total) for c in counts.values()), 4) if total else math.nan


def _loss_metrics(token_losses: list[float | None], train_len: int, far_losses: list[float]) -> dict[str, float]:
    inside = [v for v in token_losses[:train_len] if v is not None]
    beyond = [v for v in token_losses[train_len:] if v is not None]
    metrics = {"loss_inside": sum(inside) / len(inside)}
    if beyond:
        metrics["loss_beyond"] = sum(beyond) / len(beyond)
    if far_losses:
        metrics["loss_far"] = sum(far_losses) / len(far_losses)
    return metrics
