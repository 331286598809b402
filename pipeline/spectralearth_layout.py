"""The SpectralEarth GeoTIFF layout, defined once for ``export-spectralearth`` and ``import-spectralearth``.

What the published dataset looks like, as its authors' own code reads it (checked in the training
repository https://github.com/AABNassim/spectral_earth, commit 5084a29):

- ``src/datasets/spectral_earth.py`` (``SpectralEarthDataset``) lists ``ROOT/enmap/<patch_dir>/`` and
  takes every ``*.tif`` in a folder as one acquisition of that location (it draws one, or two as the
  views of a contrastive pair), read whole with ``rasterio.open(path).read()`` as int16;
  ``configs/data/spectral_earth.yaml``: 202 bands, 128 x 128 px.
- The file names follow the split lists of its downstream sets (``data/splits/enmap_cdl/train.txt``:
  ``0000823/04138.tif``, ``0000996/04134.tif``, ``0000997/04134.tif``): a 7-digit location folder and a
  5-digit number that neighbouring locations share, the index of the scene the patch was cut from.
- Nothing else is in the files that the loader reads: no acquisition time, product or split; the
  repository ships no index of them. The 3.3 TB dataset itself is served by DLR's GeoService
  (https://geoservice.dlr.de/web/datasets/enmap_spectralearth) after registration.

So a tree is ``DEST/enmap/<location_id:07d>/<scene_id:05d>.tif``: int16 counts (reflectance x 10000,
nodata -32768), the patch's UTM CRS and 30 m transform, one band per corpus band. What we add stays
out of the loader's way: GDAL metadata in each file (``observation_tags``, ``band_tags``; rasterio's
``.tags()`` and ``gdalinfo`` show it), band scale 1e-4 and offset 0, and an index table
``DEST/index.parquet`` beside the ``enmap`` folder. This module is pure: names, paths and the
encoding of tags and index rows; the GeoTIFF I/O is in ``pipeline.export`` and
``pipeline.spectralearth_import``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
from affine import Affine

from spectral_corpus.catalog.bands import REFLECTANCE_SCALE
from spectral_corpus.corpus_format import FLAGS, PATCH_PX, PIXEL_M

#: The sensor folder under the dataset root (``SpectralEarthDataset(sensor="enmap")``).
SENSOR_DIR = "enmap"
#: The index table beside the sensor folder: one row per file.
INDEX_FILE = "index.parquet"
#: What ``--compress`` offers: ``none`` is what the published files are.
COMPRESSIONS = ("none", "deflate", "zstd")

_PATH = re.compile(r"^(?P<location>\d+)/(?P<scene>\d+)\.tif$")


def patch_path(location_id: int, scene_id: int) -> str:
    """A patch's file, relative to the dataset root."""
    return f"{SENSOR_DIR}/{location_id:07d}/{scene_id:05d}.tif"


def parse_patch_path(relative: str) -> tuple[int, int] | None:
    """``(location_id, scene_id)`` of a file ``<location>/<scene>.tif`` under the sensor folder; None
    when the names are not numbers."""
    match = _PATH.match(relative)
    return None if match is None else (int(match["location"]), int(match["scene"]))


# --- georeferencing -------------------------------------------------------------------------------

HALF_PATCH_M = PATCH_PX * PIXEL_M / 2


def patch_transform(x: float, y: float) -> Affine:
    """The north-up 30 m transform of the patch centred on map coordinates ``(x, y)``."""
    return Affine(PIXEL_M, 0, x - HALF_PATCH_M, 0, -PIXEL_M, y + HALF_PATCH_M)


def patch_centre(transform: Affine) -> tuple[float, float]:
    """Map coordinates of the centre of a 128 x 128 px patch with this (north-up) transform."""
    return transform.c + HALF_PATCH_M, transform.f - HALF_PATCH_M


# --- tags of a file -------------------------------------------------------------------------------

#: Dataset-level tags (GDAL default metadata domain), in the order they are written.
TAG_PRODUCT = "PRODUCT"
TAG_ACQUIRED = "ACQUISITION_TIME"
TAG_LOCATION = "LOCATION_ID"
TAG_SCENE = "SCENE_ID"
TAG_SPLIT = "SPLIT"
TAG_ROW = "PRODUCT_ROW"
TAG_COL = "PRODUCT_COL"
TAG_SCALE = "REFLECTANCE_SCALE"
TAG_OFFSET = "REFLECTANCE_OFFSET"
FRACTION_TAGS = {f"frac_{flag}": f"FRACTION_{flag.upper()}" for flag in FLAGS}
#: Band-level tags: ENVI's names in the default domain, GDAL's (3.10+) in the IMAGERY domain.
BAND_WAVELENGTH = "wavelength"
BAND_FWHM = "fwhm"
BAND_UNITS = "wavelength_units"
IMAGERY = "IMAGERY"


def observation_tags(row: Mapping[str, Any]) -> dict[str, str]:
    """The dataset tags of one observation (a row of the observations table); unknown values are left out."""
    tags = {
        TAG_PRODUCT: _text(row.get("product")),
        TAG_ACQUIRED: _time_text(row.get("acquired")),
        TAG_LOCATION: _int_text(row.get("location_id")),
        TAG_SCENE: _int_text(row.get("scene_id")),
        TAG_SPLIT: _text(row.get("split")),
        TAG_ROW: _int_text(row.get("row")),
        TAG_COL: _int_text(row.get("col")),
        TAG_SCALE: repr(REFLECTANCE_SCALE),
        TAG_OFFSET: "0",
        **{tag: _float_text(row.get(column)) for column, tag in FRACTION_TAGS.items()},
    }
    return {key: value for key, value in tags.items() if value is not None}


