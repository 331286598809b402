"""Where a corpus's bytes are: a local folder or an object-store prefix, behind one small interface.

Readers and writers name files by the keys of ``corpus_format`` (``versions/v0001/manifest.json``), never
by paths. ``corpus_files(root)`` gives ``LocalFiles`` for a path and ``ObjectFiles`` for a URL
(``s3://bucket/prefix``, ``gs://``, ``az://``): obstore, configured from the usual environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``
for MinIO or Ceph, ``AWS_ALLOW_HTTP`` for an endpoint without TLS). A patch is one ranged read either way.

Writes are whole files, each visible at once or not at all (a rename on disk, a PUT in a bucket).
What differs is how a writer keeps others out: on disk a kernel lock and renames; in a bucket, which
has no rename, conditional writes (``write_if``: compare-and-swap on the object's ETag, ``If-Match`` /
``If-None-Match``) and folders of files that are created, never overwritten (``write_folder``).
``pipeline.lock`` and ``stages.commit`` build the corpus's guarantees on these two.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import zarr
from zarr.abc.store import Store

from spectral_corpus.errors import SpectralCorpusError
from spectral_corpus.stages.failpoints import failpoint

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

    def zarr_store(self, writable: bool = False, under: str = "") -> Store:
        """A zarr store rooted at the corpus root or the folder ``under`` it (read-only unless ``writable``)."""
        ...

    def write(self, key: str, data: bytes) -> None:
        """Write (or replace) a file whole: a reader sees the old bytes or the new, never a part."""
        ...

    def read_tagged(self, key: str) -> tuple[bytes | None, str | None]:
        """The file and a tag of this state of it (None, None when there is none), for ``write_if``."""
        ...

    def write_if(self, key: str, data: bytes, tag: str | None) -> str:
        """Write the file only if it is still in the state ``tag`` names (None: only if there is none);
        return the new tag. WriteConflict when it is not."""
        ...

    def write_folder(self, prefix: str, files: Mapping[str, bytes]) -> None:
        """Write the files of a new folder (names relative to ``prefix``), replacing a leftover of a write
        that was stopped; WriteConflict if another writer's file appears meanwhile."""
        ...

    def list(self, prefix: str) -> list[str]:
        """The keys of the files under ``prefix``."""
        ...

    def delete(self, prefix: str) -> None:
        """Remove the file ``prefix`` or every file under it (nothing when there is none)."""
        ...


class StorageConfigError(SpectralCorpusError, ValueError):
    """The environment does not configure the object store as it says (a profile that does not exist)."""


class WriteConflict(SpectralCorpusError):
    """A conditional write lost: another writer changed the file first."""


def object_store(url: str) -> Any:
    """An obstore store for ``url``, configured from the environment. An ``s3://`` URL takes the keys of
    the profile ``AWS_PROFILE`` names (botocore reads the shared config and credentials files) unless
    the environment holds keys of its own."""
    from obstore.store import from_url

    profile = os.environ.get("AWS_PROFILE")
    if url.lower().startswith("s3://") and profile and not os.environ.get("AWS_ACCESS_KEY_ID"):
        import boto3
        from botocore.exceptions import ProfileNotFound
        from obstore.auth.boto3 import Boto3CredentialProvider

        try:
            session = boto3.Session(profile_name=profile)
        except ProfileNotFound as error:
            raise StorageConfigError(f"AWS_PROFILE={profile!r}: {error}") from None
        region = {} if os.environ.get("AWS_REGION") or not session.region_name else {"region": session.region_name}
        return from_url(url, credential_provider=Boto3CredentialProvider(session), **region)
    return from_url(url)


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

    def zarr_store(self, writable: bool = False, under: str = "") -> Store:
        return zarr.storage.LocalStore(self._file(under), read_only=not writable)

    def write(self, key: str, data: bytes) -> None:
        _write_atomic(self._file(key), data)

    def read_tagged(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            data = self.read(key)
        except FileNotFoundError:
            return None, None
        return data, hashlib.sha256(data).hexdigest()

    def write_if(self, key: str, data: bytes, tag: str | None) -> str:
        """Compare, then replace: atomic only for writers that hold the corpus's lock (``pipeline.lock``)."""
        if self.read_tagged(key)[1] != tag:
            raise WriteConflict(f"{self.root}/{key} was changed by another writer")
        self.write(key, data)
        return hashlib.sha256(data).hexdigest()

    def write_folder(self, prefix: str, files: Mapping[str, bytes]) -> None:
        """Written into a staging folder, then renamed into place whole."""
        final = self._file(prefix)
        staging = final.with_name(final.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # left by a write killed after its rename, never published
        for name, data in files.items():
            _write_atomic(staging / name, data)
        failpoint("commit-staged")
        staging.rename(final)

    def list(self, prefix: str) -> list[str]:
        folder = self._file(prefix)
        found = folder.rglob("*") if folder.is_dir() else [folder] if folder.exists() else []
        return sorted(p.relative_to(self.path).as_posix() for p in found if p.is_file() and not _is_temporary(p))

    def delete(self, prefix: str) -> None:
        path = self._file(prefix)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


class ObjectFiles:
    """A corpus under an object-store prefix (obstore; credentials and endpoint from the environment)."""

    def __init__(self, url: str) -> None:
        self.root = url.rstrip("/")
        self.store = object_store(self.root)

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

    def zarr_store(self, writable: bool = False, under: str = "") -> Store:
        from zarr.storage import ObjectStore

        store = object_store(f"{self.root}/{under}") if under else self.store
        return ObjectStore(store, read_only=not writable)

    def write(self, key: str, data: bytes) -> None:
        import obstore

        obstore.put(self.store, key, data)

    def read_tagged(self, key: str) -> tuple[bytes | None, str | None]:
        import obstore

        try:
            result = obstore.get(self.store, key)
        except FileNotFoundError:
            return None, None
        return bytes(result.bytes()), result.meta["e_tag"]

    def write_if(self, key: str, data: bytes, tag: str | None) -> str:
        """One conditional PUT: ``If-None-Match: *`` without a tag, ``If-Match: tag`` with one."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        mode: Any = "create" if tag is None else {"e_tag": tag}
        try:
            written = obstore.put(self.store, key, data, mode=mode)
        except (AlreadyExistsError, PreconditionError):
            raise WriteConflict(f"{self.root}/{key} was changed by another writer") from None
        return str(written["e_tag"])

    def write_folder(self, prefix: str, files: Mapping[str, bytes]) -> None:
        """No rename in a bucket: leftovers are removed, then each file is created (``If-None-Match``), so a
        file another writer puts there meanwhile is never overwritten: this write stops instead."""
        self.delete(prefix)
        for count, (name, data) in enumerate(files.items()):
            if count == len(files) // 2:
                failpoint("commit-staged")
            self.write_if(f"{prefix}/{name}", data, None)

    def list(self, prefix: str) -> list[str]:
        import obstore

        return sorted(meta["path"] for batch in obstore.list(self.store, prefix=f"{prefix}/") for meta in batch)

    def delete(self, prefix: str) -> None:
        import obstore

        keys = self.list(prefix)
        if self.exists(prefix):
            keys.append(prefix)
        if keys:
            obstore.delete(self.store, keys)


_TEMPORARY = ".tmp"


def _is_temporary(path: Path) -> bool:
    """A write in progress, or one that was killed (not a file of the corpus)."""
    return path.name.startswith(".") and path.name.endswith(_TEMPORARY)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` via a temporary file, flushed to disk, and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TEMPORARY}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
