"""One entry point for every kind of scene source: a STAC API, a static STAC file or a local archive."""

from __future__ import annotations

from pathlib import Path

from spectral_corpus.catalog.archive import index_archive
from spectral_corpus.catalog.errors import SourceError
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.scenes import SceneRecord, keep_newest
from spectral_corpus.catalog.stac import read_static_stac, search_stac_api

STATIC_SUFFIXES = (".json", ".geojson")


def find_scenes(source: str, query: SceneQuery) -> list[SceneRecord]:
    """Scene records from ``source`` that match ``query``, all but the newest version of each rejected."""
    return keep_newest(read_source(source, query))


def is_stac_api(source: str) -> bool:
    """True when ``source`` names a STAC API (an ``http(s)://`` URL)."""
    return source.lower().startswith(("http://", "https://"))


def archive_root(source: str) -> Path | None:
    """The folder ``source`` names when it is a local archive of products, else None."""
    if is_stac_api(source):
        return None
    path = Path(source)
    return path.resolve() if path.is_dir() else None


def read_source(source: str, query: SceneQuery) -> list[SceneRecord]:
    """Scene records from ``source`` that match ``query``, every version as found.

    ``source`` is an ``http(s)://`` STAC API URL, a ``.json``/``.geojson`` static STAC file, or a
    directory holding EnMAP L2A product folders and ZIP files. A build decides which version is the
    newest once, over these and the corpus's known scenes.
    """
    if is_stac_api(source):
        return search_stac_api(source, query)
    path = Path(source)
    if path.is_file() and path.suffix.lower() in STATIC_SUFFIXES:
        return read_static_stac(path, query)
    root = archive_root(source)
    if root is not None:
        return index_archive(root, query)
    raise SourceError(
        f"scene source {source!r} is not usable: SRC must be an http(s):// STAC API URL, an existing "
        f"static STAC file ({', '.join(STATIC_SUFFIXES)}) or an existing directory of EnMAP L2A products"
    )
