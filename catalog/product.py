"""EnMAP L2A products: names, files and METADATA.XML.

A product is named ``ENMAP01-____L2A-DT<datatake:10>_<start>_<tile:3>_V<version:6>_<processed>Z`` and
delivered as a folder (or ZIP) of ``<name>-<SUFFIX>.TIF`` files plus ``<name>-METADATA.XML``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime

from catalog.errors import ProductError

_NAME = re.compile(
    r"^ENMAP01-____L2A-DT(?P<datatake>\d{10})_(?P<acquired>\d{8}T\d{6}Z)_(?P<tile>\d{3})"
    r"_V(?P<version>\d{6})_(?P<processed>\d{8}T\d{6}Z)$"
)
_STAMP = "%Y%m%dT%H%M%SZ"

#: Asset key -> file suffix after ``<name>-``. ``image`` may also come as ``SPECTRAL_IMAGE_COG``.
ASSET_SUFFIXES: dict[str, str] = {
    "image": "SPECTRAL_IMAGE",
    "metadata": "METADATA",
    "pixelmask": "QL_PIXELMASK",
    "quality_classes": "QL_QUALITY_CLASSES",
    "quality_cloud": "QL_QUALITY_CLOUD",
    "quality_cloudshadow": "QL_QUALITY_CLOUDSHADOW",
    "quality_haze": "QL_QUALITY_HAZE",
    "quality_cirrus": "QL_QUALITY_CIRRUS",
    "quality_snow": "QL_QUALITY_SNOW",
    "quality_testflags": "QL_QUALITY_TESTFLAGS",
}
#: Quality layers the inspect stage reads (a product without one of them is rejected).
REQUIRED_QUALITY = (
    "pixelmask",
    "quality_classes",
    "quality_cloud",
    "quality_cloudshadow",
    "quality_haze",
    "quality_cirrus",
    "quality_snow",
)
_SUFFIX_TO_ASSET = {suffix: key for key, suffix in ASSET_SUFFIXES.items()}
_FILE = re.compile(r"-(?P<suffix>[A-Z_]+?)(?:_COG)?\.(?P<ext>TIF|TIFF|XML)$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class ProductName:
    """The parsed parts of an EnMAP L2A product name."""

    datatake: int
    acquired: datetime
    tile: int
    version: str
    processed: datetime

    @classmethod
    def parse(cls, name: str) -> ProductName:
        """Parse a product name; raise ProductError naming it when it is not one."""
        match = _NAME.match(name)
        if match is None:
            raise ProductError(f"{name!r} is not an EnMAP L2A product name")
        return cls(
            datatake=int(match["datatake"]),
            acquired=_parse_stamp(match["acquired"]),
            tile=int(match["tile"]),
            version=match["version"],
            processed=_parse_stamp(match["processed"]),
        )

    def __str__(self) -> str:
        return (
            f"ENMAP01-____L2A-DT{self.datatake:010d}_{self.acquired.strftime(_STAMP)}_{self.tile:03d}"
            f"_V{self.version}_{self.processed.strftime(_STAMP)}"
        )


def _parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, _STAMP).replace(tzinfo=UTC)


def is_product_name(name: str) -> bool:
    """True when ``name`` (a folder or ZIP stem) is an EnMAP L2A product name."""
    return _NAME.match(name) is not None


def asset_key(filename: str, product: str) -> str | None:
    """The asset key of a product file (``image``, ``metadata``, ``quality_cloud``...), or None."""
    base = filename.rsplit("/", 1)[-1]
    if not base.startswith(product + "-"):
        return None
    match = _FILE.search(base[len(product) :])
    return _SUFFIX_TO_ASSET.get(match["suffix"].upper()) if match else None


def product_filename(product: str, key: str) -> str:
    """The file name of asset ``key`` in a product."""
    ext = "XML" if key == "metadata" else "TIF"
    return f"{product}-{ASSET_SUFFIXES[key]}.{ext}"


@dataclass(frozen=True)
class ProductMetadata:
    """What a METADATA.XML says about a product (the fields this project reads)."""

    name: str
    datatake: int
    tile: int
    version: str
    acquired: datetime
    processed: datetime
    epsg: int
    width: int
    height: int
    n_bands: int
    cloud_cover: float
    snow_cover: float
    quality: float
    #: (lon, lat) of upper-left, upper-right, lower-right, lower-left corners.
    corners: tuple[tuple[float, float], ...]
    wavelengths_nm: tuple[float, ...] = field(repr=False)
    fwhm_nm: tuple[float, ...] = field(repr=False)
    gain: float = 1e-4
    offset: float = 0.0


_CORNERS = ("upper_left", "upper_right", "lower_right", "lower_left")


def metadata_to_xml(meta: ProductMetadata) -> bytes:
    """Serialise metadata in the layout of an EnMAP L2A METADATA.XML (the subset we use)."""
    root = ET.Element("level_X")
    head = ET.SubElement(root, "metadata")
    _text(head, "name", meta.name)
    _text(head, "datatakeID", str(meta.datatake))
    _text(head, "tileID", str(meta.tile))
    _text(head, "processingLevel", "L2A")
    _text(head, "processorVersion", meta.version)
    _text(head, "processingTime", meta.processed.strftime("%Y-%m-%dT%H:%M:%S.000000Z"))
    base = ET.SubElement(root, "base")
    polygon = ET.SubElement(ET.SubElement(base, "spatialCoverage"), "boundingPolygon")
    for frame, (lon, lat) in zip(_CORNERS, meta.corners, strict=True):
        point = ET.SubElement(polygon, "point")
        _text(point, "frame", frame)
        _text(point, "latitude", f"{lat:.6f}")
        _text(point, "longitude", f"{lon:.6f}")
    temporal = ET.SubElement(base, "temporalCoverage")
    _text(temporal, "startTime", meta.acquired.strftime("%Y-%m-%dT%H:%M:%S.000000Z"))
    product = ET.SubElement(root, "product")
    merge = ET.SubElement(ET.SubElement(product, "image"), "merge")
    _text(merge, "columns", str(meta.width))
    _text(merge, "rows", str(meta.height))
    _text(merge, "numberOfBands", str(meta.n_bands))
    _text(merge, "epsgCode", str(meta.epsg))
    quality = ET.SubElement(product, "quality")
    _text(quality, "cloudCover", f"{meta.cloud_cover:.3f}")
    _text(quality, "snowCover", f"{meta.snow_cover:.3f}")
    _text(quality, "overallQuality", f"{meta.quality:.3f}")
    bands = ET.SubElement(ET.SubElement(root, "specific"), "bandCharacterisation")
    for number, (centre, fwhm) in enumerate(zip(meta.wavelengths_nm, meta.fwhm_nm, strict=True), 1):
        band = ET.SubElement(bands, "bandID", number=str(number))
        _text(band, "wavelengthCenterOfBand", f"{centre:.2f}")
        _text(band, "FWHMOfBand", f"{fwhm:.2f}")
        _text(band, "GainOfBand", repr(meta.gain))
        _text(band, "OffsetOfBand", repr(meta.offset))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def metadata_from_xml(data: bytes, source: str) -> ProductMetadata:
    """Parse METADATA.XML bytes; raise ProductError naming ``source`` and the missing or bad field."""
    try:
        root = ET.fromstring(data)
        bands = root.findall("specific/bandCharacterisation/bandID")
        corners = {p.findtext("frame"): p for p in root.findall("base/spatialCoverage/boundingPolygon/point")}
        return ProductMetadata(
            name=_field(root, "metadata/name"),
            datatake=int(_field(root, "metadata/datatakeID")),
            tile=int(_field(root, "metadata/tileID")),
            version=_field(root, "metadata/processorVersion"),
            acquired=_parse_iso(_field(root, "base/temporalCoverage/startTime")),
            processed=_parse_iso(_field(root, "metadata/processingTime")),
            epsg=int(_field(root, "product/image/merge/epsgCode")),
            width=int(_field(root, "product/image/merge/columns")),
            height=int(_field(root, "product/image/merge/rows")),
            n_bands=int(_field(root, "product/image/merge/numberOfBands")),
            cloud_cover=float(_field(root, "product/quality/cloudCover")),
            snow_cover=float(_field(root, "product/quality/snowCover")),
            quality=float(_field(root, "product/quality/overallQuality")),
            corners=tuple(
                (float(_field(corners[c], "longitude")), float(_field(corners[c], "latitude"))) for c in _CORNERS
            ),
            wavelengths_nm=tuple(float(_field(b, "wavelengthCenterOfBand")) for b in bands),
            fwhm_nm=tuple(float(_field(b, "FWHMOfBand")) for b in bands),
            gain=float(_field(bands[0], "GainOfBand")) if bands else 1e-4,
            offset=float(_field(bands[0], "OffsetOfBand")) if bands else 0.0,
        )
    except ET.ParseError as error:
        raise ProductError(f"{source}: METADATA.XML is not well-formed XML ({error})") from error
    except (KeyError, ValueError) as error:
        raise ProductError(f"{source}: METADATA.XML is missing or has a bad field ({error})") from error


def _text(parent: ET.Element, tag: str, text: str) -> None:
    ET.SubElement(parent, tag).text = text


def _field(node: ET.Element, path: str) -> str:
    text = node.findtext(path)
    if text is None or not text.strip():
        raise KeyError(path)
    return text.strip()


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
