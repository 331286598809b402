"""The on-disk corpus format, defined once: layout, documents, table schemas and the version rule.

```
CORPUS/
  patches.zarr/          Zarr v3 group: patches (obs, band, y, x) int16, sharded along obs, one inner
                         chunk per patch; band coordinates wavelength, fwhm, band; obs coordinates
                         (``OBS_COORDINATES``)
  versions/vNNNN/        immutable tables of version N (Parquet; scenes and locations GeoParquet 1.0)
                         and manifest.json
  CURRENT                {"version": N}: the published version (replaced atomically; in a bucket by a
                         conditional PUT, so that of two writers only one publishes)
  corpus.json            format, rules, bands and first source of the corpus
  _build/                work state of a running build (resumable); removed on commit
  .writer.lock           who writes the corpus now (``pipeline.lock``)
```

The writers (``stages.store``, ``stages.commit``) and every reader (``pipeline.reader``,
``training.dataset``, ``training.shards``) take keys, documents and schemas from here. Keys are
relative to the corpus root, which is a local folder or an object-store prefix (``corpus_files``).
The module needs neither torch nor dask.

Format history: 1 stored a scene's assets as JSON text and its rejection as free text only; 2 stores
assets as a map column, adds the scenes' ``rejection`` code and declares every table's column types;
3 adds the scenes' ``updated`` (when the catalog last changed the scene). Readers read versions 1 to 3
(version 1's assets are decoded on read, its rejections are ``unrecorded``; before 3, ``updated`` is
unknown).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.corpus_files import CorpusFiles
from spectral_corpus.errors import SpectralCorpusError

FORMAT_NAME = "spectral-corpus"
FORMAT_VERSION = 3
#: The oldest format version this software reads.
OLDEST_READABLE = 1

#: Patch edge in pixels and pixel size in metres: the grid of every corpus.
PATCH_PX = 128
PIXEL_M = 30
#: Per-pixel flags counted by ``inspect``, in the order used to name a dropped observation's reason.
FLAGS = ("nodata", "cloud", "cloudshadow", "snow", "haze", "cirrus", "water")

ZARR = "patches.zarr"
PATCHES = "patches"
#: The per-observation coordinate arrays beside ``patches`` (dimension ``obs``, -1 on rows the newest version
#: does not list), for xarray users. The patch centre is ``centre_x``, ``centre_y`` (metres in the patch's UTM
#: zone, EPSG code in ``epsg``): ``x`` and ``y`` name the pixel dimensions. Stores written before held the
#: centre as ``x``, ``y``; those arrays are removed when the coordinates are next written.
OBS_COORDINATES = ("time", "location_id", "scene_id", "epsg", "centre_x", "centre_y")
VERSIONS = "versions"
CURRENT = "CURRENT"
METADATA = "corpus.json"
BUILD = "_build"
MANIFEST = "manifest.json"
#: The writer lock (``pipeline.lock``): a locked file on disk, a lease object in a bucket.
WRITER_LOCK = ".writer.lock"


class FormatError(SpectralCorpusError, ValueError):
    """A path is not a readable corpus of this format, or a version of it does not exist."""


def shard_key(shard: int) -> str:
    """The file of shard ``shard`` inside the patch array (Zarr v3 default chunk key encoding)."""
    return f"c/{shard}/0/0/0"


#: The patch array inside the corpus.
PATCH_ARRAY = f"{ZARR}/{PATCHES}"


def version_key(version: int) -> str:
    return f"{VERSIONS}/v{version:04d}"


def manifest_key(version: int) -> str:
    return f"{version_key(version)}/{MANIFEST}"


def table_key(version: int, name: str) -> str:
    return f"{version_key(version)}/{name}.parquet"


def shard_file_key(shard: int) -> str:
    return f"{PATCH_ARRAY}/{shard_key(shard)}"


@dataclass(frozen=True)
class CorpusLayout:
    """Where each part of a corpus on local disk lives, from its root (the keys above, as paths)."""

    root: Path

    @property
    def zarr(self) -> Path:
        return self.root / ZARR

    @property
    def patch_array(self) -> Path:
        return self.root / PATCH_ARRAY

    @property
    def versions(self) -> Path:
        return self.root / VERSIONS

    @property
    def current(self) -> Path:
        return self.root / CURRENT

    @property
    def metadata(self) -> Path:
        return self.root / METADATA

    @property
    def build(self) -> Path:
        return self.root / BUILD

    def version_dir(self, version: int) -> Path:
        return self.root / version_key(version)

    def manifest(self, version: int) -> Path:
        return self.root / manifest_key(version)

    def table(self, version: int, name: str) -> Path:
        return self.root / table_key(version, name)

    def shard_file(self, shard: int) -> Path:
        return self.root / shard_file_key(shard)


# --- documents -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BandStatistics:
    """Per-band mean and standard deviation (DN) of the training split, pooled over its patches."""

    split: str
    units: str
    count: list[int]
    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class Manifest:
    """``versions/vNNNN/manifest.json``: what one published version holds and what made it."""

    format: str
    format_version: int
    version: int
    parent: int | None
    created: str
    n_obs: int
    n_locations: int
    n_retired: int
    n_shards: int
    #: Table name -> SHA-256 of its Parquet file.
    tables: dict[str, str]
    stats: BandStatistics
    #: What made the version: source and query, or the command (``resplit``); software version.
    run: dict[str, Any]
    rules: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any], source: str) -> Manifest:
        check_format(document, source)
        values: dict[str, Any] = {f.name: document.get(f.name) for f in fields(cls)}
        values["n_retired"] = values["n_retired"] or 0  # absent from the earliest format-1 manifests
        values["rules"] = values["rules"] or {}  # likewise: the rules are then corpus.json's
        values["stats"] = BandStatistics(**document["stats"])
        return cls(**values)


@dataclass(frozen=True)
class CorpusMetadata:
    """``corpus.json``: the corpus as a whole (rules and bands of the current version, first source)."""

    format: str
    format_version: int
    software_version: str
    source: str
    query: dict[str, Any]
    rules: dict[str, Any]
    #: Column -> values, one per band: ``band`` (1-based), ``center_nm``, ``fwhm_nm``, ``kept_202``.
    bands: dict[str, list[Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any], source: str) -> CorpusMetadata:
        check_format(document, source)
        return cls(
            format=document["format"],
            format_version=int(document["format_version"]),
            software_version=document.get("software_version", ""),
            source=document.get("source", ""),
            query=document.get("query", {}),
            rules=document["rules"],
            bands=document["bands"],
        )


def check_format(document: dict[str, Any], source: str) -> None:
    """Raise FormatError naming ``source`` unless the document is of a format version this software reads."""
    if document.get("format") != FORMAT_NAME:
        raise FormatError(f"{source} is not a {FORMAT_NAME} corpus (format {document.get('format')!r})")
    found = int(document.get("format_version", 0))
    if found > FORMAT_VERSION:
        raise FormatError(
            f"{source} was written in format version {found}; this software reads versions "
            f"{OLDEST_READABLE} to {FORMAT_VERSION}: upgrade spectral-corpus"
        )
    if found < OLDEST_READABLE:
        raise FormatError(
            f"{source} was written in format version {found}, which this software no longer reads "
            f"(oldest readable: {OLDEST_READABLE}); rebuild the corpus"
        )


def read_document(files: CorpusFiles, key: str, missing: str | None = None) -> dict[str, Any]:
    """A JSON document of the corpus; FormatError when it is not JSON or missing (then ``missing`` says why)."""
    try:
        document: dict[str, Any] = json.loads(files.read(key))
    except (FileNotFoundError, NotADirectoryError):  # the latter: a root that is a file
        raise FormatError(missing or f"{files.root}/{key} is missing") from None
    except json.JSONDecodeError as error:
        raise FormatError(f"{files.root}/{key} is not valid JSON: {error}") from None
    return document


def read_metadata(files: CorpusFiles) -> CorpusMetadata:
    """``corpus.json``; FormatError when the root is not a corpus this software reads."""
    document = read_document(files, METADATA, f"{files.root} is not a corpus: {METADATA} is missing")
    return CorpusMetadata.from_json(document, files.root)


def read_manifest(files: CorpusFiles, version: int) -> Manifest:
    """The manifest of a published version; FormatError when there is no such version."""
    document = read_document(files, manifest_key(version), f"{files.root}: version {version} does not exist")
    return Manifest.from_json(document, f"{files.root} version {version}")


def current_version(files: CorpusFiles) -> int:
    """The published version number."""
    return int(read_document(files, CURRENT, f"{files.root}: no published version (CURRENT is missing)")["version"])


# --- tables ----------------------------------------------------------------------------------

_UTC = pa.timestamp("us", tz="UTC")
#: The cover figures a scene's METADATA.XML or STAC item gives (per cent), in table order.
COVERS = ("cloud_cover", "cloud_shadow", "snow_cover", "haze_cover", "cirrus_cover", "water_cover")
_CELL = [pa.field("epsg", pa.int64()), pa.field("ix", pa.int64()), pa.field("iy", pa.int64())]
_GEOMETRY = pa.field("geometry", pa.binary())

#: Every table of a version, its columns in order. ``geometry`` holds WKB in EPSG:4326 (lon, lat).
SCHEMAS: dict[str, pa.Schema] = {
    "scenes": pa.schema(
        [
            ("scene_id", pa.int64()),
            ("product", pa.string()),
            ("datatake", pa.int64()),
            ("tile", pa.int64()),
            ("version", pa.string()),
            ("acquired", _UTC),
            ("processed", _UTC),
            ("updated", _UTC),
            ("epsg", pa.int64()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("described_by", pa.string()),
            *[(c, pa.float64()) for c in (*COVERS, "quality")],
            ("wavelengths_nm", pa.list_(pa.float64())),
            ("fwhm_nm", pa.list_(pa.float64())),
            ("assets", pa.map_(pa.string(), pa.string())),
            ("source", pa.string()),
            ("status", pa.string()),
            ("rejection", pa.string()),
            ("reason", pa.string()),
            _GEOMETRY,
            ("n_candidates", pa.int64()),
            ("n_observations", pa.int64()),
        ]
    ),
    "locations": pa.schema(
        [
            *_CELL,
            ("location_id", pa.int64()),
            ("split", pa.string()),
            ("x", pa.float64()),
            ("y", pa.float64()),
            _GEOMETRY,
            ("n_obs", pa.int64()),
        ]
    ),
    "observations": pa.schema(
        [
            *[(c, pa.int64()) for c in ("obs", "shard", "slot", "location_id")],
            ("split", pa.string()),
            ("scene_id", pa.int64()),
            ("product", pa.string()),
            ("acquired", _UTC),
            *_CELL,
            ("row", pa.int64()),
            ("col", pa.int64()),
            ("x", pa.float64()),
            ("y", pa.float64()),
            *[(f"frac_{flag}", pa.float32()) for flag in FLAGS],
        ]
    ),
    "candidates": pa.schema(
        [
            ("product", pa.string()),
            *_CELL,
            ("row", pa.int64()),
            ("col", pa.int64()),
            ("n_flagged", pa.int64()),
            *[(f"n_{flag}", pa.int64()) for flag in FLAGS],
            ("datatake", pa.int64()),
            ("tile", pa.int64()),
            ("acquired", _UTC),
            ("drop_reason", pa.string()),
        ]
    ),
    "shards": pa.schema(
        [
            *[(c, pa.int64()) for c in ("shard", "first_obs", "n_obs", "nbytes", "raw_bytes")],
            ("sha256", pa.string()),
            *[(c, pa.float64()) for c in ("read_seconds", "write_seconds", "peak_rss_mb")],
        ]
    ),
    "moments": pa.schema(
        [
            ("shard", pa.int64()),
            ("key", pa.string()),
            ("count", pa.list_(pa.int64())),
            ("mean", pa.list_(pa.float64())),
            ("m2", pa.list_(pa.float64())),
        ]
    ),
    "retired": pa.schema(
        [("obs", pa.int64()), ("product", pa.string()), *_CELL, ("retired_in", pa.int64()), ("reason", pa.string())]
    ),
}
TABLES = tuple(SCHEMAS)
#: Tables with a ``geometry`` column, written as GeoParquet 1.0.0.
GEO_TABLES = ("scenes", "locations")
GEOPARQUET_VERSION = "1.0.0"


def to_arrow(frame: Any, schema: pa.Schema, metadata: dict[bytes, bytes] | None = None) -> pa.Table:
    """A (Geo)DataFrame as an Arrow table of ``schema``: columns in order, types cast, GeoParquet
    metadata added when the schema has a geometry column (shapely geometries become WKB)."""
    import shapely

    columns = {}
    for field in schema:
        values = frame[field.name]
        if field.name == "geometry" and field.type == pa.binary():
            columns[field.name] = wkb_array(values.to_numpy())
            continue
        if field.name == "geometry":
            values = shapely.to_wkb(values.to_numpy())
        elif pa.types.is_map(field.type):
            values = [list(v) if v is not None else None for v in values]
        elif pa.types.is_list(field.type):
            values = [None if v is None else list(v) for v in values]
        columns[field.name] = pa.array(values, type=field.type, from_pandas=True)
    extra = dict(metadata or {})
    crs = getattr(frame, "crs", None)
    if "geometry" in schema.names and crs is not None and crs.to_epsg() != 4326:
        raise FormatError(f"geometries must be in EPSG:4326 (lon, lat), not {crs}")
    if "geometry" in schema.names:
        extra[b"geo"] = json.dumps(_geo_metadata(frame["geometry"])).encode()
    return pa.table(columns, schema=schema.with_metadata(extra))


#: Geometries encoded at a time by ``wkb_array``.
WKB_BATCH = 16384


def wkb_array(geometries: Any) -> pa.Array:
    """``pa.array(shapely.to_wkb(geometries), pa.binary(), from_pandas=True)`` (missing geometries null), made
    without a Python bytes object for every geometry at once: each batch is encoded into one buffer sized
    beforehand. (A polygon's bytes object costs about as much as its WKB again; that is hundreds of MB
    beside the array at SpectralEarth size.) Geometries other than polygons are encoded in one go."""
    import shapely

    missing = shapely.is_missing(geometries)
    sizes = _polygon_wkb_sizes(geometries, missing)
    if sizes is None or sizes.sum() > np.iinfo(np.int32).max:
        return pa.array(shapely.to_wkb(geometries), type=pa.binary(), from_pandas=True)
    offsets = np.zeros(len(geometries) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    for start in range(0, len(geometries), WKB_BATCH):
        stop = min(start + WKB_BATCH, len(geometries))
        encoded = [wkb for wkb in shapely.to_wkb(geometries[start:stop]) if wkb is not None]
        if [len(wkb) for wkb in encoded] != sizes[start:stop][~missing[start:stop]].tolist():  # not as foreseen
            return pa.array(shapely.to_wkb(geometries), type=pa.binary(), from_pandas=True)
        data[offsets[start] : offsets[stop]] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    validity = pa.py_buffer(np.packbits(~missing, bitorder="little")) if missing.any() else None
    buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(data)]
    return pa.Array.from_buffers(pa.binary(), len(geometries), buffers, null_count=int(missing.sum()))


def _polygon_wkb_sizes(geometries: Any, missing: np.ndarray) -> np.ndarray | None:
    """The size of each geometry's WKB (0 when missing), when all are polygons; else None.

    A polygon is a 9-byte header, then for each ring its number of points (4 bytes) and their coordinates.
    """
    import shapely

    present = geometries[~missing]
    if not (shapely.get_type_id(present) == shapely.GeometryType.POLYGON).all():
        return None
    has_m = shapely.has_m(present) if hasattr(shapely, "has_m") else np.zeros(len(present), bool)  # shapely 2.1
    dimensions = 2 + shapely.has_z(present).astype(np.int64) + has_m.astype(np.int64)
    rings = np.where(shapely.is_empty(present), 0, 1 + shapely.get_num_interior_rings(present))
    sizes = np.zeros(len(geometries), dtype=np.int64)
    sizes[~missing] = 9 + 4 * rings + 8 * dimensions * shapely.get_num_coordinates(present)
    return sizes


def _geo_metadata(geometries: Any) -> dict[str, Any]:
    """GeoParquet 1.0.0 file metadata of a WKB column in EPSG:4326, with its bounding box."""
    import shapely
    from pyproj import CRS

    values = geometries.to_numpy()
    present = values[~shapely.is_missing(values)]
    bbox = shapely.total_bounds(present).tolist() if len(present) else []
    column = {
        "encoding": "WKB",
        "geometry_types": sorted({geometry.geom_type for geometry in present}),
        "crs": CRS.from_epsg(4326).to_json_dict(),
        **({"bbox": bbox} if bbox else {}),
    }
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}


def table_bytes(frame: Any, name: str) -> bytes:
    """Table ``name`` of a version as a Parquet file with its declared schema."""
    return parquet_bytes(to_arrow(frame, SCHEMAS[name]))


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as a Parquet file. Written into a BytesIO, whose value is its own buffer (not a copy of it)."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def json_bytes(document: object) -> bytes:
    """A JSON document of the corpus as it is written (sorted keys: the same document, the same bytes)."""
    return json.dumps(document, indent=2, sort_keys=True, default=str).encode()


def read_table(files: CorpusFiles, key: str, name: str, format_version: int, columns: list[str] | None = None) -> Any:
    """Table ``name`` of a version written in ``format_version``, as the current format gives it.

    Geo tables come back as GeoDataFrames (EPSG:4326); scene assets as tuples of (key, href) pairs.
    """
    source = pa.BufferReader(files.read(key))
    if name in GEO_TABLES and (columns is None or "geometry" in columns):
        import geopandas as gpd

        frame = gpd.read_parquet(source, columns=columns)
    else:
        frame = pq.read_table(source, columns=columns).to_pandas()
    if "assets" in frame.columns:
        frame["assets"] = [_assets(value, format_version) for value in frame["assets"]]
    if name == "scenes" and format_version < 3 and (columns is None or "updated" in columns):
        frame.insert(
            _after(frame, "processed"), "updated", pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
        )
    if name == "scenes" and format_version == 1 and "status" in frame.columns:
        frame["rejection"] = [None if status == "ok" else str(Rejection.UNRECORDED) for status in frame["status"]]
    return frame


def _after(frame: Any, column: str) -> int:
    """Where a column goes to stand right after ``column`` (at the end when that one was not read)."""
    return int(frame.columns.get_loc(column)) + 1 if column in frame.columns else len(frame.columns)


def _assets(value: Any, format_version: int) -> tuple[tuple[str, str], ...]:
    """A scene's assets as sorted (key, href) pairs: JSON text in format 1, a map column since 2."""
    pairs = json.loads(value).items() if format_version == 1 else value
    return tuple(sorted((str(k), str(v)) for k, v in pairs))
