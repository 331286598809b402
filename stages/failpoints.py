"""Named crash points for testing recovery: ``SPECTRAL_CORPUS_FAILPOINT=NAME`` makes the process that
reaches ``failpoint(NAME)`` kill itself with SIGKILL, as a power cut or an OOM kill would.

Unset (always, outside tests), ``failpoint`` does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "SPECTRAL_CORPUS_FAILPOINT"


def failpoint(name: str) -> None:
    """Die here, at once and uncleanly, if the environment names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
