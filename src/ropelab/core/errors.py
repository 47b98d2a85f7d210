"""Errors ropelab raises for bad input.

Every user-facing problem (an unknown method name, a bad parameter, a truncated checkpoint, a
length out of range) is a :class:`RopelabError`: the CLI prints its message as one line and exits
with status 2 instead of showing a traceback.
"""


class RopelabError(ValueError):
    """A problem with what the user asked for; the message says what and how to fix it."""


class SpecError(RopelabError):
    """A position-method spec string that cannot be parsed or validated."""


class CheckpointError(RopelabError):
    """A checkpoint that is missing, truncated, or does not match its config."""
