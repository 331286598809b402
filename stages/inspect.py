"""Inspect one scene: validate the product and count flagged pixels in every grid cell.

Reads the quality layers and the first band of the spectral image (the nodata mask), never the cube.
A product that cannot be used yields a rejected result whose reason names the file and the problem.
Size, CRS and transform come from the image's own header; the image must agree with what the scene
record says of it (from METADATA.XML's ``product/ortho/projection`` and dimensions, or a STAC item's
``proj:epsg`` and ``proj:shape``), and have the 224 bands the record was accepted for.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import rasterio
import tifffile
from rasterio.errors import RasterioError

from spectral_corpus.catalog.bands import N_BANDS, NODATA
from spectral_corpus.catalog.hrefs import is_local, open_local, open_raster
from spectral_corpus.catalog.metadata import projection_name
from spectral_corpus.catalog.product import REQUIRED_QUALITY
from spectral_corpus.catalog.rejections import RejectedError, Rejection
from spectral_corpus.catalog.scenes import METADATA_XML, OK, REJECTED, SceneRecord
from spectral_corpus.corpus_format import FLAGS
from spectral_corpus.stages.grid import PATCH_PX, GridError, cell_windows, check_lattice

#: What inspect counts per cell; the plan adds the scene's datatake, tile, time and the drop reason.
CANDIDATE_COLUMNS = ["product", "epsg", "ix", "iy", "row", "col", "n_flagged", *(f"n_{flag}" for flag in FLAGS)]


@dataclass(frozen=True)
class InspectResult:
    """The outcome of inspecting one scene."""

    product: str
    status: str
    rejection: Rejection | None = None
    reason: str = ""
    epsg: int | None = None
    candidates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CANDIDATE_COLUMNS))


def inspect_scene(record: SceneRecord) -> InspectResult:
    """Validate a scene and count its flagged pixels per cell; never raises for bad input."""
    try:
        epsg, flags = _read_flags(record)
    except RejectedError as error:
        return InspectResult(record.product, REJECTED, error.code, str(error))
    except GridError as error:
        return InspectResult(record.product, REJECTED, Rejection.OFF_LATTICE, str(error))
    except (RasterioError, OSError, zipfile.BadZipFile) as error:
        return InspectResult(record.product, REJECTED, Rejection.UNREADABLE, str(error))
    return InspectResult(record.product, OK, epsg=epsg, candidates=_count_cells(record.product, epsg, flags))


@dataclass(frozen=True)
class _Flags:
    transform: object
    width: int
    height: int
    masks: dict[str, np.ndarray]


def _read_flags(record: SceneRecord) -> tuple[int, _Flags]:
    assets = record.asset_map
    if "image" not in assets:
        raise RejectedError(Rejection.NO_IMAGE, f"{record.product}: no spectral image asset")
    missing = [key for key in REQUIRED_QUALITY if key not in assets]
    if missing:
        missing_layers = f"{record.product}: missing quality layer(s) {', '.join(missing)}"
        raise RejectedError(Rejection.QUALITY_LAYERS, missing_layers)
    href = assets["image"]
    with open_raster(href) as image:
        _check_image(image, href)
        epsg = check_lattice(image.transform, image.crs, href)
        _check_catalog(record, image, epsg, href)
        nodata = _read_band(image, href) == NODATA
        shape, transform = image.shape, image.transform
    layers = {key: _read_layer(assets[key], shape, transform) for key in REQUIRED_QUALITY}
    masks = {
        "nodata": nodata | (layers["pixelmask"] != 0) | (layers["quality_classes"] == 3),
        "cloud": layers["quality_cloud"] != 0,
        "cloudshadow": layers["quality_cloudshadow"] != 0,
        "snow": layers["quality_snow"] != 0,
        "haze": layers["quality_haze"] != 0,
        "cirrus": layers["quality_cirrus"] != 0,
        "water": layers["quality_classes"] == 2,
    }
    if masks["nodata"].all():
        raise RejectedError(Rejection.NO_VALID_PIXELS, f"{href}: no valid pixels (the whole scene is nodata)")
    return epsg, _Flags(transform, shape[1], shape[0], masks)


def _check_image(image: rasterio.DatasetReader, href: str) -> None:
    if image.count != N_BANDS:
        raise RejectedError(Rejection.BAND_COUNT, f"{href}: spectral image has {image.count} bands, expected {N_BANDS}")
    if set(image.dtypes) != {"int16"}:
        raise RejectedError(Rejection.DATA_TYPE, f"{href}: spectral image dtype {image.dtypes[0]}, expected int16")
    if image.nodata is not None and image.nodata != NODATA:
        raise RejectedError(Rejection.DATA_TYPE, f"{href}: spectral image nodata {image.nodata}, expected {NODATA}")
    if image.driver == "GTiff":  # ENVI and JPEG 2000 deliveries have no strip or tile offsets to check
        _check_blocks_present(href)


def _check_catalog(record: SceneRecord, image: rasterio.DatasetReader, epsg: int, href: str) -> None:
    """The image must agree with what its METADATA.XML (or STAC item) says of it: CRS and size."""
    source = record.described_by or "the catalog"
    crs = projection_name if record.described_by == METADATA_XML else (lambda code: f"EPSG:{code}")
    pairs = {
        "projection": (crs(record.epsg) if record.epsg else None, crs(epsg)),
        "width": (record.width, image.width),
        "height": (record.height, image.height),
    }
    differ = [
        f"{what} {said} in {source}, {found} in the image"
        for what, (said, found) in pairs.items()
        if said is not None and said != found
    ]
    if differ:
        disagreement = f"{href}: {source} disagrees with the image: {'; '.join(differ)}"
        raise RejectedError(Rejection.CATALOG_DISAGREES, disagreement)


def _read_band(dataset: rasterio.DatasetReader, href: str) -> np.ndarray:
    """Band 1 of a raster; a block that cannot be decoded is reported with GDAL's reasons."""
    try:
        return dataset.read(1)
    except RasterioError as error:
        raise RejectedError(Rejection.CORRUPT_DATA, f"{href}: data is corrupt ({gdal_reasons(error)})") from error


