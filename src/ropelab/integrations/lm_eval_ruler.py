"""RULER (Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context Language
Models?", arXiv:2404.06654) on ropelab models, through lm-evaluation-harness's ``ruler`` tasks, offline.

    ropelab-lm-eval --model ropelab --model_args pretrained=smollm2-135m,method=hirope \\
        --tasks niah_single_1 --metadata '{"max_seq_lengths": "2x"}' --device cpu --limit 20

lm-eval's RULER tasks build their inputs when they load: each sizes its prompts to the lengths in
``metadata["max_seq_lengths"]`` with a tokenizer it loads by name (``AutoTokenizer.from_pretrained``
of the ``tokenizer``, else ``pretrained`` argument). A ropelab name (``smollm2-135m``, a checkpoint
directory) is no Hugging Face name, so :func:`prepare` (which ``ropelab-lm-eval`` runs on its
command line when ``--model ropelab`` meets a RULER task) hands the tasks

* ``tokenizer``: the model's own tokenizer -- the one :func:`ropelab.integrations.hf.load` gives
  the model -- saved as a Hugging Face tokenizer directory in ropelab's cache (:func:`tokenizer_dir`),
  so prompts are sized in the tokens the model reads and nothing is fetched;
* ``max_seq_lengths`` as ropelab writes lengths (``1x``, ``2x`` times the train length, ``8k``,
  ``8192``; :func:`ropelab.core.lengths.parse_length`), as token counts;
* ``max_length`` for the model (unless given): the longest length plus :data:`ANSWER_ROOM`. RULER
  counts a prompt plus its answer budget against the length, and lm-eval appends the answer
  prefix (``gen_prefix``) to the prompt, so the model needs a few tokens more than the nominal
  length; with HFLM's default (the train length) a longer prompt would lose its beginning -- the
  instruction -- silently. A ``max_length`` given that is too short is refused.

It also imports lm-eval's needle generator with ``nltk.download`` disabled: the module downloads
nltk's ``punkt_tab`` sentence splitter when it is imported, and only the essay haystacks use it.

Offline tasks (:data:`OFFLINE`): their haystacks are synthetic. Tasks that need a download
(:data:`NEEDS_DOWNLOAD`): the essay haystacks (Paul Graham's essays, from the Hugging Face hub, split
into sentences by nltk's ``punkt_tab``) and the two QA tasks (SQuAD 2.0, HotpotQA); they run where
those can be fetched. ``docs/evaluation.md`` ("RULER") says more.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from ropelab.core.errors import RopelabError
from ropelab.core.io import ropelab_home
from ropelab.core.lengths import parse_length
from ropelab.core.log import log

#: RULER tasks whose inputs lm-eval generates offline: task -> what it asks
OFFLINE = {
    "niah_single_1": "one needle (word key, 7-digit number) in a repeated-sentence haystack (passkey retrieval)",
    "niah_multikey_2": "one needle among a haystack of needles (word keys, numbers)",
    "niah_multikey_3": "one needle among a haystack of needles (UUID keys, UUIDs)",
    "ruler_vt": "variable tracking: the 5 names of one chain of assignments hidden in repeated noise",
    "ruler_cwe": "common word extraction: the 10 most common words of a numbered word list",
    "ruler_fwe": "frequent word extraction: the 3 most frequent coded words of a Zipf-distributed text",
}
_ESSAYS = "Paul Graham's essays (Hugging Face dataset baber/paul_graham_essays) and nltk's punkt_tab"
#: RULER tasks that need data from the network: task -> what they download
NEEDS_DOWNLOAD = {
    "niah_single_2": _ESSAYS,
    "niah_single_3": _ESSAYS,
    "niah_multikey_1": _ESSAYS,
    "niah_multiquery": _ESSAYS,
    "niah_multivalue": _ESSAYS,
    "ruler_qa_squad": "the SQuAD 2.0 dev set (rajpurkar.github.io)",
    "ruler_qa_hotpot": "the HotpotQA dev set (Hugging Face hub)",
}
TASKS = {**OFFLINE, **NEEDS_DOWNLOAD}
#: lm-eval's names for all 13 tasks: the group ``ruler`` and the tag ``longcxt``
GROUPS = ("ruler", "longcxt")
#: what RULER's task files default to when no ``max_seq_lengths`` is given
DEFAULT_LENGTHS = (4096,)
#: tokens the model needs beyond the nominal length: the longest answer lm-eval generates for a
#: RULER task (128, the needle tasks' ``max_gen_toks``; RULER counts it in the length) covers the
#: answer prefix lm-eval appends to the prompt (up to about 50 tokens, two UUIDs' worth)
ANSWER_ROOM = 128
#: the shortest length each task can fill: ``ruler_vt`` puts a worked example of up to 500 tokens
#: before the question (lm-eval's generator then loops forever when the rest does not fit)
MIN_LENGTH = {"ruler_vt": 1024}
MIN_LENGTH_DEFAULT = 512
#: the extra packages lm-eval's RULER files import (every task's file includes the needle tasks')
PACKAGES = ("wonderwords", "nltk", "scipy")
INSTALL = "pip install 'ropelab[ruler]'"


def ruler_tasks(tasks: Iterable[str]) -> list[str]:
    """The RULER tasks among lm-eval task names (``a,b`` items split; a group stands for its 13)."""
    names = [name.strip() for item in tasks for name in str(item).split(",") if name.strip()]
    if any(name in GROUPS for name in names):
        return list(TASKS)
    return [name for name in names if name in TASKS]


def train_length(pretrained: str | os.PathLike) -> int:
    """The training length of a model (what ``1x`` means), read from its config, not its weights."""
    from ropelab.model.checkpoint import checkpoint_model_config
    from ropelab.pretrained.registry import resolve

    directory, kind = resolve(pretrained)
    if kind == "checkpoint":
        return checkpoint_model_config(directory).train_len
    import transformers

    from ropelab.integrations.hf import config_entry

    config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True)
    entry = config_entry(config) or {}
    return int(entry.get("train_len") or config.max_position_embeddings)


def lengths(spec, train_len: int | None = None, *, pretrained: str | os.PathLike | None = None) -> list[int]:
    """``max_seq_lengths`` as token counts, sorted, without repeats: ``spec`` is a length, a list of
    lengths or a comma-separated string (``"1x,2x"``, ``"8k"``, ``[8192, "2x"]``); ``x`` multiplies
    ``train_len``, read from ``pretrained`` when not given."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [spec] if isinstance(spec, int) else spec
    if not isinstance(items, list | tuple) or not items or any(not isinstance(i, str | int) for i in items):
        raise RopelabError(f"max_seq_lengths must be a list of lengths such as [8192, 16384] or '1x,2x', got {spec!r}")
    texts = [str(item) for item in items]
    if train_len is None and any("x" in t.lower() for t in texts):
        if pretrained is None:
            raise RopelabError(f"max_seq_lengths {spec!r}: a length in train-length multiples needs the model")
        train_len = train_length(pretrained)
    return sorted({parse_length(t, train_len or 1) for t in texts})


