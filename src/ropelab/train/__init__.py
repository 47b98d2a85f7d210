"""Training from scratch: ``train(TrainConfig(...), out)`` and ``ropelab train`` / ``ropelab experiment``.

    from ropelab.train import TrainConfig, train
    result = train(TrainConfig(pe="hope", model_config="tiny", train_len=256, steps=200), "runs/hope")

A run directory holds ``train_config.json``, ``log.jsonl`` and ``checkpoints/step-NNNNNN/`` (each a
normal ropelab checkpoint with its tokenizer; the newest also holds the state to resume) plus
``checkpoints/latest.json``. See :mod:`ropelab.train.trainer` (the loop, resume, DDP),
:mod:`ropelab.train.config` (settings and the LR schedule), :mod:`ropelab.train.state`
(checkpoint files) and :mod:`ropelab.experiments.hope.run` (the HoPE paper's comparison).
"""

from ropelab.train.config import TrainConfig, learning_rate
from ropelab.train.trainer import TrainResult, read_log, train

__all__ = ["TrainConfig", "TrainResult", "learning_rate", "read_log", "train"]
