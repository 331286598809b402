"""DLR's EnMAP METADATA.XML (root ``level_X``, schema ``metadata_Lx``): read it, and write its layout.

Element paths are those of the real file of DLR's public L2A test product (a copy is in
``tests/data/real/``; its source is noted there). The file is about 4 MB, mostly orbit, attitude and
per-band RPCs; everything read here except ``product/ortho/projection`` lies in its first 70 KB, so
the reader parses incrementally and stops as soon as it has what it needs. The projection lies near
the end (38 KB before it in the real file): it is looked up in the last ``TAIL_BYTES`` of the file,
never by parsing the whole. Sizes, CRS and transform are taken from the raster itself; the XML's own
figures are only checked against it.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import IO, TypeVar

from spectral_corpus.catalog.errors import ProductError
from spectral_corpus.corpus_format import COVERS

#: Bytes fed to the parser at a time.
CHUNK_BYTES = 16 * 1024
#: Bytes at the end of the file searched for ``product/ortho/projection``.
TAIL_BYTES = 128 * 1024
_PROJECTION_TAG = re.compile(rb"<ortho>\s*(?:<[^>]*>[^<]*</[^>]*>\s*)*?<projection>\s*([^<]*?)\s*</projection>")
_ROOT = "level_X"
_POLYGON = "base/spatialCoverage/boundingPolygon/point"
_BAND = "specific/bandCharacterisation/bandID"
_FLAGS = "specific/qualityFlag"
_MERGE = "product/image/merge"
_PROJECTION = "product/ortho/projection"
#: Required scalar fields: attribute -> element path under ``level_X``.
_REQUIRED = {
    "filename": "metadata/name",
    "level": "base/level",
    "revision": "base/revision",
    "acquired": "base/temporalCoverage/startTime",
    "processed": "specific/processingDateTime",
    "datatake": "specific/datatakeID",
    "tile": "specific/tileID",
    "channels": f"{_MERGE}/channels",
}
#: Optional scalar fields (they vary between processor versions, or may be absent).
_OPTIONAL = {
    "product_format": "processing/productFormat",
    "columns": f"{_MERGE}/dimension/columns",
    "rows": f"{_MERGE}/dimension/rows",
    "ortho_width": "specific/widthOfOrthoScene",
    "ortho_height": "specific/heightOfOrthoScene",
    "quality": f"{_FLAGS}/overallQuality",
    "cloud_cover": f"{_FLAGS}/cloudCover",
    "cloud_shadow": f"{_FLAGS}/cloudShadow",
    "snow_cover": f"{_FLAGS}/snowCover",
    "haze_cover": f"{_FLAGS}/hazeCover",
    "cirrus_cover": f"{_FLAGS}/cirrusCover",
    "water_cover": f"{_FLAGS}/waterCover",
}
_T = TypeVar("_T")
_CORNERS = ("upper_left", "upper_right", "lower_right", "lower_left")
_UTM = re.compile(r"^UTM_Zone(?P<zone>\d{1,2})_(?P<hemisphere>North|South)$", re.IGNORECASE)


@dataclass(frozen=True)
class Bands:
    """Band characterisation: centre and FWHM (nm), gain and offset (reflectance = DN x gain + offset)."""

    centres_nm: tuple[float, ...]
    fwhm_nm: tuple[float, ...]
    gains: tuple[float, ...]
    offsets: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.centres_nm)


@dataclass(frozen=True)
class ProductMetadata:
    """What a METADATA.XML says that the rasters cannot, plus the figures checked against them.

    Cover figures are integer percent of the scene; ``quality`` is ``overallQuality``: 0 nominal,
    1 reduced, 2 low (lower is better). Optional fields are None when the file lacks them.
    """

    name: str
    level: str
    datatake: int
    tile: int
    processor: str
    acquired: datetime
    processed: datetime
    n_bands: int
    #: (lon, lat) of the valid swath's upper-left, upper-right, lower-right and lower-left corners.
    corners: tuple[tuple[float, float], ...]
    bands: Bands = field(repr=False)
    width: int | None = None
    height: int | None = None
    product_format: str | None = None
    quality: int | None = None
    cloud_cover: float | None = None
    cloud_shadow: float | None = None
    snow_cover: float | None = None
    haze_cover: float | None = None
    cirrus_cover: float | None = None
    water_cover: float | None = None
    #: ``product/ortho/projection`` (``UTM_Zone32_North``); None when the file's tail does not state it.
    projection: str | None = None

    @property
    def version(self) -> str:
        """The processor version as in product names (``00.02.04`` -> ``000204``)."""
        return self.processor.replace(".", "")

    @property
    def epsg(self) -> int | None:
        """The EPSG code that ``projection`` names (WGS 84 UTM zones), or None."""
        return projection_epsg(self.projection) if self.projection else None


@dataclass(frozen=True)
class MetadataRead:
    """A parsed METADATA.XML and the bytes read to get it."""

    metadata: ProductMetadata
    bytes_read: int


def read_metadata(stream: IO[bytes], source: str) -> MetadataRead:
    """Parse a METADATA.XML from ``stream``, reading only its head and its tail.

    The parser stops once the header fields are in (about 70 KB of a 4 MB file); the projection is
    then looked up in the last ``TAIL_BYTES`` (a stream that cannot seek is read on to its end, as a
    compressed ZIP member must be). Raises ProductError naming ``source`` and the missing or bad
    field's path.
    """
    collector = _Collector()
    parser = ET.XMLPullParser(events=("start", "end"))  # type: ignore[var-annotated]
    read = 0
    try:
        while not collector.done:
            chunk = stream.read(CHUNK_BYTES)
            if not chunk:
                parser.close()
                break
            read += len(chunk)
            parser.feed(chunk)
            for event, element in parser.read_events():  # type: ignore[misc]
                collector.handle(event, element)  # type: ignore[arg-type]
    except ET.ParseError as error:
        raise ProductError(f"{source}: METADATA.XML is not well-formed XML ({error})") from error
    meta = collector.metadata(source)
    if meta.projection is None:
        tail, tail_read = _tail(stream)
        read += tail_read
        found = _PROJECTION_TAG.search(tail)
        meta = replace(meta, projection=found[1].decode() if found and found[1] else None)
    return MetadataRead(meta, read)


def _tail(stream: IO[bytes]) -> tuple[bytes, int]:
    """The last ``TAIL_BYTES`` and the bytes read to get them: a seek, or a read on to the end when the
    stream cannot seek."""
    if stream.seekable():
        stream.seek(max(stream.tell(), stream.seek(0, io.SEEK_END) - TAIL_BYTES))
        tail = stream.read()
        return tail, len(tail)
    tail, read = b"", 0
    while chunk := stream.read(TAIL_BYTES):
        tail, read = tail[-TAIL_BYTES:] + chunk, read + len(chunk)
    return tail[-TAIL_BYTES:], read


def parse_metadata(data: bytes, source: str) -> ProductMetadata:
    """Parse METADATA.XML bytes (see ``read_metadata``)."""
    return read_metadata(io.BytesIO(data), source).metadata


class _Collector:
    """Keeps the wanted elements' text as the parser goes, and says when it has enough."""

    def __init__(self) -> None:
        self._path: list[str] = []
        self.values: dict[str, str] = {}
        self.points: dict[str, tuple[str, str]] = {}
        self.bands: list[tuple[int, dict[str, str]]] = []
        self.root: str | None = None
        self._closed: set[str] = set()

    @property
    def done(self) -> bool:
        return self._closed >= _SECTIONS and all(path in self.values for path in _REQUIRED.values())

    def handle(self, event: str, element: ET.Element) -> None:
        if event == "start":
            if self.root is None:
                self.root = element.tag
            self._path.append(element.tag)
            return
        path = "/".join(self._path[1:])
        self._path.pop()
        if path in _WANTED:
            self.values[path] = (element.text or "").strip()
        elif path == _POLYGON:
            frame = (element.findtext("frame") or "").strip()
            self.points.setdefault(frame, (element.findtext("longitude") or "", element.findtext("latitude") or ""))
        elif path == _BAND:
            self.bands.append((_band_number(element), {child.tag: (child.text or "").strip() for child in element}))
        if path in _SECTIONS:
            self._closed.add(path)
        if not path.startswith(_KEPT_WHOLE):
            element.clear()  # the parser keeps the tree: drop what was read (orbit, attitude, RPCs)

    def metadata(self, source: str) -> ProductMetadata:
        if self.root != _ROOT:
            raise ProductError(f"{source}: METADATA.XML root element is {self.root!r}, not {_ROOT!r}")
        try:
            return self._metadata()
        except _Missing as missing:
            raise ProductError(f"{source}: METADATA.XML lacks {_ROOT}/{missing}") from None
        except _Bad as bad:
            raise ProductError(f"{source}: METADATA.XML has a bad {_ROOT}/{bad}") from None

    def _metadata(self) -> ProductMetadata:
        text = {name: self._required(path) for name, path in _REQUIRED.items()}
        optional = {name: self.values.get(path) or None for name, path in _OPTIONAL.items()}
        filename = text["filename"]
        return ProductMetadata(
            name=filename[: -len("-METADATA.XML")] if filename.upper().endswith("-METADATA.XML") else filename,
            level=text["level"],
            datatake=_convert(int, text["datatake"], _REQUIRED["datatake"]),
            tile=_convert(int, text["tile"], _REQUIRED["tile"]),
            processor=text["revision"],
            acquired=_convert(parse_time, text["acquired"], _REQUIRED["acquired"]),
            processed=_convert(parse_time, text["processed"], _REQUIRED["processed"]),
            n_bands=_convert(int, text["channels"], _REQUIRED["channels"]),
            corners=self._corners(),
            bands=self._bands(),
            width=_optional(int, optional["columns"] or optional["ortho_width"], _OPTIONAL["columns"]),
            height=_optional(int, optional["rows"] or optional["ortho_height"], _OPTIONAL["rows"]),
            product_format=optional["product_format"],
            quality=_optional(int, optional["quality"], _OPTIONAL["quality"]),
            **{cover: _optional(float, optional[cover], _OPTIONAL[cover]) for cover in COVERS},
            projection=self.values.get(_PROJECTION) or None,
        )

    def _required(self, path: str) -> str:
        value = self.values.get(path)
        if not value:
            raise _Missing(path)
        return value

    def _corners(self) -> tuple[tuple[float, float], ...]:
        missing = [frame for frame in _CORNERS if frame not in self.points]
        if missing:
            raise _Missing(f"{_POLYGON}[frame={missing[0]}]")
        return tuple(
            (_convert(float, lon, f"{_POLYGON}/longitude"), _convert(float, lat, f"{_POLYGON}/latitude"))
            for lon, lat in (self.points[frame] for frame in _CORNERS)
        )

    def _bands(self) -> Bands:
        if not self.bands:
            raise _Missing(_BAND)
        rows = [values for _, values in sorted(self.bands, key=lambda band: band[0])]

        def column(tag: str) -> tuple[float, ...]:
            return tuple(_convert(float, row.get(tag, ""), f"{_BAND}/{tag}") for row in rows)

        tags = ("wavelengthCenterOfBand", "FWHMOfBand", "GainOfBand", "OffsetOfBand")
        return Bands(*(column(tag) for tag in tags))