def read_observation_tags(tags: Mapping[str, str]) -> dict[str, Any]:
    """The observation fields the tags of a file carry (``observation_tags`` read back); absent ones are
    left out. Raises ValueError on a value that cannot be read."""
    fields: dict[str, Any] = {}
    if tags.get(TAG_PRODUCT):
        fields["product"] = tags[TAG_PRODUCT]
    if tags.get(TAG_ACQUIRED):
        fields["acquired"] = pd.Timestamp(tags[TAG_ACQUIRED]).tz_convert("UTC")
    if tags.get(TAG_SPLIT):
        fields["split"] = tags[TAG_SPLIT]
    for column, tag in (("location_id", TAG_LOCATION), ("scene_id", TAG_SCENE), ("row", TAG_ROW), ("col", TAG_COL)):
        if tags.get(tag):
            fields[column] = int(tags[tag])
    for column, tag in FRACTION_TAGS.items():
        if tags.get(tag):
            fields[column] = float(tags[tag])
    if tags.get(TAG_SCALE) and float(tags[TAG_SCALE]) != REFLECTANCE_SCALE:
        raise ValueError(f"{TAG_SCALE} is {tags[TAG_SCALE]}, not {REFLECTANCE_SCALE!r} (EnMAP L2A counts)")
    return fields


def band_tags(centre_nm: float, fwhm_nm: float) -> tuple[dict[str, str], dict[str, str]]:
    """One band's tags: ENVI-style in nanometres (default domain) and GDAL's in micrometres (IMAGERY)."""
    default = {BAND_WAVELENGTH: repr(float(centre_nm)), BAND_FWHM: repr(float(fwhm_nm)), BAND_UNITS: "nm"}
    imagery = {"CENTRAL_WAVELENGTH_UM": _micrometres(centre_nm), "FWHM_UM": _micrometres(fwhm_nm)}
    return default, imagery


def _micrometres(nanometres: float) -> str:
    return repr(round(float(nanometres) / 1000.0, 9))  # 7.03 nm -> "0.00703", not 0.007030000000000001


def band_description(band: int, centre_nm: float) -> str:
    """A band's description: its EnMAP band number and centre."""
    return f"band {band} ({centre_nm:.1f} nm)"


_DESCRIPTION = re.compile(r"^band (?P<band>\d+) \(")


def read_band(description: str | None, tags: Mapping[str, str]) -> tuple[int | None, float | None, float | None]:
    """``(band number, centre nm, FWHM nm)`` as a file's band description and tags give them (None: absent)."""
    match = _DESCRIPTION.match(description or "")
    centre, fwhm = tags.get(BAND_WAVELENGTH), tags.get(BAND_FWHM)
    if centre is not None and tags.get(BAND_UNITS, "nm").lower() not in ("nm", "nanometers", "nanometres"):
        centre = fwhm = None  # another unit than ours: not read
    return (
        int(match["band"]) if match else None,
        float(centre) if centre is not None else None,
        float(fwhm) if fwhm is not None else None,
    )


# --- the index table ------------------------------------------------------------------------------

_UTC = pa.timestamp("us", tz="UTC")
#: ``index.parquet``: one row per file. ``obs`` is the observation's index in the corpus exported;
#: ``transform`` the file's geotransform as rasterio's ``Affine`` (a, b, c, d, e, f).
INDEX_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("obs", pa.int64()),
        ("location_id", pa.int64()),
        ("scene_id", pa.int64()),
        ("product", pa.string()),
        ("acquired", _UTC),
        ("split", pa.string()),
        ("epsg", pa.int64()),
        ("ix", pa.int64()),
        ("iy", pa.int64()),
        ("row", pa.int64()),
        ("col", pa.int64()),
        ("transform", pa.list_(pa.float64(), 6)),
        *[(column, pa.float32()) for column in FRACTION_TAGS],
    ]
)
#: Index columns an import reads (each optional but for one way of naming the file).
INDEX_FIELDS = ("obs", "product", "acquired", "split", "row", "col", *FRACTION_TAGS)


def index_table(rows: pd.DataFrame) -> pa.Table:
    """The index table of exported files (``rows``: the columns of ``INDEX_SCHEMA``)."""
    columns = {
        field.name: pa.array(
            [list(t) for t in rows[field.name]] if field.name == "transform" else rows[field.name],
            type=field.type,
            from_pandas=True,
        )
        for field in INDEX_SCHEMA
    }
    return pa.table(columns, schema=INDEX_SCHEMA)


# --- values as tag text ---------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT


def _text(value: Any) -> str | None:
    return None if _missing(value) else str(value)


def _int_text(value: Any) -> str | None:
    return None if _missing(value) or pd.isna(value) else str(int(value))


def _float_text(value: Any) -> str | None:
    return None if _missing(value) or pd.isna(value) else repr(float(value))


def _time_text(value: Any) -> str | None:
    """ISO 8601 in UTC with a ``Z`` (microseconds only when there are any)."""
    if _missing(value) or pd.isna(value):
        return None
    return pd.Timestamp(value).tz_convert("UTC").isoformat().replace("+00:00", "Z")
