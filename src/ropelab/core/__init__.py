"""What every other package of ropelab builds on, and which imports none of them: atomic file
writes and the home directory (:mod:`ropelab.core.io`), lengths as users write them
(:mod:`ropelab.core.lengths`), command-line argument types (:mod:`ropelab.core.args`) and status
lines (:mod:`ropelab.core.log`). Errors live in :mod:`ropelab.core.errors`."""
