"""``ropelab analyze``: run the analyses on every subject and write data, plots and an index.

Output directory ``OUT/``:

* ``analysis.json`` -- the configuration, every subject's model facts (angles, bands, roles) and
  each analysis' headline numbers (pattern shape, activated-band VAF, OOD score per layer,
  same-segment attention);
* ``pattern.json``, ``components.json``, ``ood.json``, ``hierarchy.json`` -- the full data of each
  analysis (curves included), keyed by subject label;
* PNG plots (:mod:`ropelab.reporting.analysis_plots`) and ``analysis.md`` embedding them
  (:mod:`ropelab.reporting.analysis`).

An analysis that cannot run for a subject (no rotary frequencies for VAF, no length beyond the
training length for OOD, a method that cannot run at a length) is recorded as
``{"skipped": reason}``; it never stops the others.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ropelab import pe
from ropelab.analysis.components import component_analysis, frequency_table
from ropelab.analysis.inputs import PROBE, STDLIB, probe_inputs, read_input_text, text_inputs
from ropelab.analysis.levels import hierarchy_analysis, uses_levels
from ropelab.analysis.measure import Measurement, has_rotation, measure
from ropelab.analysis.ood import ood_scores
from ropelab.analysis.pattern import pattern_summary
from ropelab.analysis.sources import Subject, discover
from ropelab.core.args import split_list
from ropelab.core.checks import int_between
from ropelab.core.errors import RopelabError
from ropelab.core.lengths import parse_length
from ropelab.core.machine import physical_memory
from ropelab.hierarchy import language_for_path
from ropelab.model.checkpoint import read_checkpoint_config
from ropelab.model.device import dtype_name, resolve_placement
from ropelab.pretrained.registry import load_model

ANALYSES = ("pattern", "vaf", "ood", "hierarchy")


@dataclass(kw_only=True)
class AnalyzeConfig:
    """Everything ``ropelab analyze`` was asked; stored in ``analysis.json``."""

    path: str
    out: str
    analyses: list[str] = field(default_factory=lambda: list(ANALYSES))
    lengths: list[str] = field(default_factory=lambda: ["1x", "2x"])
    methods: list[str] | None = None
    checkpoints: str = "latest"
    samples: int = 8
    seed: int = 0
    input: str = PROBE
    layers: str | None = None
    hierarchy_input: str | None = None
    hierarchy_length: int = 1024
    batch_tokens: int = 16384
    device: str = "cpu"  # cpu, cuda, cuda:N, mps or auto (ropelab.model.device)
    dtype: str = "float32"  # the weights'; q/k, angles and logits are analysed in float32 whatever it is


def parse_analyses(text: str | list[str]) -> list[str]:
    items = text if isinstance(text, list) else split_list(str(text))
    if not items:
        raise RopelabError(f"no analysis given; choose from {', '.join(ANALYSES)}")
    for item in items:
        if item not in ANALYSES:
            raise RopelabError(f"unknown analysis {item!r}; known analyses: {', '.join(ANALYSES)}")
    return [a for a in ANALYSES if a in items]


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    """``None`` -> every layer; ``0-3,7`` -> [0, 1, 2, 3, 7]; ``-1`` is the last layer."""
    if text is None or not str(text).strip():
        return list(range(n_layers))
    layers: set[int] = set()
    for item in str(text).split(","):
        item = item.strip()
        try:
            if "-" in item.lstrip("-"):
                first, last = item.split("-", 1) if not item.startswith("-") else (item, item)
                span = range(int(first), int(last) + 1)
            else:
                index = int(item)
                span = [index + n_layers if index < 0 else index]
        except ValueError:
            raise RopelabError(f"--layers: {item!r} is not a layer index or range such as 0-3") from None
        for layer in span:
            if not 0 <= layer < n_layers:
                raise RopelabError(f"--layers: layer {layer} is out of range; the model has layers 0..{n_layers - 1}")
            layers.add(layer)
    if not layers:
        raise RopelabError("--layers selects no layer")
    return sorted(layers)


def parse_lengths(items: list[str], train_len: int) -> list[int]:

    lengths = sorted({parse_length(item, train_len) for item in items})
    for length in lengths:
        if length < 2:
            raise RopelabError(f"analysis lengths must be at least 2 tokens, got {length}")
    return lengths


def check_config(config: AnalyzeConfig) -> None:
    """Reject bad options before any model is loaded."""
    config.analyses = parse_analyses(config.analyses)
    if not config.lengths:
        raise RopelabError("no length given; e.g. --lengths 1x,2x")
    parse_lengths(config.lengths, 1024)  # syntax only; the unit depends on each model's train length
    if config.samples < 1:
        raise RopelabError(f"--samples must be at least 1, got {config.samples}")
    if not int_between(config.seed, -(2**63), 2**64 - 1):
        raise RopelabError(f"--seed must be an integer in [-2**63, 2**64), got {config.seed!r}")
    if config.hierarchy_length < 2:
        raise RopelabError(f"--hierarchy-length must be at least 2, got {config.hierarchy_length}")
    if config.batch_tokens < 1:
        raise RopelabError(f"batch_tokens must be positive, got {config.batch_tokens}")
    if config.input not in (PROBE, STDLIB) and not Path(config.input).expanduser().exists():
        raise RopelabError(f"--documents {config.input!r}: not 'probe', 'stdlib' or an existing file or directory")
    if config.hierarchy_input is not None and not Path(config.hierarchy_input).expanduser().exists():
        raise RopelabError(f"--hierarchy-input {config.hierarchy_input!r}: no such file or directory")
    if config.layers is not None:
        parse_layers(config.layers, 10**6)
    device, dtype = resolve_placement(config.device, config.dtype)  # one clear error before any model loads
    config.device, config.dtype = str(device), dtype_name(dtype)


def check_memory(model_config, samples: int, lengths: list[int], layers: list[int]) -> None:
    """One :class:`RopelabError` before anything is allocated when the analysis cannot fit in this
    machine's memory (:func:`ropelab.core.machine.physical_memory`): the input ids (int64), the
    last query's float32 logits of every sample, analysed layer and head at every length, and one
    sample's activations at the longest length (a rough lower bound: a few vectors a token)."""
    memory = physical_memory()
    if memory is None:
        return
    longest, c = max(lengths), model_config
    needed = 8 * samples * longest + 4 * len(layers) * samples * c.n_heads * sum(lengths)
    needed += 4 * longest * (6 * c.dim + 3 * c.hidden_dim)
    if needed > memory:
        raise RopelabError(
            f"analysing {samples} sample(s) at lengths up to {longest} tokens over {len(layers)} layer(s) needs "
            f"at least {needed / 2**30:.1f} GiB, more than this machine's memory ({memory / 2**30:.1f} GiB); "
            "use fewer --samples, --layers or shorter --lengths"
        )


