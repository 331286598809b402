"""Why a scene is not used: a code given where the problem is found, recorded beside its detail.

The code goes into the scene table's ``rejection`` column (the human detail, naming the file, into
``reason``); ``info`` and the empty-run message count scenes by the code's label.
"""

from __future__ import annotations

from enum import StrEnum

from spectral_corpus.catalog.errors import CatalogError


class Rejection(StrEnum):
    """A scene's rejection code."""

    SUPERSEDED = "superseded"
    DUPLICATE = "duplicate"
    UNSAFE_ARCHIVE = "unsafe_archive"
    CORRUPT_ZIP = "corrupt_zip"
    BAD_METADATA = "bad_metadata"
    BAD_STAC_ITEM = "bad_stac_item"
    NO_IMAGE = "no_image"
    BAND_COUNT = "band_count"
    CATALOG_DISAGREES = "catalog_disagrees"
    DATA_TYPE = "data_type"
    QUALITY_LAYERS = "quality_layers"
    OFF_LATTICE = "off_lattice"
    NO_VALID_PIXELS = "no_valid_pixels"
    TRUNCATED = "truncated"
    CORRUPT_DATA = "corrupt_data"
    UNREADABLE = "unreadable"
    #: Read from a table of format version 1, which kept the detail only.
    UNRECORDED = "unrecorded"

    @property
    def label(self) -> str:
        """How the summaries name the group of scenes rejected with this code."""
        return _LABELS[self]


_LABELS = {
    Rejection.SUPERSEDED: "superseded by a newer processor version",
    Rejection.DUPLICATE: "duplicate copy of a product",
    Rejection.UNSAFE_ARCHIVE: "unsafe archive member",
    Rejection.CORRUPT_ZIP: "corrupt ZIP file",
    Rejection.BAD_METADATA: "missing or bad METADATA.XML",
    Rejection.BAD_STAC_ITEM: "bad STAC item",
    Rejection.NO_IMAGE: "no spectral image",
    Rejection.BAND_COUNT: "wrong band count",
    Rejection.CATALOG_DISAGREES: "METADATA.XML or STAC item disagrees with the image",
    Rejection.DATA_TYPE: "wrong data type",
    Rejection.QUALITY_LAYERS: "missing or bad quality layers",
    Rejection.OFF_LATTICE: "CRS or grid off the EnMAP lattice",
    Rejection.NO_VALID_PIXELS: "no valid pixels",
    Rejection.TRUNCATED: "truncated file",
    Rejection.CORRUPT_DATA: "corrupt raster data",
    Rejection.UNREADABLE: "unreadable",
    Rejection.UNRECORDED: "not recorded (format version 1)",
}


class RejectedError(CatalogError, ValueError):
    """A product fails a check: ``code`` says which, the message names the file and the reason."""

    def __init__(self, code: Rejection, message: str) -> None:
        super().__init__(message)
        self.code = code
