"""One writer at a time: an advisory lock on ``CORPUS/.writer.lock``.

The kernel releases the lock when its holder dies, even by SIGKILL, so a crashed writer never
leaves a stale lock behind. The file records who holds it, for the message the next writer sees.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from spectral_corpus.pipeline.errors import CorpusLockedError, PipelineError


@contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold the corpus's writer lock for the block; raise CorpusLockedError at once if it is taken."""
    path = root / ".writer.lock"
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+")
    except OSError as error:
        raise PipelineError(f"{root} cannot be written: {error.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CorpusLockedError(
                f"{root} is being written by {holder}; wait for it to finish (the lock frees itself if it dies)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
