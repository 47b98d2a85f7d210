"""ropelab: positional encodings and context-length extrapolation for transformer language models.

>>> from ropelab import ModelConfig, Transformer
>>> model = Transformer(ModelConfig.from_name("tiny", pe="hope"))
>>> model.with_method("hope+yarn:factor=2")  # switch methods without touching the weights
"""

from ropelab.core.errors import CheckpointError, RopelabError, SpecError
from ropelab.core.version import __version__
from ropelab.model import KVCache, ModelConfig, Transformer, generate, load_checkpoint, save_checkpoint
from ropelab.pretrained import load_model

__all__ = [
    "CheckpointError",
    "KVCache",
    "ModelConfig",
    "RopelabError",
    "SpecError",
    "Transformer",
    "__version__",
    "generate",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]
