"""ropelab: positional encodings and context-length extrapolation for transformer language models.

>>> from ropelab import ModelConfig, Transformer
>>> model = Transformer(ModelConfig.from_name("tiny", pe="hope"))
>>> model.with_method("hope+yarn:factor=2")  # switch methods without touching the weights
"""

from ropelab.errors import CheckpointError, RopelabError, SpecError
from ropelab.model import KVCache, ModelConfig, Transformer, generate, load_checkpoint, load_model, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "KVCache",
    "ModelConfig",
    "RopelabError",
    "SpecError",
    "Transformer",
    "generate",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]
