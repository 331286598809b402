"""Asset hrefs: local paths and ``/vsizip/`` members (opened here), or remote URLs (left to GDAL)."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

_VSIZIP = re.compile(r"^/vsizip/(?P<archive>.+?\.zip)/(?P<member>.+)$", re.IGNORECASE)


def is_local(href: str) -> bool:
    """True for a local path, a ``file://`` URL or a member of a local ZIP (``/vsizip/...``)."""
    if href.startswith("file://") or _VSIZIP.match(href):
        return True
    return "://" not in href and not href.startswith("/vsi")


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
        with archive.open(zipped["member"]) as member:
            yield member


def local_size(href: str) -> int | None:
    """Size in bytes of a local file or ZIP member; None when the href is remote."""
    if not is_local(href):
        return None
    zipped = _VSIZIP.match(href)
    if zipped is None:
        return os.path.getsize(href.removeprefix("file://"))
    with zipfile.ZipFile(zipped["archive"]) as archive:
        return archive.getinfo(zipped["member"]).file_size