_WANTED = {*_REQUIRED.values(), *_OPTIONAL.values(), _PROJECTION}
_SECTIONS = {"specific", "product/image"}
#: Children of these elements are read when their parent ends, so they are not cleared before.
_KEPT_WHOLE = (f"{_POLYGON}/", f"{_BAND}/")


class _Missing(Exception):
    """A required element is absent or empty (the argument is its path)."""


class _Bad(Exception):
    """An element's text cannot be read as its type (the argument says which and what)."""


def _convert(kind: Callable[[str], _T], text: str, path: str) -> _T:
    if not text:
        raise _Missing(path)
    try:
        return kind(text)
    except ValueError:
        raise _Bad(f"{path} ({text!r})") from None


def _optional(kind: Callable[[str], _T], text: str | None, path: str) -> _T | None:
    return None if text is None else _convert(kind, text, path)


def _band_number(element: ET.Element) -> int:
    return _convert(int, element.get("number", ""), f"{_BAND}/@number")


def parse_time(text: str) -> datetime:
    """A METADATA.XML time (``2017-06-26T10:20:20.999936Z``) as an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def projection_epsg(projection: str) -> int | None:
    """The WGS 84 UTM EPSG code of ``UTM_Zone32_North`` / ``UTM_Zone36_South``; None for anything else."""
    match = _UTM.match(projection.strip())
    if match is None:
        return None
    return (32600 if match["hemisphere"].lower() == "north" else 32700) + int(match["zone"])


def projection_name(epsg: int) -> str:
    """``product/ortho/projection`` for a WGS 84 UTM EPSG code (the inverse of ``projection_epsg``)."""
    return f"UTM_Zone{epsg % 100}_{'North' if epsg < 32700 else 'South'}"


# --- writing (for example products: the same paths and value formats as DLR's files) -------------


def metadata_xml(meta: ProductMetadata, files: Iterable[str] = (), padding: int = 0) -> bytes:
    """A METADATA.XML in DLR's layout holding ``meta`` (every field the reader uses, where DLR puts it).

    ``files`` are the product's file names for ``product/productFileInformation``; ``padding`` is a
    byte count of filler RPC coefficients in ``product/navigation``, to make files of the real size.
    """
    root = ET.Element(_ROOT, {"xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
                              "xsi:noNamespaceSchemaLocation": "metadata_Lx_00-02-00.xsd"})  # fmt: skip
    head = ET.SubElement(root, "metadata")
    schema = ET.SubElement(head, "schema")
    _add(schema, "versionSchema", "00.02.00")
    _add(schema, "name", "metadata_Lx_00-02-00.xsd")
    _add(schema, "processingLevel", meta.level)
    _add(head, "name", f"{meta.name}-METADATA.XML")
    _add(head, "comment", f"EnMAP Level 2A Product of datatake {meta.datatake}, tile {meta.tile}")
    processing = ET.SubElement(root, "processing")
    _add(processing, "productFormat", meta.product_format or "GeoTIFF+Metadata")
    _add(processing, "mapProjection", "UTM_Zone_of_Scene_Center")
    base = ET.SubElement(root, "base")
    polygon = ET.SubElement(ET.SubElement(base, "spatialCoverage"), "boundingPolygon")
    ul, ur, lr, ll = meta.corners
    for frame, (lon, lat) in zip(("upper_left", "lower_left", "lower_right", "upper_right", "upper_left"),
                                 (ul, ll, lr, ur, ul), strict=True):  # fmt: skip
        point = ET.SubElement(polygon, "point")
        _add(point, "frame", frame)
        ET.SubElement(point, "latitude", unit="DEG").text = f"{lat:.7f}"
        ET.SubElement(point, "longitude", unit="DEG").text = f"{lon:.7f}"
        _add(point, "utcTime", _time(meta.acquired))
    temporal = ET.SubElement(base, "temporalCoverage")
    _add(temporal, "startTime", _time(meta.acquired))
    _add(base, "revision", meta.processor)
    _add(base, "format", f"ENMAP_{meta.level}")
    _add(base, "level", meta.level)
    _add(base, "archivedVersion", meta.processor)
    specific = ET.SubElement(root, "specific")
    flags = ET.SubElement(specific, "qualityFlag")
    for tag, value in (("overallQuality", meta.quality), ("cloudCover", meta.cloud_cover),
                       ("hazeCover", meta.haze_cover), ("cirrusCover", meta.cirrus_cover),
                       ("snowCover", meta.snow_cover), ("waterCover", meta.water_cover),
                       ("cloudShadow", meta.cloud_shadow)):  # fmt: skip
        if value is not None:
            _add(flags, tag, str(round(value)))
    _add(specific, "processingDateTime", _time(meta.processed))
    _add(specific, "mission", "EnMAP")
    _add(specific, "datatakeID", f"{meta.datatake:010d}")
    _add(specific, "tileID", f"{meta.tile:02d}")
    _add(specific, "pixelSize", "30")
    bands = ET.SubElement(specific, "bandCharacterisation")
    b = meta.bands
    for number, values in enumerate(zip(b.centres_nm, b.fwhm_nm, b.gains, b.offsets, strict=True), 1):
        band = ET.SubElement(bands, "bandID", number=str(number))
        for tag, value in zip(("wavelengthCenterOfBand", "FWHMOfBand", "GainOfBand", "OffsetOfBand"), values,
                              strict=True):  # fmt: skip
            _add(band, tag, f"{value:g}")
    if meta.width is not None and meta.height is not None:
        _add(specific, "pixelSizeOfOrthoScene", "30")
        _add(specific, "widthOfOrthoScene", str(meta.width))
        _add(specific, "heightOfOrthoScene", str(meta.height))
    product = ET.SubElement(root, "product")
    merge = ET.SubElement(ET.SubElement(product, "image"), "merge")
    _add(merge, "channels", str(meta.n_bands))
    _add(merge, "name", f"{meta.name}-SPECTRAL_IMAGE.TIF")
    _add(merge, "version", meta.processor)
    if meta.width is not None and meta.height is not None:
        dimension = ET.SubElement(merge, "dimension")
        _add(dimension, "columns", str(meta.width))
        _add(dimension, "rows", str(meta.height))
    _pad_rpc(ET.SubElement(product, "navigation"), padding)
    ortho = ET.SubElement(product, "ortho")
    if meta.projection is not None:
        _add(ortho, "projection", meta.projection)
    _add(ortho, "resolution", "30")
    info = ET.SubElement(product, "productFileInformation")
    for name in files:
        entry = ET.SubElement(info, "file")
        _add(entry, "name", name)
        _add(entry, "version", meta.processor)
        _add(entry, "format", "xml" if name.upper().endswith(".XML") else "binary")
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _add(parent: ET.Element, tag: str, text: str) -> None:
    ET.SubElement(parent, tag).text = text


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _pad_rpc(navigation: ET.Element, nbytes: int) -> None:
    """Per-band RPC coefficients, as in the real file's ``navigation/RPC``, totalling about ``nbytes``."""
    rpc = ET.SubElement(navigation, "RPC")
    names = [*_RPC_OFFSETS, *(f"{part}_{k:02d}" for part in ("ROW_NUM", "ROW_DEN", "COL_NUM", "COL_DEN")
                              for k in range(1, 21))]  # fmt: skip
    for number in range(1, nbytes // 5100 + 1):
        band = ET.SubElement(rpc, "bandID", number=str(number))
        for k, name in enumerate(names):
            _add(band, name, f"{(number + k) * 1e-3:.15e}")


_RPC_OFFSETS = ("ROW_OFF", "COL_OFF", "LAT_OFF", "LONG_OFF", "HEIGHT_OFF",
                "ROW_SCALE", "COL_SCALE", "LAT_SCALE", "LONG_SCALE", "HEIGHT_SCALE")  # fmt: skip
