"""The HoPE paper's from-scratch comparison (``ropelab experiment hope``): :mod:`.config` (the
settings and the models), :mod:`.run` (train, evaluate, analyse; resumable), :mod:`.report`."""