def tokenizer_dir(pretrained: str | os.PathLike) -> Path:
    """The tokenizer :func:`ropelab.integrations.hf.load` gives ``pretrained`` (a registry name, a
    ``.gguf`` file, a ropelab checkpoint or a Hugging Face directory), saved with
    ``save_pretrained`` under ``$ROPELAB_HOME/lm-eval-tokenizers/<sha256 of its files>``, a
    directory ``transformers.AutoTokenizer.from_pretrained`` loads offline."""
    import transformers

    from ropelab.pretrained.registry import load_tokenizer, resolve

    directory, kind = resolve(pretrained)
    if kind == "hf" and (directory / "tokenizer_config.json").is_file():
        tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    elif (directory / "tokenizer.json").is_file():
        ours = load_tokenizer(directory)  # its special tokens as hf.load sets them (special_tokens.json)
        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=ours.backend)
        for attribute, token_id in (("bos_token", ours.bos_id), ("eos_token", ours.eos_id)):
            if token_id is not None and (token := ours.backend.id_to_token(int(token_id))) is not None:
                setattr(tokenizer, attribute, token)
    else:
        raise RopelabError(
            f"{pretrained}: no tokenizer.json beside the model, so RULER cannot size its prompts; "
            "pass tokenizer=PATH (a Hugging Face tokenizer directory) in model_args"
        )
    root = ropelab_home() / "lm-eval-tokenizers"
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="tokenizer.", dir=root))
    try:
        tokenizer.save_pretrained(str(scratch))
        digest = hashlib.sha256()
        for path in sorted(scratch.iterdir()):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        target = root / digest.hexdigest()[:16]
        if not target.is_dir():
            with contextlib.suppress(OSError):  # another process published the same files first
                scratch.rename(target)
        return target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_lengths(tasks: Iterable[str], sizes: Iterable[int]) -> None:
    """One :class:`RopelabError` for a length shorter than a task can fill (:data:`MIN_LENGTH`)."""
    shortest = min(sizes)
    for task in tasks:
        floor = MIN_LENGTH.get(task, MIN_LENGTH_DEFAULT)
        if shortest < floor:
            raise RopelabError(f"{task} needs lengths of at least {floor} tokens, got {shortest}")


def check_packages() -> None:
    """One :class:`RopelabError` naming the extra packages RULER imports that are missing."""
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise RopelabError(f"RULER's tasks need {', '.join(missing)}: {INSTALL}")


