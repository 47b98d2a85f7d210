"""What the analyses feed the model: the HoPE paper's probe, or windows of real text.

* **Probe** (HoPE paper, Section 3.1): ``[BOS] t t t ... t`` -- one random token ``t`` repeated
  at every position after the beginning-of-sequence token. Sample ``s`` uses the same token at
  every length (drawn once from ``seed``), so the in-range and beyond-range runs of the OOD check
  see the same inputs. Special tokens of the tokenizer are never drawn. The first token is the
  tokenizer's BOS, else its EOS (a document separator is what such a model saw at document
  starts), else the repeated token itself (recorded as ``"bos": null``).
* **Text**: ``samples`` windows of a token stream (a file, a directory of ``.py`` files, or
  ``stdlib``: real Python code from the running interpreter's standard library), each starting
  with the same BOS rule; window ``s`` at a shorter length is a prefix of window ``s`` at a longer
  one.

Key position 0 (the BOS / first token, an attention sink in most models) is left out of every
statistic; its logit is reported separately.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ropelab.core.errors import RopelabError

PROBE = "probe"
STDLIB = "stdlib"
#: Real code for ``--documents stdlib``: long, ordinary modules (no giant data literals), in this order.
STDLIB_FILES = ("argparse.py", "inspect.py", "typing.py", "dataclasses.py", "pathlib.py", "subprocess.py")


def special_ids(tokenizer) -> set[int]:
    if tokenizer is None:
        return set()
    ids = {i for i in (tokenizer.bos_id, tokenizer.eos_id) if i is not None}
    try:
        ids |= {int(i) for i, token in tokenizer.backend.get_added_tokens_decoder().items() if token.special}
    except AttributeError:  # an old tokenizers without the added-tokens table
        pass
    return ids


def first_token(tokenizer) -> int | None:
    if tokenizer is None:
        return None
    return tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id


@dataclass
class Inputs:
    """A source of ``samples`` input rows at any length; ``batches(length)`` yields ``[b, length]``."""

    kind: str  # "probe" or "text"
    samples: int
    bos: int | None
    tokens: Tensor | None = None  # probe: the repeated token of each sample
    stream: Tensor | None = None  # text: the token stream windows are cut from
    starts: list[int] = field(default_factory=list)  # text: where each sample's window starts
    source: str = ""
    files: list[str] = field(default_factory=list)

    def rows(self, length: int) -> Tensor:
        """All ``[samples, length]`` rows (int64)."""
        if length < 2:
            raise RopelabError(f"analysis lengths must be at least 2 tokens, got {length}")
        if self.kind == PROBE:
            rows = self.tokens[:, None].expand(-1, length).clone()
        else:
            body = length - (self.bos is not None)
            available = self.stream.numel()
            if self.starts[-1] + body > available:
                raise RopelabError(
                    f"{self.source}: has {available} tokens, too few for {self.samples} window(s) of {length}"
                )
            rows = torch.stack([self.stream[start : start + body] for start in self.starts])
            if self.bos is not None:
                rows = torch.cat((torch.full((self.samples, 1), self.bos, dtype=torch.long), rows), dim=1)
        if self.bos is not None and self.kind == PROBE:
            rows[:, 0] = self.bos
        return rows

    def batches(self, length: int, batch_tokens: int) -> Iterator[Tensor]:
        rows = self.rows(length)
        size = max(1, batch_tokens // length)
        for start in range(0, self.samples, size):
            yield rows[start : start + size]

    def describe(self) -> dict:
        info = {"kind": self.kind, "samples": self.samples, "bos": self.bos}
        if self.kind == PROBE:
            info["tokens"] = self.tokens.tolist()
        else:
            info.update(source=self.source, files=self.files, stream_tokens=int(self.stream.numel()))
        return info


def probe_inputs(vocab_size: int, tokenizer, samples: int, seed: int) -> Inputs:
    """The repeated-random-token probe; tokens are drawn uniformly from non-special ids."""
    if samples < 1:
        raise RopelabError(f"samples must be at least 1, got {samples}")
    limit = vocab_size if tokenizer is None else min(vocab_size, tokenizer.vocab_size)
    excluded = special_ids(tokenizer)
    allowed = torch.tensor([i for i in range(limit) if i not in excluded], dtype=torch.long)
    if not allowed.numel():
        raise RopelabError("the vocabulary has no ordinary token to build the probe from")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, allowed.numel(), (samples,), generator=generator)
    return Inputs(PROBE, samples, first_token(tokenizer), tokens=allowed[picks], source=PROBE)


def stdlib_code(min_chars: int) -> tuple[str, list[str]]:
    """Real Python code from the interpreter's standard library (:data:`STDLIB_FILES` first)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    names = [*STDLIB_FILES, *sorted(p.name for p in root.glob("*.py") if p.name not in STDLIB_FILES)]
    parts, used, total = [], [], 0
    for name in names:
        try:
            text = (root / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text if text.endswith("\n") else text + "\n")
        used.append(name)
        total += len(text)
        if total >= min_chars:
            break
    return "".join(parts), used


def read_input_text(source: str, min_chars: int) -> tuple[str, list[str]]:
    """Text of ``source``: ``stdlib``, a file, or a directory (its ``.py`` files, sorted)."""
    if source == STDLIB:
        return stdlib_code(min_chars)
    path = Path(source).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.rglob("*.py"))
        if not files:
            raise RopelabError(f"{path}: no .py files to read")
    else:
        raise RopelabError(f"--documents {source!r}: not 'probe', 'stdlib', a file or a directory")
    parts = []
    for file in files:
        parts.append(file.read_bytes().decode("utf-8", errors="replace"))
        if sum(map(len, parts)) >= min_chars:
            break
    return "".join(parts), [str(f) for f in files[: len(parts)]]


def text_inputs(source: str, tokenizer, samples: int, max_length: int) -> Inputs:
    """Windows of real text; needs the model's tokenizer."""
    if tokenizer is None:
        raise RopelabError("text input needs a tokenizer, and this model has no tokenizer.json")
    if samples < 1:
        raise RopelabError(f"samples must be at least 1, got {samples}")
    text, files = read_input_text(source, min_chars=6 * samples * max_length)
    stream = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    bos = first_token(tokenizer)
    body = max_length - (bos is not None)
    if stream.numel() < body:
        raise RopelabError(f"--documents {source}: has {stream.numel()} tokens, fewer than the {max_length} asked for")
    # disjoint windows when the text is long enough, evenly overlapping otherwise; the same starts
    # at every length, so a shorter window is a prefix of the longer one
    stride = 0 if samples == 1 else min(body, (stream.numel() - body) // (samples - 1))
    starts = [s * stride for s in range(samples)]
    return Inputs("text", samples, bos, stream=stream, starts=starts, source=source, files=files)
