"""Where a corpus's bytes are: a local folder or an object-store prefix, behind one small interface.

Readers name files by the keys of ``corpus_format`` (``versions/v0001/manifest.json``), never by paths.
``corpus_files(root)`` gives ``LocalFiles`` for a path and ``ObjectFiles`` for a URL (``s3://bucket/prefix``,
``gs://``, ``az://``): obstore, configured from the usual environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL`` for MinIO or Ceph, ``AWS_ALLOW_HTTP`` for
an endpoint without TLS). A patch is one ranged read either way.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

import zarr
from zarr.abc.store import Store

#: URL schemes that name an object store rather than a local path.
OBJECT_STORE_SCHEMES = ("s3://", "gs://", "az://", "abfs://", "memory://")


class CorpusFiles(Protocol):
    """Read access to the files of one corpus, by key (a ``/``-separated path under the corpus root)."""

    #: The corpus root as the user gave it (a path or a URL), for messages.
    root: str

    def read(self, key: str) -> bytes:
        """The whole file; FileNotFoundError naming it when there is none."""
        ...

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (one ranged request on an object store)."""
        ...

    def size(self, key: str) -> int:
        """The file's size in bytes; FileNotFoundError naming it when there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def sha256(self, key: str) -> str:
        """Hex SHA-256 of the file, streamed."""
        ...

    def zarr_store(self) -> Store:
        """A read-only zarr store rooted at the corpus root."""
        ...


def is_object_store(root: str | Path) -> bool:
    """True when ``root`` is an object-store URL rather than a local path."""
    return isinstance(root, str) and root.lower().startswith(OBJECT_STORE_SCHEMES)


def corpus_files(root: str | Path) -> CorpusFiles:
    """The files of the corpus at ``root``: a local path or an object-store URL."""
    if is_object_store(root):
        return ObjectFiles(str(root))
    return LocalFiles(Path(root))


class LocalFiles:
    """A corpus in a local folder; ranged reads are one ``pread`` each."""

    def __init__(self, root: Path) -> None:
        self.path = root
        self.root = str(root)

    def _file(self, key: str) -> Path:
        return self.path / key

    def read(self, key: str) -> bytes:
        return self._file(key).read_bytes()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        fd = os.open(self._file(key), os.O_RDONLY)
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)

    def size(self, key: str) -> int:
        return self._file(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self._file(key).exists()

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with self._file(key).open("rb") as f:
            while block := f.read(1 << 23):
                digest.update(block)
        return digest.hexdigest()

    def zarr_store(self) -> Store:
        return zarr.storage.LocalStore(self.path, read_only=True)


class ObjectFiles:
    """A corpus under an object-store prefix (obstore; credentials and endpoint from the environment)."""

    def __init__(self, url: str) -> None:
        from obstore.store import from_url

        self.root = url.rstrip("/")
        self.store = from_url(self.root)

    def __reduce__(self) -> tuple[type[ObjectFiles], tuple[str]]:
        return ObjectFiles, (self.root,)  # a worker process opens its own connections

    def read(self, key: str) -> bytes:
        import obstore

        try:
            return bytes(obstore.get(self.store, key).bytes())
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.root}/{key} does not exist") from None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        import obstore

        return bytes(obstore.get_range(self.store, key, start=start, length=length))

    def size(self, key: str) -> int:
        import obstore

        try:
            return int(obstore.head(self.store, key)["size"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.root}/{key} does not exist") from None

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def sha256(self, key: str) -> str:
        import obstore

        digest = hashlib.sha256()
        for chunk in obstore.get(self.store, key):
            digest.update(chunk)
        return digest.hexdigest()

    def zarr_store(self) -> Store:
        from zarr.storage import ObjectStore

        return ObjectStore(self.store, read_only=True)