def gdal_reasons(error: BaseException) -> str:
    """GDAL's own words for a failed read, from the whole chain of causes (rasterio wraps them)."""
    causes: list[str] = []
    cause: BaseException | None = error
    while cause is not None:
        text = str(cause).strip()
        if text and not text.startswith("Read failed") and not any(text in known for known in causes):
            causes.append(text)
        cause = cause.__cause__
    return "; ".join(causes) or str(error)


def _check_blocks_present(href: str) -> None:
    """Fail fast on a truncated GeoTIFF: every block of the image must end inside the file (the strip or
    tile offsets and byte counts of its first IFD, read at once by tifffile).

    Checked where the file can be sought: local files and stored ZIP members. Not remote images, nor
    compressed ZIP members (a ZIP cut short fails on opening, its central directory being at the end)."""
    if not is_local(href):
        return
    with open_local(href) as file:
        if not file.seekable():
            return
        size = file.seek(0, io.SEEK_END)
        file.seek(0)  # tifffile reads from where the file stands
        with tifffile.TiffFile(file) as tiff:
            page = tiff.pages.first
            ends = np.asarray(page.dataoffsets, dtype=np.int64) + np.asarray(page.databytecounts, dtype=np.int64)
    end = int(ends.max(initial=0))
    if end > size:
        truncated = f"{href}: file is truncated ({size} bytes, image data extends to {end})"
        raise RejectedError(Rejection.TRUNCATED, truncated)


def _read_layer(href: str, shape: tuple[int, int], transform: object) -> np.ndarray:
    with open_raster(href) as layer:
        if layer.shape != shape or layer.transform != transform:
            reason = f"{href}: quality layer grid {layer.shape} differs from the image {shape}"
            raise RejectedError(Rejection.QUALITY_LAYERS, reason)
        return _read_band(layer, href)


def _count_cells(product: str, epsg: int, flags: _Flags) -> pd.DataFrame:
    grid = cell_windows(flags.transform, flags.width, flags.height)  # type: ignore[arg-type]
    if grid.n_rows == 0 or grid.n_cols == 0:
        return pd.DataFrame(columns=CANDIDATE_COLUMNS)
    rows = slice(grid.row0, grid.row0 + PATCH_PX * grid.n_rows)
    cols = slice(grid.col0, grid.col0 + PATCH_PX * grid.n_cols)

    def per_cell(mask: np.ndarray) -> np.ndarray:
        blocks = mask[rows, cols].reshape(grid.n_rows, PATCH_PX, grid.n_cols, PATCH_PX)
        return blocks.sum(axis=(1, 3), dtype=np.int64).ravel()

    flagged = np.logical_or.reduce([m for name, m in flags.masks.items() if name != "water"])
    cells = np.array(grid.cells(), dtype=np.int64).reshape(-1, 4)
    table = pd.DataFrame(
        {
            "product": product,
            "epsg": epsg,
            "ix": cells[:, 0],
            "iy": cells[:, 1],
            "row": cells[:, 2],
            "col": cells[:, 3],
            "n_flagged": per_cell(flagged),
            **{f"n_{name}": per_cell(mask) for name, mask in flags.masks.items()},
        }
    )
    return table[CANDIDATE_COLUMNS]
