"""Files behind ``http(s)://`` or in a bucket (``s3://``), read as seekable streams of ranged requests.

For the small files the catalog reads itself (a STAC item's METADATA.XML); rasters are GDAL's to read
(``catalog.hrefs.open_raster``). ``RemoteFiles.open(href)`` gives a buffered stream whose reads are
ranged GETs of 128 KB: METADATA.XML's reader takes its head and its tail, so DLR's 4 MB file costs two
requests, and a file under 128 KB one. A ZIP in a bucket or behind HTTPS (``/vsizip//vsis3/...``,
``/vsizip//vsicurl/...``, as GDAL names its members) is read the same way: its central directory, then
the member.

HTTP requests carry the credentials of their own host only (``catalog.credentials``) and are retried
as ``RetryPolicy`` says; 401 or 403 raises ProductAccessError at once (no retry), naming the host.
Buckets are reached with the usual AWS environment, as the corpus's own object store is
(``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``, keys, region, profile).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import IO, Any
from urllib.parse import urlsplit

import requests

from spectral_corpus.catalog.credentials import (
    REFUSED,
    CredentialAdapter,
    NoAuth,
    host_credentials,
    refused,
    without_query,
)
from spectral_corpus.catalog.errors import ProductAccessError
from spectral_corpus.catalog.hrefs import is_stored, remote_url, stored_member, zip_member
from spectral_corpus.catalog.retries import RetryPolicy

#: Bytes asked for at a time: METADATA.XML's header fields lie in its first 70 KB.
BUFFER_BYTES = 128 * 1024


class RemoteFiles:
    """Opens remote hrefs for reading by range; one HTTP session (and its connections) for all of them."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self._policy = policy
        self._session: requests.Session | None = None

    @property
    def policy(self) -> RetryPolicy:
        """The retry policy: as given, else ``RetryPolicy.from_env()`` (read when first needed)."""
        if self._policy is None:
            self._policy = RetryPolicy.from_env()
        return self._policy

    @property
    def session(self) -> requests.Session:
        """The HTTP session: each host's own credentials, retries on 429, 5xx and broken connections."""
        if self._session is None:
            session = requests.Session()
            adapter = CredentialAdapter(host_credentials, self.policy.urllib3_retry())
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.auth = NoAuth()
            self._session = session
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    @contextmanager
    def open(self, href: str) -> Iterator[IO[bytes]]:
        """A seekable stream of a remote file or ZIP member; FileNotFoundError or OSError when it cannot be
        read, ProductAccessError when its host refuses the credentials."""
        url = remote_url(href)
        if url is None:
            raise ValueError(f"{href!r} is not a remote href")
        with ExitStack() as stack:
            stream = stack.enter_context(self._open_url(url))
            zipped = zip_member(href)
            if zipped is not None:
                stream = stack.enter_context(_member(stream, zipped[1], href))
            yield stream

    @contextmanager
    def _open_url(self, url: str) -> Iterator[IO[bytes]]:
        fetch = self._http_range(url) if not url.lower().startswith("s3://") else _s3_range(url)
        with io.BufferedReader(_RangeFile(fetch), buffer_size=BUFFER_BYTES) as stream:
            yield stream

    def _http_range(self, url: str) -> _Fetch:
        def fetch(start: int, end: int | None) -> tuple[bytes, int]:
            wanted = f"bytes={start}-{'' if end is None else end - 1}"
            try:
                with self.session.get(
                    url, headers={"Range": wanted}, timeout=self.policy.timeout_s, stream=True
                ) as response:
                    return _answer(url, response, start, end)
            except requests.RequestException as error:  # after the retries
                tries = self.policy.attempts
                failure = f"{without_query(url)} could not be read after {tries} attempts: {type(error).__name__}"
                raise OSError(failure) from None

        return fetch


#: Reads bytes [start, end) of a file (to its end when end is None); returns them and the file's size.
_Fetch = Callable[[int, "int | None"], tuple[bytes, int]]


def _answer(url: str, response: requests.Response, start: int, end: int | None) -> tuple[bytes, int]:
    """The bytes and the file size of an answer to a ranged GET, or the error it means."""
    status = response.status_code
    if status in REFUSED:  # the credentials sent are those the adapter gave this host
        raise refused(url, status, host_credentials(url))
    if status == 404:
        raise FileNotFoundError(f"{without_query(url)}: not found (HTTP 404)")
    if status == 416:  # the range starts at or past the end
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return b"", int(total) if total.isdigit() else start
    if status == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return response.content, int(total) if total.isdigit() else -1
    if status == 200:  # the server ignored the range: take what was asked for, drop the rest of the stream
        size = int(response.headers.get("Content-Length", "-1"))
        body = response.raw.read(end, decode_content=True) if end is not None else response.content
        return body[start:], size if size >= 0 else len(body)
    raise OSError(f"{without_query(url)}: HTTP {status}")


def _s3_range(url: str) -> _Fetch:
    import obstore
    from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError

    from spectral_corpus.corpus_files import object_store

    parts = urlsplit(url)
    store = object_store(f"s3://{parts.netloc}")  # configured as the corpus's own store is
    key = parts.path.lstrip("/")

    def fetch(start: int, end: int | None) -> tuple[bytes, int]:
        options: Any = {"range": {"offset": start} if end is None else (start, end)}
        try:
            result = obstore.get(store, key, options=options)
            return bytes(result.bytes()), int(result.meta["size"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{url}: not found") from None
        except (PermissionDeniedError, UnauthenticatedError):
            raise ProductAccessError(
                f"the object store refused access to {url} (keys from the AWS environment: AWS_ACCESS_KEY_ID, "
                "AWS_PROFILE, ...; endpoint AWS_ENDPOINT_URL)",
                host=parts.netloc,
            ) from None
        except BaseError as error:
            raise OSError(f"{url} could not be read: {type(error).__name__}") from None

    return fetch


def _member(stream: IO[bytes], member: str, href: str) -> IO[bytes]:
    """A member of the remote ZIP ``stream``: a stored one is a window of it (seeks are ranged reads), a
    compressed one is inflated as it is read."""
    archive = zipfile.ZipFile(stream)  # reads the central directory: a ranged read of the ZIP's end
    if member not in archive.namelist():
        raise FileNotFoundError(f"{href}: no member {member!r} in the archive")
    info = archive.getinfo(member)
    return stored_member(stream, info) if is_stored(info) else archive.open(info)


class _RangeFile(io.RawIOBase):
    """A remote file as a seekable raw stream: every read is one ranged request (``fetch``)."""

    def __init__(self, fetch: _Fetch) -> None:
        self._fetch, self._pos, self._size = fetch, 0, -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if len(buffer) == 0 or 0 <= self._size <= self._pos:
            return 0
        data, self._size = self._fetch(self._pos, self._pos + len(buffer))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        """The rest of the file in one request."""
        if 0 <= self._size <= self._pos:
            return b""
        data, self._size = self._fetch(self._pos, None)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END and self._size < 0:
            self._size = self._fetch(0, 1)[1]  # one byte, for the size
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos
