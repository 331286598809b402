"""Asset hrefs: local paths and ``/vsizip/`` members (opened here), rasters anywhere (opened with GDAL)."""

from __future__ import annotations

import ctypes
import io
import os
import re
import struct
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import IO, NoReturn
from urllib.parse import urlsplit

import rasterio
import rasterio._base
import requests
from rasterio.errors import RasterioError

from spectral_corpus.catalog.credentials import REFUSED, host_credentials, refused
from spectral_corpus.catalog.retries import RetryPolicy

_VSIZIP = re.compile(r"^/vsizip/(?P<archive>.+?\.zip)/(?P<member>.+)$", re.IGNORECASE)


def zip_member(href: str) -> tuple[str, str] | None:
    """(archive, member) of a ``/vsizip/`` href; None for any other href."""
    zipped = _VSIZIP.match(href)
    return (zipped["archive"], zipped["member"]) if zipped is not None else None


def is_local(href: str) -> bool:
    """True for a local path, a ``file://`` URL or a member of a local ZIP (``/vsizip/...``)."""
    zipped = _VSIZIP.match(href)
    if zipped is not None:
        return is_local(zipped["archive"])  # a ZIP in a bucket (/vsizip//vsis3/...) is not
    return href.startswith("file://") or ("://" not in href and not href.startswith("/vsi"))


@contextmanager
def open_local(href: str) -> Iterator[IO[bytes]]:
    """Open a local href for reading bytes (a ZIP member decompresses as it is read)."""
    zipped = _VSIZIP.match(href)
    if zipped is None:
        with open(href.removeprefix("file://"), "rb") as file:
            yield file
        return
    with zipfile.ZipFile(zipped["archive"]) as archive:
        if zipped["member"] not in archive.namelist():
            raise FileNotFoundError(f"{href}: no member {zipped['member']!r} in {zipped['archive']}")
        with open_member(archive, zipped["member"]) as member:
            yield member


def open_member(archive: zipfile.ZipFile, member: str) -> IO[bytes]:
    """A ZIP member for reading: a stored one seeks in place (a window of the file); a compressed one
    says it cannot seek, so that readers go forward through it once.

    ``ZipFile.open`` seeks by reading and inflating from the member's start on Python 3.11: a jump to
    a stored member's tail would cost its whole size, and every backward seek starts again.
    """
    info = archive.getinfo(member)
    if not is_stored(info) or archive.filename is None:
        return io.BufferedReader(_ForwardOnly(archive.open(info)))
    return stored_member(open(archive.filename, "rb"), info)


def is_stored(info: zipfile.ZipInfo) -> bool:
    """True for a member stored as it is (not compressed, not encrypted): its bytes lie in the archive."""
    return info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1


def stored_member(file: IO[bytes], info: zipfile.ZipInfo) -> IO[bytes]:
    """A stored member as a seekable window of the open archive ``file``, which the window then owns."""
    file.seek(info.header_offset)
    name_length, extra_length = struct.unpack("<2H", file.read(_LOCAL_HEADER)[26:30])
    start = info.header_offset + _LOCAL_HEADER + name_length + extra_length
    return io.BufferedReader(_Window(file, start, info.file_size))


#: Size of a ZIP local file header before its name and extra field (PKWARE APPNOTE 4.3.7).
_LOCAL_HEADER = 30


