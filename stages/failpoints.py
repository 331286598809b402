"""Named crash points for testing recovery: ``SPECTRAL_CORPUS_FAILPOINT=NAME`` makes the process that
reaches ``failpoint(NAME)`` kill itself with SIGKILL, as a power cut or an OOM kill would.

With ``SPECTRAL_CORPUS_FAILPOINT_ONCE=FILE`` only the first process to get there dies (it creates
``FILE``; whoever finds it there goes on): one worker of a cluster is lost, and the retry of its task
runs through.

Unset (always, outside tests), ``failpoint`` does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "SPECTRAL_CORPUS_FAILPOINT"
ONCE_ENV = "SPECTRAL_CORPUS_FAILPOINT_ONCE"


def failpoint(name: str) -> None:
    """Die here, at once and uncleanly, if the environment names this point."""
    if os.environ.get(ENV) != name:
        return
    once = os.environ.get(ONCE_ENV)
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
