"""HiRoPE's L -> L^2 claim on a short-context code model (``ropelab experiment hirope``):
:mod:`.config` (the settings and the methods), :mod:`.run` (train, measure; resumable), :mod:`.report`."""
