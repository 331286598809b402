"""How a run reports progress: stage lines through logging, task counts through a callback.

The library never draws anything: it logs one line per stage (logger ``spectral_corpus.pipeline``,
level INFO) and calls ``BuildOptions.progress(stage, done, total)`` as Dask tasks finish. The command
line turns the calls into progress bars (``TaskBars``); a notebook or a scheduler may log them instead.
"""

from __future__ import annotations

import logging
from typing import Protocol

from tqdm import tqdm

log = logging.getLogger("spectral_corpus.pipeline")


class Progress(Protocol):
    """Told ``done`` of ``total`` tasks of ``stage`` are finished: first with 0, last with ``total``."""

    def __call__(self, stage: str, done: int, total: int) -> None: ...


class TaskBars:
    """A Progress that draws one tqdm bar per stage on stderr."""

    def __init__(self) -> None:
        self._bar: tqdm | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if total == 0:  # a stage with nothing to do draws nothing
            return
        if done == 0:
            self._close()
            self._bar = tqdm(total=total, desc=f"{stage:<11}", unit="task")
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            if done == total:
                self._close()

    def close(self) -> None:
        """End the bar of the stage in progress (a run that failed leaves one open)."""
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
