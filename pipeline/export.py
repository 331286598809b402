"""Export a corpus in the published SpectralEarth layout: one GeoTIFF per patch.

``DEST/enmap/<location_id:07d>/<scene_id:05d>.tif``: int16, CRS, transform, nodata and band
descriptions, so code written for the published dataset runs unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from spectral_corpus.catalog.bands import NODATA
from spectral_corpus.pipeline.errors import PipelineError
from spectral_corpus.pipeline.progress import Progress
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.grid import PATCH_PX, cell_transform


def export_spectralearth(reader: CorpusReader, dest: Path, progress: Progress | None = None) -> int:
    """Write every observation of the version as a GeoTIFF; return how many were written."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"{dest} cannot be written: {error.strerror}") from None
    observations = reader.table("observations")
    bands = reader.metadata.bands
    descriptions = [f"band {b} ({c:.1f} nm)" for b, c in zip(bands["band"], bands["center_nm"], strict=True)]
    written = 0
    shards = observations.groupby("shard")
    tell = progress or (lambda stage, done, total: None)
    tell("export", 0, len(shards))
    for done, (_, shard) in enumerate(shards, start=1):
        first, last = int(shard["obs"].min()), int(shard["obs"].max())
        block = np.asarray(reader.patches[first : last + 1])  # one read per shard
        for row in shard.itertuples(index=False):
            path = dest / "enmap" / f"{row.location_id:07d}" / f"{row.scene_id:05d}.tif"
            _write_patch(path, block[row.obs - first], int(row.epsg), int(row.ix), int(row.iy), descriptions)
            written += 1
        tell("export", done, len(shards))
    return written


def _write_patch(path: Path, patch: np.ndarray, epsg: int, ix: int, iy: int, descriptions: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": PATCH_PX,
        "height": PATCH_PX,
        "count": patch.shape[0],
        "dtype": "int16",
        "crs": f"EPSG:{epsg}",
        "transform": cell_transform(ix, iy),
        "nodata": NODATA,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(patch)
        for index, text in enumerate(descriptions, 1):
            dst.set_band_description(index, text)