class _ForwardOnly(io.RawIOBase):
    """A stream read front to back only (``seekable()`` is False); closing it closes the stream."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()


class _Window(io.RawIOBase):
    """Bytes ``start``..``start + size`` of an open file, as a seekable raw stream that owns the file."""

    def __init__(self, file: IO[bytes], start: int, size: int) -> None:
        self._file, self._start, self._size, self._pos = file, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = max(0, min(len(buffer), self._size - self._pos))
        self._file.seek(self._start + self._pos)
        data = self._file.read(count)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._file.close()
        super().close()


@contextmanager
def open_raster(href: str) -> Iterator[rasterio.DatasetReader]:
    """Open a raster href with rasterio; remote hrefs are read by ranged requests, never downloaded whole.

    ``s3://`` (and ``/vsizip//vsis3/``) hrefs go through GDAL's ``/vsis3/``: an S3 endpoint other than
    AWS (``AWS_ENDPOINT_URL``, as for the corpus's object store: MinIO, Ceph, ...) is passed to GDAL in
    its own terms while the raster is open; keys and region come from the environment as GDAL reads them.
    ``http(s)://`` (and ``/vsizip//vsicurl/``) hrefs go through ``/vsicurl/`` with the credentials of
    their host only (``catalog.credentials``) and the retries of ``RetryPolicy.from_env()``. A host that
    answers 401 or 403, on opening or on a later read in the block, raises ProductAccessError naming it.
    """
    options = gdal_options(href, os.environ)
    url = remote_url(href)
    over_http = url is not None and not url.startswith("s3://")
    with (
        rasterio.Env(**options) if options else nullcontext(),
        _refusals(url) if over_http and url is not None else nullcontext(),
        rasterio.open(href) as dataset,
    ):
        yield dataset


def gdal_options(href: str, environ: Mapping[str, str]) -> dict[str, str]:
    """GDAL's configuration for reading ``href``: empty for a local one."""
    url = remote_url(href)
    if url is None:
        return {}
    if url.startswith("s3://"):
        return gdal_s3_options(environ)
    return {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing of the product's folder, no sidecar probes
        "GDAL_HTTP_NETRC": "NO",  # GDAL would send any netrc entry it finds; the host's own comes below
        **RetryPolicy.from_env(environ).gdal_options(),
        **host_credentials(url, environ).gdal_options(),
    }


def gdal_s3_options(environ: Mapping[str, str]) -> dict[str, str]:
    """GDAL's configuration for the S3 endpoint that ``AWS_ENDPOINT_URL`` names (empty for AWS itself)."""
    endpoint = environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return {}
    url = urlsplit(endpoint)
    return {
        "AWS_S3_ENDPOINT": url.netloc,
        "AWS_HTTPS": "YES" if url.scheme == "https" else "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing of the product's folder on open
    }


def remote_url(href: str) -> str | None:
    """The ``http(s)://`` or ``s3://`` URL that an href reads (for a ZIP member: the ZIP's); None if local.

    GDAL's own names count too: ``/vsicurl/https://...``, ``/vsis3/bucket/key``.
    """
    zipped = _VSIZIP.match(href)
    if zipped is not None:
        href = zipped["archive"]
    if href.startswith("/vsis3/"):
        return "s3://" + href.removeprefix("/vsis3/")
    href = href.removeprefix("/vsicurl/")
    return href if href.lower().startswith(("http://", "https://", "s3://")) else None


#: How GDAL reports an HTTP status it got (rasterio keeps GDAL's words in the error or its causes).
_HTTP_STATUS = re.compile(r"HTTP response code: (\d{3})")


@contextmanager
def _refusals(url: str) -> Iterator[None]:
    """Turn a 401/403 that GDAL met (opening, or reading in the block) into ProductAccessError."""
    try:
        yield
    except Exception as error:
        status = refusal_status(error)
        if status is None and _raised_by_gdal(error):
            status = _ask_host(url)  # GDAL reports a refused range read only as a failed read
        if status is None:
            raise
        forget_http_cache(url)
        failure = refused(url, status, host_credentials(url))
    else:
        return
    _raise_alone(failure)


def _raise_alone(error: BaseException) -> NoReturn:
    """Raise ``error`` without the exception it replaces as its context: GDAL's errors add nothing to the
    message, and a Dask worker sends the whole chain to the client, where rasterio's do not unpickle."""
    try:
        raise error
    except BaseException:
        error.__context__ = None
        raise


def refusal_status(error: BaseException) -> int | None:
    """401 or 403 when GDAL's error (or one it caused, or was raised while handling) says the host
    answered so; None otherwise."""
    for cause in _chain(error):
        for found in _HTTP_STATUS.finditer(str(cause)):
            if int(found[1]) in REFUSED:
                return int(found[1])
    return None


def _raised_by_gdal(error: BaseException) -> bool:
    return any(isinstance(e, RasterioError) for e in _chain(error))


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it came of (causes and contexts), each once."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is not None and all(current is not e for e in found):
            found.append(current)
            pending += [current.__cause__, current.__context__]
    return found


def _ask_host(url: str) -> int | None:
    """401 or 403 when the host answers so to a HEAD with the credentials GDAL was given; else None."""
    policy = RetryPolicy.from_env()
    try:
        status = requests.head(url, auth=host_credentials(url).auth, timeout=policy.timeout_s).status_code
    except requests.RequestException:
        return None
    return status if status in REFUSED else None


def forget_http_cache(url: str) -> None:
    """Make GDAL forget what it cached of the files of ``url``'s host: their sizes and bytes, and their
    refusals, which it would otherwise give again, even with new credentials, for as long as the
    process lives (a Dask worker, a notebook).

    rasterio does not wrap ``VSICurlPartialClearCache``; it is looked up in the GDAL that rasterio's
    own extension links (and skipped, harmlessly, where it cannot be found).
    """
    parts = urlsplit(url)
    try:
        clear = ctypes.CDLL(rasterio._base.__file__).VSICurlPartialClearCache
    except (OSError, AttributeError):
        return
    clear.argtypes, clear.restype = [ctypes.c_char_p], None
    clear(f"/vsicurl/{parts.scheme}://{parts.netloc}/".encode())