def _load(path: str, method: str | None, config: AnalyzeConfig | None = None):
    if config is None:
        return load_model(path, method=method)
    return load_model(path, method=method, device=config.device, dtype=config.dtype)


def _inputs(config: AnalyzeConfig, model, tokenizer, max_length: int):
    if config.input == PROBE:
        return probe_inputs(model.config.vocab_size, tokenizer, config.samples, config.seed)
    return text_inputs(config.input, tokenizer, config.samples, max_length)


#: The default source for the hierarchy map: real code with many top-level and nested definitions
#: early on (20 segments in its first 1024 SmolLM2 tokens).
HIERARCHY_FILE = "contextlib.py"


def _hierarchy_text(config: AnalyzeConfig) -> tuple[str, str, str]:
    """(text, language, source name) for the hierarchy map: ``--hierarchy-input``, else the
    ``--documents`` file, else the standard library's ``contextlib.py``."""
    import sysconfig

    source = config.hierarchy_input or (config.input if config.input not in (PROBE, STDLIB) else None)
    if source is None:
        source = str(Path(sysconfig.get_paths()["stdlib"]) / HIERARCHY_FILE)
    text, files = read_input_text(source, min_chars=8 * config.hierarchy_length)
    language = (language_for_path(files[0]) if files else None) or "text"
    return text, language, ", ".join(files) if files else source


