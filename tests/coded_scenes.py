"""Small EnMAP L2A products whose pixel values encode where they are, for unit tests of the stages.

``write_coded_product`` writes one product folder in DLR's layout (``METADATA.XML``, ``SPECTRAL_IMAGE.TIF`` and
the quality layers, rasters encoded by ``catalog.rasters.encode_raster``) and returns its ``SceneRecord`` as the
local archive reader makes it. The spectral image holds ``coded_values``: a value that changes with the band, the
pixel and the scene's ``key`` so that no window cut from another band, another place or another coded scene can
equal the right one (see ``coded_values``). Flagged pixels of the quality layers are placed one by one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from affine import Affine
from pyproj import Transformer

from spectral_corpus.catalog.archive import index_archive
from spectral_corpus.catalog.bands import N_BANDS, NODATA, REFLECTANCE_SCALE, band_table
from spectral_corpus.catalog.metadata import Bands, ProductMetadata, metadata_xml, projection_name
from spectral_corpus.catalog.product import ASSET_SUFFIXES, ProductName, product_filename
from spectral_corpus.catalog.rasters import encode_raster
from spectral_corpus.catalog.scenes import SceneRecord
from spectral_corpus.stages.grid import ANCHOR_M, CELL_M, PIXEL_M

#: A prime just below 2**16: values are ``x - OFFSET`` for x in [0, PRIME), never NODATA (-32768).
PRIME = 65521
OFFSET = 32760
#: Quality layers a product carries (everything but the image and METADATA.XML), uint8.
QUALITY_KEYS = tuple(key for key in ASSET_SUFFIXES if key not in ("image", "metadata"))
#: What a quality layer holds where nothing is flagged (QL_QUALITY_CLASSES: 1 = land).
LAYER_DEFAULT = {"quality_classes": 1}
#: The raster format of a product's files unless told otherwise (DLR's uncompressed GeoTIFF strips).
RASTER_FORMAT = "GTiff"


def coded_values(key: int, bands: np.ndarray, rows: np.ndarray, cols: np.ndarray, width: int) -> np.ndarray:
    """int16 values (band, row, col) of the coded scene ``key`` at 1-based ``bands``, for rows x cols.

    ``value = s m mod 65521 - 32760`` with ``s = row * width + col`` and the multiplier ``m = (2 band + 1) 2**key``.
    Two windows agree only if they are the same band of the same scene at the same place (two pixels side by
    side are enough): neighbours differ by ``m`` (mod the prime), so equal windows have equal multipliers, which
    means equal bands and keys (odd part and power of two of ``m < 65521``); then ``s`` agrees mod 65521, and two
    places whose ``s`` differ by less than that are the same place.
    """
    if not 0 <= key <= 6:
        raise ValueError(f"key must be 0..6, got {key}")
    s = (np.asarray(rows, np.int64)[:, None] * width + np.asarray(cols, np.int64)[None, :]) % PRIME
    factor = (2 * np.asarray(bands, np.int64) + 1) << key  # at most 449 * 64: products stay below 2**31
    values = s.astype(np.int32)[None] * factor.astype(np.int32)[:, None, None]
    np.remainder(values, PRIME, out=values)
    return (values - OFFSET).astype(np.int16)


@dataclass(frozen=True)
class CodedScene:
    """One product: its name parts, its raster grid, and the pixels to flag.

    ``nodata`` lists (row, col) set to NODATA in band 1 of the image (the other bands keep their codes);
    ``flags`` maps a quality layer key to ``(row, col, value)`` triples. ``n_bands`` may differ from the 224
    that METADATA.XML always claims (a product to reject); so may ``meta_width`` (METADATA.XML's width).
    """

    key: int
    x0: float
    y0: float
    width: int
    height: int
    epsg: int = 32632
    datatake: int = 5001
    tile: int = 1
    acquired: datetime = datetime(2024, 6, 1, 10, 30, 0, tzinfo=UTC)
    processed: datetime = datetime(2024, 6, 3, 2, 0, 0, tzinfo=UTC)
    processor: str = "01.05.00"
    n_bands: int = N_BANDS
    nodata: tuple[tuple[int, int], ...] = ()
    flags: Mapping[str, tuple[tuple[int, int, int], ...]] = field(default_factory=dict)
    meta_width: int | None = None
    raster_format: str = RASTER_FORMAT

    @property
    def name(self) -> str:
        """The product name."""
        version = self.processor.replace(".", "")
        return str(ProductName(self.datatake, self.acquired, self.tile, version, self.processed))

    @property
    def transform(self) -> Affine:
        """North-up 30 m geotransform with the upper-left corner at (x0, y0)."""
        return Affine(PIXEL_M, 0, self.x0, 0, -PIXEL_M, self.y0)

    def values(self, bands: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
        """What the image holds at 1-based ``bands`` in the ``size`` x ``size`` window at (row, col)."""
        rows, cols = np.arange(row, row + size), np.arange(col, col + size)
        window = coded_values(self.key, bands, rows, cols, self.width)
        for r, c in self.nodata:
            if row <= r < row + size and col <= c < col + size:
                window[np.asarray(bands) == 1, r - row, c - col] = NODATA
        return window

    def cube(self) -> np.ndarray:
        """The whole spectral image (n_bands, height, width)."""
        cube = coded_values(self.key, np.arange(1, self.n_bands + 1), np.arange(self.height), np.arange(self.width),
                            self.width)  # fmt: skip
        for r, c in self.nodata:
            cube[0, r, c] = NODATA
        return cube

    def layer(self, key: str) -> np.ndarray:
        """A quality layer (height, width) uint8 with its flagged pixels."""
        layer = np.full((self.height, self.width), LAYER_DEFAULT.get(key, 0), np.uint8)
        for r, c, value in self.flags.get(key, ()):
            layer[r, c] = value
        return layer


def cell_corner(ix: int, iy: int, col_px: int, row_px: int) -> tuple[float, float]:
    """The upper-left corner (x0, y0) of a raster whose pixel (row_px, col_px) is cell (ix, iy)'s first pixel."""
    return ANCHOR_M + CELL_M * ix - PIXEL_M * col_px, ANCHOR_M + CELL_M * (iy + 1) + PIXEL_M * row_px


def write_coded_product(archive: Path, scene: CodedScene) -> SceneRecord:
    """Write ``scene`` as a product folder in ``archive`` and return its record from the archive reader."""
    folder = archive / scene.name
    folder.mkdir(parents=True)
    crs, transform = f"EPSG:{scene.epsg}", scene.transform
    rasters = {"image": (scene.cube(), NODATA), **{key: (scene.layer(key)[None], None) for key in QUALITY_KEYS}}
    names = []
    for key, (array, nodata) in rasters.items():
        stem = f"{scene.name}-{ASSET_SUFFIXES[key]}"
        for member, data in encode_raster(
            stem, array, crs=crs, transform=transform, nodata=nodata, fmt=scene.raster_format
        ).items():
            (folder / member).write_bytes(data)
            names.append(member)
    metadata = product_filename(scene.name, "metadata")
    (folder / metadata).write_bytes(metadata_xml(_metadata(scene), files=sorted([*names, metadata])))
    records = [r for r in index_archive(archive) if r.product == scene.name]
    assert len(records) == 1, records
    return records[0]


def _metadata(scene: CodedScene) -> ProductMetadata:
    table = band_table()
    t = scene.transform
    xs = [t.c, t.c + PIXEL_M * scene.width, t.c + PIXEL_M * scene.width, t.c]
    ys = [t.f, t.f, t.f - PIXEL_M * scene.height, t.f - PIXEL_M * scene.height]
    lon, lat = Transformer.from_crs(scene.epsg, 4326, always_xy=True).transform(xs, ys)
    return ProductMetadata(
        name=scene.name,
        level="L2A",
        datatake=scene.datatake,
        tile=scene.tile,
        processor=scene.processor,
        acquired=scene.acquired,
        processed=scene.processed,
        n_bands=N_BANDS,
        corners=tuple((round(a, 7), round(b, 7)) for a, b in zip(lon, lat, strict=True)),
        bands=Bands(
            centres_nm=tuple(table["center_nm"].tolist()),
            fwhm_nm=tuple(table["fwhm_nm"].tolist()),
            gains=(REFLECTANCE_SCALE,) * N_BANDS,
            offsets=(0.0,) * N_BANDS,
        ),
        width=scene.meta_width if scene.meta_width is not None else scene.width,
        height=scene.height,
        product_format="GeoTIFF+Metadata",
        quality=0,
        cloud_cover=0,
        cloud_shadow=0,
        snow_cover=0,
        haze_cover=0,
        cirrus_cover=0,
        water_cover=0,
        projection=projection_name(scene.epsg),
    )
