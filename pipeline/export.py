"""Export a corpus in the published SpectralEarth layout: one GeoTIFF per patch (``pipeline.spectralearth_layout``).

``DEST/enmap/<location_id:07d>/<scene_id:05d>.tif``: int16, CRS, transform, nodata and band
descriptions, so code written for the published dataset runs unchanged, plus what a user needs to
know of each patch as GDAL metadata (acquisition time, product, location, split, where the patch lies
in its product, flag fractions, reflectance scale; per band the centre wavelength and FWHM) and an
index table ``DEST/index.parquet`` with one row per file. Exporting the same version with the same
options gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import rasterio

from spectral_corpus.catalog.bands import NODATA, REFLECTANCE_SCALE
from spectral_corpus.pipeline.errors import PipelineError, UsageError
from spectral_corpus.pipeline.progress import Progress
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.pipeline.spectralearth_layout import (
    COMPRESSIONS,
    IMAGERY,
    INDEX_FILE,
    INDEX_SCHEMA,
    band_description,
    band_tags,
    index_table,
    observation_tags,
    patch_path,
    patch_transform,
)
from spectral_corpus.stages.grid import PATCH_PX
from spectral_corpus.stages.splits import SPLITS


@dataclass(frozen=True)
class GeoTiffOptions:
    """How the files are written: ``compress`` none (as published), deflate or zstd (lossless, with
    horizontal differencing); ``tiled`` in ``tile_size`` x ``tile_size`` blocks, else in strips."""

    compress: str = "none"
    tiled: bool = False
    tile_size: int = PATCH_PX

    def __post_init__(self) -> None:
        if self.compress not in COMPRESSIONS:
            raise UsageError(f"compression {self.compress!r} is not one of {', '.join(COMPRESSIONS)}")
        if self.tiled and not (16 <= self.tile_size <= PATCH_PX and self.tile_size % 16 == 0):
            raise UsageError(f"tile size {self.tile_size}: GeoTIFF tiles are multiples of 16, at most {PATCH_PX}")

    def creation_options(self) -> dict[str, Any]:
        """GDAL GTiff creation options."""
        options: dict[str, Any] = {}
        if self.compress != "none":
            options.update(compress=self.compress, predictor=2)
        if self.tiled:
            options.update(tiled=True, blockxsize=self.tile_size, blockysize=self.tile_size)
        return options


def export_spectralearth(
    reader: CorpusReader,
    dest: Path,
    progress: Progress | None = None,
    split: str | None = None,
    options: GeoTiffOptions | None = None,
) -> int:
    """Write the version's observations (of one ``split``, or all) as GeoTIFFs and the index table beside
    them; return how many files were written."""
    if split is not None and split not in SPLITS:
        raise UsageError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    options = options or GeoTiffOptions()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"{dest} cannot be written: {error.strerror}") from None
    observations = reader.table("observations")
    if split is not None:
        observations = observations[observations["split"] == split]
    bands = reader.metadata.bands
    band_numbers, centres, fwhms = bands["band"], bands["center_nm"], bands["fwhm_nm"]
    descriptions = [band_description(b, c) for b, c in zip(band_numbers, centres, strict=True)]
    per_band = [band_tags(c, f) for c, f in zip(centres, fwhms, strict=True)]
    rows = []
    shards = observations.groupby("shard")
    tell = progress or (lambda stage, done, total: None)
    tell("export", 0, len(shards))
    for done, (_, shard) in enumerate(shards, start=1):
        first, last = int(shard["obs"].min()), int(shard["obs"].max())
        block = np.asarray(reader.patches[first : last + 1])  # one read per shard
        for row in shard.to_dict(orient="records"):
            path = patch_path(int(row["location_id"]), int(row["scene_id"]))
            transform = patch_transform(float(row["x"]), float(row["y"]))
            patch = block[int(row["obs"]) - first]
            tags = observation_tags(row)
            _write_patch(dest / path, patch, int(row["epsg"]), transform, tags, descriptions, per_band, options)
            rows.append({**row, "path": path, "transform": tuple(transform)[:6]})
        tell("export", done, len(shards))
    _write_index(dest, rows)
    return len(rows)


def _write_patch(
    path: Path,
    patch: np.ndarray,
    epsg: int,
    transform: rasterio.Affine,
    tags: dict[str, str],
    descriptions: list[str],
    per_band: list[tuple[dict[str, str], dict[str, str]]],
    options: GeoTiffOptions,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": PATCH_PX,
        "height": PATCH_PX,
        "count": patch.shape[0],
        "dtype": "int16",
        "crs": f"EPSG:{epsg}",
        "transform": transform,
        "nodata": NODATA,
        **options.creation_options(),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(patch)
        dst.update_tags(**tags)
        dst.scales = (REFLECTANCE_SCALE,) * patch.shape[0]
        dst.offsets = (0.0,) * patch.shape[0]
        for index, (text, (default, imagery)) in enumerate(zip(descriptions, per_band, strict=True), 1):
            dst.set_band_description(index, text)
            dst.update_tags(index, **default)
            dst.update_tags(index, ns=IMAGERY, **imagery)


def _write_index(dest: Path, rows: list[dict[str, Any]]) -> None:
    """``DEST/index.parquet``, in path order, written whole (a temporary file renamed over the old one)."""
    frame = pd.DataFrame(rows, columns=INDEX_SCHEMA.names)
    frame = frame.sort_values("path").reset_index(drop=True)
    partial = dest / f".{INDEX_FILE}.partial"
    pq.write_table(index_table(frame), partial)
    partial.replace(dest / INDEX_FILE)