class Analyzer:
    def __init__(self, config: AnalyzeConfig, log: Callable[[str], None] | None = None) -> None:
        check_config(config)
        self.config = config
        self.log = log or (lambda message: None)

    def run(self) -> dict:
        subjects = discover(self.config.path, self.config.methods, self.config.checkpoints)
        self.any_hierarchical = any(_is_hierarchical(s) for s in subjects)
        results = [self.subject(subject) for subject in subjects]
        return {"config": dataclasses.asdict(self.config), "subjects": results}

    def _measure(self, label: str, model, inputs, length: int, layers: list[int]) -> Measurement:
        start = time.perf_counter()
        result = measure(model, inputs, length, layers, self.config.batch_tokens)
        self.log(
            f"[{label}] length {length}: {inputs.samples} sample(s), {len(layers)} layer(s) "
            f"in {time.perf_counter() - start:.1f} s"
        )
        return result

    def subject(self, subject: Subject) -> dict:
        config = self.config
        checkpoint = subject.final
        self.log(f"[{subject.label}] loading {checkpoint.path}" + (f" as {subject.method}" if subject.method else ""))
        model, tokenizer = _load(checkpoint.path, subject.method, config)
        train_len = model.config.train_len
        lengths = parse_lengths(config.lengths, train_len)
        layers = parse_layers(config.layers, model.config.n_layers)
        inside = [n for n in lengths if n <= train_len]
        beyond = [n for n in lengths if n > train_len]
        vaf_length = max(inside) if inside else lengths[0]
        needed = set()
        if "pattern" in config.analyses:
            needed |= set(lengths)
        if "vaf" in config.analyses and has_rotation(model):
            needed.add(vaf_length)
        if "ood" in config.analyses and inside and beyond:
            needed |= {max(inside), max(beyond)}
        result: dict = {
            "label": subject.label,
            "source": subject.source,
            "kind": subject.kind,
            "method": model.pe.spec,
            "checkpoint": checkpoint.path,
            "step": checkpoint.step,
            "model": {
                **frequency_table(model),
                "n_layers": model.config.n_layers,
                "n_heads": model.config.n_heads,
                "n_kv_heads": model.config.n_kv_heads,
                "rope_layout": model.config.rope_layout,
            },
            "lengths": lengths,
            "analysed_layers": layers,
            "errors": {},
        }
        measurements: dict[int, Measurement] = {}
        inputs = None
        if needed:
            check_memory(model.config, config.samples, sorted(needed), layers)
            inputs = _inputs(config, model, tokenizer, max(needed))
            result["inputs"] = inputs.describe()
            for length in sorted(needed):
                try:
                    measurements[length] = self._measure(subject.label, model, inputs, length, layers)
                except RopelabError as error:  # e.g. learned absolute positions past their table
                    result["errors"][str(length)] = str(error)
                    self.log(f"[{subject.label}] length {length}: {error}")
        first_key = 1

        if "pattern" in config.analyses:
            done = [pattern_summary(measurements[n], train_len, first_key) for n in lengths if n in measurements]
            result["pattern"] = done if done else {"skipped": "no length could be measured"}
        if "vaf" in config.analyses:
            result["components"] = self._components(subject, model, measurements, vaf_length, inputs, layers)
        if "ood" in config.analyses:
            result["ood"] = self._ood(measurements, inside, beyond, train_len, first_key)
        if "hierarchy" in config.analyses:
            result["hierarchy"] = self._hierarchy(subject, model, tokenizer, layers)
        return result

    def _components(self, subject, model, measurements, vaf_length, inputs, layers) -> dict:
        if not has_rotation(model):
            return {"skipped": f"{model.pe.spec} has no rotary frequencies to decompose"}
        if vaf_length not in measurements:
            return {"skipped": f"length {vaf_length} could not be measured"}
        table = frequency_table(model, vaf_length)
        analysis = component_analysis(measurements[vaf_length], table)
        series = []
        for checkpoint in subject.checkpoints[:-1]:
            earlier, _ = _load(checkpoint.path, subject.method, self.config)
            label = f"{subject.label} @ step {checkpoint.step}"
            item = component_analysis(self._measure(label, earlier, inputs, vaf_length, layers), table)
            series.append(_series_entry(checkpoint, item))
            del earlier
        if series:
            series.append(_series_entry(subject.final, analysis))
        analysis["series"] = series
        return analysis

    def _ood(self, measurements, inside, beyond, train_len, first_key) -> dict:
        if not inside or not beyond:
            return {
                "skipped": f"needs a length <= the train length {train_len} and one beyond it (e.g. --lengths 1x,2x)"
            }
        short, long = max(inside), max(beyond)
        if short not in measurements or long not in measurements:
            return {"skipped": f"length {short if short not in measurements else long} could not be measured"}
        return ood_scores(measurements[short], measurements[long], train_len, first_key)

    def _hierarchy(self, subject, model, tokenizer, layers) -> dict:
        # a non-hierarchical subject gets the map too when it is the baseline of a hierarchical one
        wanted = uses_levels(model) or self.any_hierarchical or self.config.analyses == ["hierarchy"]
        if not wanted:
            return {"skipped": f"{model.pe.spec} reads no hierarchical positions"}
        text, language, source = _hierarchy_text(self.config)
        start = time.perf_counter()
        try:
            analysis = hierarchy_analysis(model, tokenizer, text, language, self.config.hierarchy_length, layers)
        except RopelabError as error:  # e.g. learned absolute positions shorter than the map
            self.log(f"[{subject.label}] hierarchy map: {error}")
            return {"skipped": str(error)}
        analysis["source"] = source
        self.log(f"[{subject.label}] hierarchy map: {analysis['length']} tokens in {time.perf_counter() - start:.1f} s")
        return analysis


def _is_hierarchical(subject: Subject) -> bool:
    """Whether the subject's method reads hierarchical positions, without loading its weights."""

    spec = subject.method
    if spec is None:
        try:
            spec = read_checkpoint_config(subject.final.path).get("pe")
        except RopelabError:
            return False  # a registry name, .gguf or HF directory: plain RoPE
    try:
        return bool(pe.build(spec, pe.PEContext(head_dim=64, n_heads=1, train_len=512)).uses_hierarchy)
    except RopelabError:
        return False


def _series_entry(checkpoint, analysis: dict) -> dict:
    return {
        "step": checkpoint.step,
        "checkpoint": checkpoint.path,
        "vaf": analysis["vaf"],
        "vaf_centered": analysis["vaf_centered"],
        "vaf_bands": analysis["vaf_bands"],
    }


def analyze(config: AnalyzeConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run every requested analysis; returns the data that
    :func:`ropelab.reporting.analysis.write_outputs` writes to ``config.out``."""
    return Analyzer(config, log).run()
