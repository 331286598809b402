"""EnMAP L2A products: names and files.

A product is named ``ENMAP01-____L2A-DT<datatake:10>_<start>_<tile:3>_V<version:6>_<processed>Z`` and
delivered as a folder (or ZIP) of ``<name>-<SUFFIX>.<EXT>`` rasters plus ``<name>-METADATA.XML``.
Rasters come in the format the user ordered: GeoTIFF (``.TIF``; DLR's cloud archive serves
``_COG.TIF`` variants), ENVI (``.BSQ``, ``.BIL`` or ``.BIP`` with a ``.HDR`` header beside it) or
JPEG2000 (``.JP2``, also seen as ``.JPEG2000``). ``-HISTORY.XML``, the quicklooks ``-QL_VNIR`` and
``-QL_SWIR`` and ENVI headers are not assets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from spectral_corpus.catalog.errors import ProductError

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
#: DLR's STAC asset keys where they differ from ours.
DLR_ASSET_KEYS = {"pixelmask": "defective_pixel_mask", "quality_cloudshadow": "quality_cloud_shadow"}
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
#: Extensions of raster data files, by the format DLR writes them in.
RASTER_EXTENSIONS = ("TIF", "TIFF", "BSQ", "BIL", "BIP", "JP2", "JPEG2000")
_FILE = re.compile(
    rf"-(?P<suffix>[A-Z_]+?)(?:_COG)?\.(?P<ext>XML|{'|'.join(RASTER_EXTENSIONS)})$",
    re.IGNORECASE,
)


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
    if match is None:
        return None
    key = _SUFFIX_TO_ASSET.get(match["suffix"].upper())
    return key if (key == "metadata") == (match["ext"].upper() == "XML") else None


def product_filename(product: str, key: str, ext: str = "TIF") -> str:
    """The file name of asset ``key`` in a product (rasters with extension ``ext``)."""
    return f"{product}-{ASSET_SUFFIXES[key]}.{'XML' if key == 'metadata' else ext}"


