"""One writer at a time, on disk and in a bucket.

On disk: an advisory lock (``flock``) on ``CORPUS/.writer.lock``. The kernel releases it when its holder
dies, even by SIGKILL, so a crashed writer never leaves a stale lock; the file records who holds it.

In a bucket there is no lock, so the writer takes a *lease*: the object ``.writer.lock`` holds who
writes and until when. It is taken by a conditional PUT (``If-None-Match: *`` when there is none,
``If-Match`` on the ETag of an expired or released one), renewed the same way by a heartbeat every
third of its term, and released by a conditional PUT that marks it released. Of two writers racing for
it, the store lets exactly one conditional PUT through. A holder that dies (SIGKILL, a lost machine)
stops renewing, and its lease expires after ``SPECTRAL_CORPUS_LEASE_SECONDS`` (default 60), so the
next writer takes it over then; a writer on the holder's own machine takes it over at once when the
holder's process is gone (a re-run after a crash does not wait).

Why this is safe, with the commit (``stages.commit``):

- Two writers never both publish. Publishing is one conditional PUT of ``CURRENT`` from version N to
  N+1 on the ETag read just before it; the store lets only one writer move it from N. This holds even
  if leases go wrong (clocks far apart, a holder frozen past its term). An ETag names the object's
  content, and ``CURRENT`` only ever grows, so a tag never comes back to mean a later state.
- A reader of version N is never disturbed. Version N's tables are written once, before ``CURRENT``
  names N; a writer only writes the folder of the version after the published one, creating each file
  (``If-None-Match``), never replacing one, and stops when a file is already there. Shards and the
  work state are written only under the lease; shards of published versions are never rewritten.
- A crash leaves nothing half-visible: without the last PUT of ``CURRENT`` nothing of the run is
  published, and a re-run removes the unpublished folder and resumes from the work state.

The lease keeps a second writer from working at all while the first one lives. It relies on clocks
agreeing to well within the term, and on the holder confirming it still holds the lease right before
publishing (``Lease.confirm``); what a frozen holder could still do after its term is bounded by the
two points above.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spectral_corpus.corpus_files import CorpusFiles, LocalFiles, WriteConflict, corpus_files
from spectral_corpus.corpus_format import WRITER_LOCK, json_bytes
from spectral_corpus.pipeline.errors import CorpusLockedError, PipelineError

LEASE_ENV = "SPECTRAL_CORPUS_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0


class Lease:
    """Held for the block of ``writer_lock``; ``confirm`` before publishing."""

    def confirm(self) -> None:
        """Raise CorpusLockedError if this writer no longer holds the corpus (never, for a kernel lock)."""


@contextmanager
def writer_lock(root: str | Path) -> Iterator[Lease]:
    """Hold the corpus's writer lock for the block; raise CorpusLockedError at once if it is taken."""
    files = corpus_files(root)
    if isinstance(files, LocalFiles):
        with _file_lock(files.path):
            yield Lease()
        return
    lease = ObjectLease(files, _lease_seconds())
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()


def _holder() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"


@contextmanager
def _file_lock(root: Path) -> Iterator[None]:
    path = root / WRITER_LOCK
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
        handle.write(_holder())
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lease_seconds() -> float:
    text = os.environ.get(LEASE_ENV, str(DEFAULT_LEASE_SECONDS))
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise PipelineError(f"{LEASE_ENV}={text!r} is not a positive number of seconds")
    return seconds


class ObjectLease(Lease):
    """The writer lease of a corpus in a bucket (see the module's docstring)."""

    def __init__(self, files: CorpusFiles, seconds: float) -> None:
        self.files, self.seconds = files, seconds
        self.holder = _holder()
        self._tag: str | None = None
        self._lost = False
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="corpus-lease", daemon=True)

    def acquire(self) -> None:
        data, tag = self.files.read_tagged(WRITER_LOCK)
        if data is not None:
            held = json.loads(data)
            if _in_force(held):
                until = datetime.fromtimestamp(held["expires"], UTC)
                raise CorpusLockedError(
                    f"{self.files.root} is being written by {held.get('holder', 'another writer')} "
                    f"(its lease runs to {until:%H:%M:%S} UTC and is renewed while it works); wait for it to "
                    "finish, or for the lease to expire if that writer died"
                )
        try:
            self._tag = self.files.write_if(WRITER_LOCK, self._document(), tag)
        except WriteConflict:
            raise CorpusLockedError(f"{self.files.root} was taken by another writer just now") from None
        self._heartbeat.start()

    def confirm(self) -> None:
        """Renew the lease now; CorpusLockedError if another writer has taken it over."""
        with self._mutex:
            if not self._lost:
                try:
                    self._tag = self.files.write_if(WRITER_LOCK, self._document(), self._tag)
                    return
                except WriteConflict:
                    self._lost = True
        raise CorpusLockedError(
            f"{self.files.root}: this writer's lease expired and another writer took the corpus over; "
            "nothing of this run was published"
        )

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join()
        with self._mutex:
            if not self._lost:
                with suppress(WriteConflict):  # taken over already: nothing of ours to release
                    self.files.write_if(WRITER_LOCK, self._document(released=True), self._tag)

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.confirm()
            except CorpusLockedError:
                return
            except Exception:
                continue  # the store did not answer: try again; confirm() before publishing will tell

    def _document(self, released: bool = False) -> bytes:
        expires = time.time() + self.seconds
        host, pid = socket.gethostname(), os.getpid()
        return json_bytes({"holder": self.holder, "host": host, "pid": pid, "expires": expires, "released": released})


def _in_force(lease: dict[str, Any]) -> bool:
    """Whether a lease document still keeps others out: not released, not expired, its holder alive as far
    as this machine can tell (a process of this machine that is gone holds nothing)."""
    if lease.get("released") or lease.get("expires", 0) <= time.time():
        return False
    if lease.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(lease["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True  # alive under another user, or a document that does not say: trust the term
    return True
