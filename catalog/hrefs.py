"""Asset hrefs: local paths and ``/vsizip/`` members (opened here), or remote URLs (left to GDAL)."""

from __future__ import annotations

import io
import os
import re
import struct
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import IO
from urllib.parse import urlsplit

import rasterio

_VSIZIP = re.compile(r"^/vsizip/(?P<archive>.+?\.zip)/(?P<member>.+)$", re.IGNORECASE)


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
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 or archive.filename is None:
        return io.BufferedReader(_ForwardOnly(archive.open(info)))
    file = open(archive.filename, "rb")  # noqa: SIM115 (closed with the window)
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


def local_size(href: str) -> int | None:
    """Size in bytes of a local file or ZIP member; None when the href is remote."""
    if not is_local(href):
        return None
    zipped = _VSIZIP.match(href)
    if zipped is None:
        return os.path.getsize(href.removeprefix("file://"))
    with zipfile.ZipFile(zipped["archive"]) as archive:
        return archive.getinfo(zipped["member"]).file_size


@contextmanager
def open_raster(href: str) -> Iterator[rasterio.DatasetReader]:
    """Open a raster href with rasterio; ``s3://`` (and ``/vsizip//vsis3/``) hrefs are read by ranged reads.

    An S3 endpoint other than AWS (``AWS_ENDPOINT_URL``, as for the corpus's object store: MinIO, Ceph,
    ...) is passed to GDAL in its own terms while the raster is open; keys and region come from the
    environment as GDAL reads them.
    """
    options = gdal_s3_options(os.environ) if "s3://" in href.lower() or "/vsis3/" in href else {}
    with rasterio.Env(**options) if options else nullcontext(), rasterio.open(href) as dataset:
        yield dataset


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
