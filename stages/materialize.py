"""Materialize one shard: read only the windows it needs, drop bands, write the shard whole.

One task per shard, and no two tasks write the same shard. Memory is bounded by the shard
(``shard_size`` patches) plus the bounding window of its cells in one scene at a time.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import zarr
from rasterio.errors import RasterioError
from rasterio.windows import Window

from spectral_corpus.catalog.bands import NODATA
from spectral_corpus.catalog.hrefs import open_raster
from spectral_corpus.catalog.rejections import RejectedError, Rejection
from spectral_corpus.corpus_files import CorpusFiles
from spectral_corpus.corpus_format import BUILD, PATCH_ARRAY, shard_file_key
from spectral_corpus.stages.failpoints import failpoint
from spectral_corpus.stages.grid import PATCH_PX
from spectral_corpus.stages.inspect import gdal_reasons
from spectral_corpus.stages.stats import moments_key, moments_of
from spectral_corpus.stages.store import DigestingStore


class SceneReadError(RejectedError):
    """A scene's spectral image cannot be read where the shard needs it (``href``: which image)."""

    def __init__(self, href: str, code: Rejection, message: str) -> None:
        super().__init__(code, message)
        self.href = href


@dataclass(frozen=True)
class ShardResult:
    """What a materialize task wrote, and what it cost."""

    shard: int
    first_obs: int
    n_obs: int
    nbytes: int
    raw_bytes: int
    sha256: str
    read_seconds: float
    write_seconds: float
    peak_rss_mb: float


def materialize_shard(files: CorpusFiles, shard: int, rows: pd.DataFrame, bands: np.ndarray) -> ShardResult:
    """Cut the patches of one shard from their scenes and write the shard file, then its marker.

    ``rows`` holds the shard's observations with ``obs``, ``href`` (spectral image), ``row`` and
    ``col`` (the patch's upper-left pixel in the scene) and ``train`` (in the training split: their
    band moments are computed from the patches in memory and kept in the marker). ``bands`` are
    1-based band numbers.
    """
    rows = rows.sort_values("obs")
    first = int(rows["obs"].iloc[0])
    if not np.array_equal(rows["obs"].to_numpy(), np.arange(first, first + len(rows))):
        raise ValueError(f"shard {shard}: observations are not contiguous")
    if rows["href"].isna().any():
        raise ValueError(f"shard {shard}: observations {rows.loc[rows['href'].isna(), 'obs'].tolist()} have no image")
    started = time.perf_counter()
    patches = np.full((len(rows), len(bands), PATCH_PX, PATCH_PX), NODATA, dtype=np.int16)
    for href, group in rows.groupby("href", sort=True):
        _cut_patches(str(href), group, bands, patches, first)
    result = write_shard(files, shard, first, patches, read_seconds=time.perf_counter() - started)
    train = rows["train"].to_numpy(bool)
    moments = moments_of(patches[train], len(bands))
    summary = {
        "key": moments_key(rows.loc[train, "obs"].tolist()),
        **{k: v.tolist() for k, v in asdict(moments).items()},
    }
    files.write(shard_marker(shard), json.dumps({**asdict(result), "moments": summary}).encode())
    return result


def write_shard(files: CorpusFiles, shard: int, first: int, patches: np.ndarray, read_seconds: float) -> ShardResult:
    """Write the patches of shard ``shard`` (rows from ``first``) whole; what was written, and what it cost."""
    started = time.perf_counter()
    store = DigestingStore(files.zarr_store(writable=True))
    array = zarr.open_array(store, path=PATCH_ARRAY, mode="r+")
    array[first : first + len(patches)] = patches  # the sharding codec writes the shard whole, in one value
    nbytes, sha256 = store.written[shard_file_key(shard)]
    failpoint("shard-written")  # written, no marker yet: a retry writes the same bytes again
    return ShardResult(
        shard=shard,
        first_obs=first,
        n_obs=len(patches),
        nbytes=nbytes,
        raw_bytes=patches.nbytes,
        sha256=sha256,
        read_seconds=read_seconds,
        write_seconds=time.perf_counter() - started,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


#: The folder of the build's work state where finished shards leave their markers.
SHARD_MARKERS = "shards"


def shard_marker(shard: int) -> str:
    """The key of the marker a finished shard leaves in the build state."""
    return f"{BUILD}/{SHARD_MARKERS}/{shard:06d}.json"


def _cut_patches(href: str, group: pd.DataFrame, bands: np.ndarray, out: np.ndarray, first: int) -> None:
    """Read the bounding window of ``group``'s cells in one scene once, then slice each patch."""
    row0, col0 = int(group["row"].min()), int(group["col"].min())
    height = int(group["row"].max()) + PATCH_PX - row0
    width = int(group["col"].max()) + PATCH_PX - col0
    opened = False
    try:
        with open_raster(href) as image:
            opened = True
            block = image.read(indexes=[int(b) for b in bands], window=Window(col0, row0, width, height))
    except RasterioError as error:
        failure = (Rejection.CORRUPT_DATA, "data is corrupt") if opened else (Rejection.UNREADABLE, "cannot be opened")
        code, what = failure
        raise SceneReadError(href, code, f"{href}: {what} ({gdal_reasons(error)})") from error
    for obs, row, col in zip(group["obs"], group["row"], group["col"], strict=True):
        r, c = int(row) - row0, int(col) - col0
        out[int(obs) - first] = block[:, r : r + PATCH_PX, c : c + PATCH_PX]
