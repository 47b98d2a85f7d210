"""ropelab's Llama-family model, its named configs, decoding and checkpoints (real pretrained weights
load through :mod:`ropelab.pretrained`)."""

from ropelab.model.checkpoint import load_checkpoint, save_checkpoint
from ropelab.model.config import CONFIGS, ModelConfig
from ropelab.model.generate import generate, stream
from ropelab.model.transformer import KVCache, Transformer

__all__ = [
    "CONFIGS",
    "KVCache",
    "ModelConfig",
    "Transformer",
    "generate",
    "load_checkpoint",
    "save_checkpoint",
    "stream",
]
