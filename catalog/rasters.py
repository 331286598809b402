"""Encode a raster in one of DLR's EnMAP L2A delivery formats, as files in memory (file name -> bytes).

DLR writes every raster of a product (spectral image and quality layers) in the format the user ordered
(METADATA.XML ``processing/productFormat``), with upper-case extensions:

- ``GTiff``: ``{stem}.TIF``, uncompressed and stripped as DLR writes it: band-interleaved, libtiff's default strips of
  at most 8 KB per band (7 rows of a 1,170-column uint8 layer).
- ``COG``: ``{stem}_COG.TIF``, the cloud-optimized GeoTIFF of DLR's STAC archive: 512 px tiles, DEFLATE with a
  horizontal predictor, no overviews.
- ``BSQ``, ``BIL``, ``BIP``: ENVI raw data ``{stem}.BSQ`` (``.BIL``, ``.BIP``) and its header ``{stem}.HDR``, which
  keeps the CRS, the nodata value (``data ignore value``) and the band names.
- ``JP2``: ``{stem}.JP2``, lossless JPEG2000 (OpenJPEG, ``QUALITY=100``, ``REVERSIBLE=YES``). It keeps no nodata value
  (GDAL reads it back as None) and no band descriptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio._io import virtual_file_to_buffer  # the only reader of /vsimem/ files other than a MemoryFile's own
from rasterio.io import MemoryFile

RASTER_FORMATS = ("GTiff", "COG", "BSQ", "BIL", "BIP", "JP2")
_ENVI_EXTENSIONS = ("BSQ", "BIL", "BIP")


@dataclass(frozen=True)
class _Format:
    suffix: str
    driver: str
    options: dict[str, str]


_FORMATS = {
    "GTiff": _Format(".TIF", "GTiff", {"interleave": "band", "compress": "none"}),
    "COG": _Format("_COG.TIF", "COG", {"compress": "deflate", "predictor": "yes", "overviews": "none"}),
    **{ext: _Format(f".{ext}", "ENVI", {"interleave": ext.lower()}) for ext in _ENVI_EXTENSIONS},
    "JP2": _Format(".JP2", "JP2OpenJPEG", {"quality": "100", "reversible": "yes"}),
}
#: No ``.aux.xml`` beside the files; ENVI's header must be found when the writer reopens its data file.
_WRITE_ENV = {"GDAL_PAM_ENABLED": "NO", "GDAL_DISABLE_READDIR_ON_OPEN": "FALSE"}


def encode_raster(
    stem: str,
    array: np.ndarray,
    *,
    crs: str,
    transform: Affine,
    nodata: float | None,
    fmt: str,
    descriptions: Sequence[str] = (),
) -> dict[str, bytes]:
    """The files (name -> bytes) of a (bands, rows, cols) raster in format ``fmt``, named ``stem`` + extension."""
    if fmt not in _FORMATS:
        raise ValueError(f"unknown raster format {fmt!r}: expected one of {', '.join(RASTER_FORMATS)}")
    spec = _FORMATS[fmt]
    bands, rows, cols = array.shape
    profile = {
        "driver": spec.driver, "width": cols, "height": rows, "count": bands, "dtype": array.dtype.name,
        "crs": crs, "transform": transform, "nodata": nodata, **spec.options,
    }  # fmt: skip
    name = stem + spec.suffix
    with rasterio.Env(**_WRITE_ENV), MemoryFile(filename=name) as memory:
        with memory.open(**profile) as dst:
            if descriptions:
                dst.descriptions = tuple(descriptions)
            dst.write(array)
        with memory.open() as src:
            paths = src.files
        folder = memory.name.removesuffix(name)
        files = {path.removeprefix(folder): bytes(virtual_file_to_buffer(path)) for path in paths}
    # GDAL writes the data file's /vsimem/ path into an ENVI header; keep only its name there.
    return {_dlr_name(key): data if key == name else data.replace(folder.encode(), b"") for key, data in files.items()}


def _dlr_name(name: str) -> str:
    """``name`` with an upper-case extension (GDAL's ENVI driver writes ``.hdr``, DLR ``.HDR``)."""
    base, _, ext = name.rpartition(".")
    return f"{base}.{ext.upper()}"