def import_needle_generator() -> None:
    """Import lm-eval's needle generator (``lm_eval.tasks.ruler.prepare_niah``) with
    ``nltk.download`` disabled: it downloads ``punkt_tab`` on import, which only the essay
    haystacks use. Every RULER task file includes the needle tasks' file, so loading any task
    imports it; later imports find it in ``sys.modules``. Imported here, before lm-eval seeds its
    generators, its import does not shift the random inputs of the first task. Takes seconds:
    the module builds its list of 6 million adjective-noun keys."""
    if "lm_eval.tasks.ruler.prepare_niah" in sys.modules:
        return
    import nltk

    real = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its "Downloaded punkt_tab" line, untrue here
            import lm_eval.tasks.ruler.prepare_niah  # noqa: F401
    finally:
        nltk.download = real


def prepare(tasks: Iterable[str], model_args: Mapping, metadata: Mapping | None = None) -> tuple[dict, dict]:
    """``(model_args, metadata)`` for lm-eval's ``ropelab`` model and RULER ``tasks`` (module
    docstring): ``metadata`` gains ``tokenizer`` and ``max_seq_lengths`` as token counts,
    ``model_args`` its ``max_length``. Unchanged copies when no RULER task is asked for.

        model_args, metadata = prepare(["niah_single_1"], {"pretrained": "smollm2-135m"},
                                       {"max_seq_lengths": "1x,2x"})
        lm_eval.simple_evaluate(model="ropelab", model_args=model_args, tasks=["niah_single_1"],
                                metadata=metadata)
    """
    model_args, metadata = dict(model_args or {}), dict(metadata or {})
    names = ruler_tasks(tasks)
    if not names:
        return model_args, metadata
    pretrained = model_args.get("pretrained")
    if not isinstance(pretrained, str | os.PathLike) or not str(pretrained):
        raise RopelabError("RULER tasks need the model as pretrained=NAME in model_args")
    train_len = model_args.get("train_len")
    train_len = parse_length(str(train_len), 1) if train_len not in (None, "") else None
    sizes = lengths(metadata.get("max_seq_lengths", list(DEFAULT_LENGTHS)), train_len, pretrained=pretrained)
    check_lengths(names, sizes)
    need = sizes[-1] + ANSWER_ROOM
    given = model_args.get("max_length")
    if given in (None, ""):
        model_args["max_length"] = need
    elif parse_length(str(given), 1) < need:
        raise RopelabError(
            f"max_length={given} cannot hold RULER's longest prompt: {sizes[-1]} tokens plus up to {ANSWER_ROOM} "
            f"of answer and answer prefix; give max_length >= {need} or leave it out"
        )
    check_packages()
    downloads = [task for task in names if task in NEEDS_DOWNLOAD]
    if downloads:
        log(f"RULER tasks {', '.join(downloads)} download their data (not offline): {'; '.join(_needs(downloads))}")
    import_needle_generator()
    tokenizer = metadata.get("tokenizer") or model_args.get("tokenizer") or str(tokenizer_dir(pretrained))
    metadata.update(tokenizer=str(tokenizer), max_seq_lengths=sizes)
    return model_args, metadata


def _needs(tasks: list[str]) -> list[str]:
    by_source: dict[str, list[str]] = {}
    for task in tasks:
        by_source.setdefault(NEEDS_DOWNLOAD[task], []).append(task)
    return [f"{', '.join(names)}: {source}" for source, names in by_source.items()]


def prepare_command_line(args) -> None:
    """:func:`prepare` on lm-eval's parsed ``run`` command line (its ``argparse.Namespace``: ``model``,
    ``tasks``, ``model_args``, ``metadata`` and ``limit`` as lm-eval 0.4.13 parses them), in place.

    ``--limit N`` with several lengths is refused: lm-eval puts a task's inputs for all lengths in
    one list, shortest length first, and ``--limit`` takes the first N of it -- all of one length."""
    if getattr(args, "model", None) != "ropelab" or not isinstance(getattr(args, "model_args", None), dict):
        return
    raw = (args.metadata or {}).get("max_seq_lengths", ())
    items = raw.split(",") if isinstance(raw, str) else raw if isinstance(raw, list | tuple) else [raw]
    several = len({str(item).strip() for item in items}) > 1
    if several and getattr(args, "limit", None) and ruler_tasks(args.tasks or []):
        raise RopelabError(
            "--limit takes a task's first inputs, which are all of its shortest length; with --limit give one "
            "length per run (or use python -m bench ruler, which runs every length)"
        )
    model_args, metadata = prepare(args.tasks or [], args.model_args, args.metadata)
    args.model_args, args.metadata = model_args, metadata or args.metadata
