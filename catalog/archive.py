"""Scene records from a local archive of EnMAP L2A products (folders and ZIP files)."""

from __future__ import annotations

import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

from spectral_corpus.catalog.errors import ProductError
from spectral_corpus.catalog.hrefs import open_member
from spectral_corpus.catalog.metadata import read_metadata
from spectral_corpus.catalog.product import asset_key, is_product_name
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.catalog.scenes import OK, SceneRecord


def index_archive(root: Path, query: SceneQuery | None = None) -> list[SceneRecord]:
    """One record per product under ``root``, in path order; other files are ignored.

    A product is a folder, or a ``.zip`` file, named after it, at any depth (DLR's order folders
    ``dims_op_oc_oc-en_<order>_1/ENMAP.HSI.L2A/<item>/<product>.ZIP`` beside ``readme.html``, ``iif/``
    and ``tools/``). A ZIP holds a ``<product>/`` folder or the files directly. Only the head of each
    METADATA.XML is read (see ``catalog.metadata``). Asset hrefs are absolute paths, or
    ``/vsizip/`` paths into ZIP files. Products that cannot be used give rejected records: among them
    a folder or file that links out of ``root``, and a ZIP with a member that is absolute, climbs out
    with ``..`` or is a symbolic link.

    The two steps, ``archive_products`` (a walk of the folders) and ``index_products`` (reading each
    product), may run apart: a build reads the products in batches on its cluster.
    """
    root = root.resolve()
    return index_products(archive_products(root), root, query)


def archive_products(root: Path) -> list[Path]:
    """The product folders and ZIP files under ``root`` (resolved), in path order; nothing in them is read."""
    return list(_products(root.resolve()))


def index_products(products: list[Path], root: Path, query: SceneQuery | None = None) -> list[SceneRecord]:
    """The records of ``products`` (from ``archive_products(root)``) that match ``query``."""
    records = (_record(path, root) for path in products)
    if query is None:
        return list(records)
    return [r for r in records if query.matches(r, unknown_passes=r.status != OK)]


def _products(folder: Path) -> Iterator[Path]:
    """Product folders and ZIP files under ``folder``, depth first in name order.

    A folder named like a product is one when it holds files of that product; otherwise (an order's
    item folder holding ``<product>.ZIP``) it is searched like any other folder.
    """
    for path in sorted(folder.iterdir()):
        is_zip = path.suffix.lower() == ".zip" and path.is_file()
        if (is_zip and is_product_name(path.stem)) or (path.is_dir() and _is_product_folder(path)):
            yield path
        elif path.is_dir() and not path.is_symlink():
            yield from _products(path)


def _is_product_folder(path: Path) -> bool:
    return is_product_name(path.name) and any(asset_key(p.name, path.name) for p in path.iterdir())


def _record(path: Path, root: Path) -> SceneRecord:
    """The record of a product folder or ZIP file; rejected if it, or a file in it, links out of root."""
    name = path.stem if path.is_file() else path.name
    for entry in [path, *([] if path.is_file() else sorted(path.iterdir()))]:
        if not entry.resolve().is_relative_to(root):
            reason = f"symlink '{entry.name}' resolves outside the archive root"
            return SceneRecord.rejected(name, str(path), Rejection.UNSAFE_ARCHIVE, reason)
    return _zip_record(path) if path.is_file() else _folder_record(path)


def _folder_record(folder: Path) -> SceneRecord:
    name, source = folder.name, str(folder)
    files = sorted(folder.iterdir())
    hrefs = {key: str(path) for path in files if (key := asset_key(path.name, name)) and path.is_file()}
    if "metadata" not in hrefs:
        return _product_record(name, source, hrefs, None)
    with open(hrefs["metadata"], "rb") as metadata:
        return _product_record(name, source, hrefs, metadata)


def _zip_record(path: Path) -> SceneRecord:
    name, source = path.stem, str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
            members = [info.filename for info in infos]
            unsafe = next((m for m in members if _is_unsafe(m)), None)
            if unsafe is not None:
                return SceneRecord.rejected(name, source, Rejection.UNSAFE_ARCHIVE, f"unsafe ZIP member {unsafe!r}")
            link = next((info for info in infos if _is_symlink(info)), None)
            if link is not None:
                target = archive.read(link)[:200].decode(errors="replace")
                reason = f"unsafe ZIP member {link.filename!r}: a symbolic link (to {target!r})"
                return SceneRecord.rejected(name, source, Rejection.UNSAFE_ARCHIVE, reason)
            assets = {key: m for m in members if (key := _member_key(m, name))}
            hrefs = {key: f"/vsizip/{path}/{member}" for key, member in assets.items()}
            if "metadata" not in assets:
                return _product_record(name, source, hrefs, None)
            with open_member(archive, assets["metadata"]) as metadata:
                return _product_record(name, source, hrefs, metadata)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        return SceneRecord.rejected(name, source, Rejection.CORRUPT_ZIP, f"corrupt ZIP file ({error})")


def _is_unsafe(member: str) -> bool:
    """True for a member path that is absolute or climbs out of the extraction folder."""
    posix, windows = PurePosixPath(member), PureWindowsPath(member)
    return posix.is_absolute() or bool(windows.drive or windows.root) or ".." in windows.parts


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    """True for a member stored as a Unix symbolic link (its data is the link target, never followed)."""
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _member_key(member: str, name: str) -> str | None:
    """The asset key of a ZIP member ``<name>/<file>`` or ``<file>``."""
    folder, _, filename = member.rpartition("/")
    return asset_key(filename, name) if folder in ("", name) else None


def _product_record(name: str, source: str, hrefs: dict[str, str], metadata: IO[bytes] | None) -> SceneRecord:
    """A record from a product's files and the head of its METADATA.XML, or a rejected one saying why."""
    if metadata is None:
        return SceneRecord.rejected(name, source, Rejection.BAD_METADATA, "no METADATA.XML")
    if "image" not in hrefs:
        return SceneRecord.rejected(name, source, Rejection.NO_IMAGE, "no SPECTRAL_IMAGE file")
    try:
        meta = read_metadata(metadata, source).metadata
    except ProductError as error:
        return SceneRecord.rejected(name, source, Rejection.BAD_METADATA, str(error))
    return SceneRecord.from_metadata(meta, name, source, hrefs)
