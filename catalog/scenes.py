"""Scene records and the scene table: what every catalog source produces."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

import geopandas as gpd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from spectral_corpus.catalog.bands import N_BANDS, REFLECTANCE_SCALE
from spectral_corpus.catalog.metadata import COVERS, ProductMetadata
from spectral_corpus.catalog.product import ProductName
from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.corpus_files import CorpusFiles
from spectral_corpus.corpus_format import FORMAT_VERSION, SCHEMAS, parquet_bytes, read_table, to_arrow

OK = "ok"
REJECTED = "rejected"
METADATA_XML = "METADATA.XML"
STAC_ITEM = "STAC item"


@dataclass(frozen=True)
class SceneRecord:
    """One EnMAP L2A product as found in a catalog, parsed once.

    ``status`` is ``ok`` or ``rejected``; a rejected record has a ``rejection`` code and says why in
    ``reason`` (the file and the problem). ``assets`` maps
    asset keys (see ``catalog.product.ASSET_SUFFIXES``) to hrefs that rasterio can open
    (local paths, ``/vsizip/`` paths or http(s) URLs). ``footprint`` is in lon/lat (EPSG:4326): the
    valid swath. Covers are percent of the scene; ``quality`` is ``overallQuality`` (0 nominal,
    1 reduced, 2 low). ``wavelengths_nm`` and ``fwhm_nm`` are this scene's own band characterisation.
    ``epsg``, ``width`` and ``height`` are what the catalog says of the image (``described_by``: the
    product's METADATA.XML or a STAC item); ``inspect`` checks them against the image itself.
    ``updated`` is when the catalog last changed the scene's entry (a STAC item's ``updated``; unknown
    for a product on disk): an extension asks a STAC API only for what changed since.
    """

    product: str
    source: str
    datatake: int | None = None
    tile: int | None = None
    version: str | None = None
    acquired: datetime | None = None
    processed: datetime | None = None
    updated: datetime | None = None
    epsg: int | None = None
    width: int | None = None
    height: int | None = None
    described_by: str = ""
    footprint: BaseGeometry | None = None
    cloud_cover: float | None = None
    cloud_shadow: float | None = None
    snow_cover: float | None = None
    haze_cover: float | None = None
    cirrus_cover: float | None = None
    water_cover: float | None = None
    quality: float | None = None
    wavelengths_nm: tuple[float, ...] = ()
    fwhm_nm: tuple[float, ...] = ()
    assets: tuple[tuple[str, str], ...] = ()
    status: str = OK
    rejection: Rejection | None = None
    reason: str = ""

    @classmethod
    def from_metadata(cls, meta: ProductMetadata, product: str, source: str, assets: dict[str, str]) -> SceneRecord:
        """The record of a product from its METADATA.XML, or a rejected one saying what is wrong."""
        problem = _metadata_problem(meta, product)
        if problem:
            code, reason = problem
            return cls.rejected(product, source, code, f"{source}: {reason}")
        return cls(
            product=product,
            source=source,
            datatake=meta.datatake,
            tile=meta.tile,
            version=meta.version,
            acquired=meta.acquired,
            processed=meta.processed,
            epsg=meta.epsg,
            width=meta.width,
            height=meta.height,
            described_by=METADATA_XML,
            footprint=Polygon(meta.corners),
            **{cover: getattr(meta, cover) for cover in COVERS},
            quality=None if meta.quality is None else float(meta.quality),
            wavelengths_nm=meta.bands.centres_nm,
            fwhm_nm=meta.bands.fwhm_nm,
            assets=tuple(sorted(assets.items())),
        )

    @classmethod
    def rejected(cls, product: str, source: str, code: Rejection, reason: str) -> SceneRecord:
        """A record for a product that cannot be used, with the parts its name gives."""
        record = cls(product=product, source=source, status=REJECTED, rejection=code, reason=reason)
        try:
            name = ProductName.parse(product)
        except ValueError:
            return record
        return replace(
            record,
            datatake=name.datatake,
            tile=name.tile,
            version=name.version,
            acquired=name.acquired,
            processed=name.processed,
        )

    @property
    def asset_map(self) -> dict[str, str]:
        """Assets as a dict."""
        return dict(self.assets)

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return (type(self).__name__, self.product, self.source, self.assets, self.status)


def _metadata_problem(meta: ProductMetadata, product: str) -> tuple[Rejection, str] | None:
    """Why a product's METADATA.XML makes it unusable here; None when it is fine."""
    name = ProductName.parse(product)
    if meta.name != product:
        return Rejection.BAD_METADATA, f"METADATA.XML names product {meta.name!r}, not {product!r}"
    if meta.level != "L2A":
        return Rejection.BAD_METADATA, f"METADATA.XML says processing level {meta.level!r}; only L2A products are read"
    if (meta.datatake, meta.tile, meta.version) != (name.datatake, name.tile, name.version):
        said = f"datatake {meta.datatake}, tile {meta.tile}, processor {meta.processor}"
        return Rejection.BAD_METADATA, f"METADATA.XML ({said}) disagrees with the product name"
    if meta.n_bands != N_BANDS or len(meta.bands) != N_BANDS:
        return Rejection.BAND_COUNT, (
            f"product has {meta.n_bands} bands ({len(meta.bands)} characterised in METADATA.XML); "
            f"operational EnMAP L2A products have {N_BANDS}"
        )
    scales = set(zip(meta.bands.gains, meta.bands.offsets, strict=True))
    if scales != {(REFLECTANCE_SCALE, 0.0)}:
        reason = f"band gains/offsets {sorted(scales)[:3]} differ from reflectance = DN x {REFLECTANCE_SCALE:g} + 0"
        return Rejection.BAD_METADATA, reason
    return None


def keep_newest(records: Iterable[SceneRecord]) -> list[SceneRecord]:
    """Reject all but the newest processor version of each (datatake, tile)."""
    records = list(records)
    newest: dict[tuple[int, int], SceneRecord] = {}
    for record in records:
        if record.status != OK or record.datatake is None or record.tile is None:
            continue
        key = (record.datatake, record.tile)
        if key not in newest or _version_key(record) > _version_key(newest[key]):
            newest[key] = record
    return [_superseded(r, newest) for r in records]


def _version_key(record: SceneRecord) -> tuple[str, datetime]:
    assert record.version is not None and record.processed is not None
    return (record.version, record.processed)


def _superseded(record: SceneRecord, newest: dict[tuple[int, int], SceneRecord]) -> SceneRecord:
    if record.status != OK or record.datatake is None or record.tile is None:
        return record
    winner = newest[(record.datatake, record.tile)]
    if winner is record:
        return record
    if winner.product == record.product:
        reason = f"another copy of this product is used: {winner.source}"
        return replace(record, status=REJECTED, rejection=Rejection.DUPLICATE, reason=reason)
    reason = f"superseded by newer processor version {winner.product}"
    return replace(record, status=REJECTED, rejection=Rejection.SUPERSEDED, reason=reason)


_COLUMNS = [
    "product",
    "datatake",
    "tile",
    "version",
    "acquired",
    "processed",
    "updated",
    "epsg",
    "width",
    "height",
    "described_by",
    *COVERS,
    "quality",
    "wavelengths_nm",
    "fwhm_nm",
    "assets",
    "source",
    "status",
    "rejection",
    "reason",
]


_LISTS = ("wavelengths_nm", "fwhm_nm")
#: The Parquet file metadata key under which a scene table keeps the query that produced it.
_QUERY_KEY = b"spectral_corpus:query"


def scene_table(records: Iterable[SceneRecord], query: dict[str, object] | None = None) -> gpd.GeoDataFrame:
    """The scene table: one row per record sorted by product, footprints in EPSG:4326.

    ``assets`` holds sorted (key, href) pairs (a map column on disk); the query that produced the table is kept in
    the frame's ``attrs["query"]`` and written into the GeoParquet file's metadata.
    """
    rows = sorted(records, key=lambda r: r.product)
    frame = pd.DataFrame(
        {
            **{c: [getattr(r, c) for r in rows] for c in _COLUMNS if c not in _LISTS},
            **{c: [list(getattr(r, c)) for r in rows] for c in _LISTS},
        },
        columns=_COLUMNS,
    )
    for column in ("datatake", "tile", "epsg", "width", "height"):
        frame[column] = frame[column].astype("Int64")
    for column in ("acquired", "processed", "updated"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    table = gpd.GeoDataFrame(frame, geometry=[r.footprint for r in rows], crs="EPSG:4326")
    table.attrs["query"] = dict(query or {})
    return table


def records_from_table(table: pd.DataFrame) -> list[SceneRecord]:
    """Scene records back from a scene table (the inverse of ``scene_table``)."""
    records = []
    for row in table.itertuples(index=False):
        values = row._asdict()
        records.append(
            SceneRecord(
                product=values["product"],
                source=values["source"],
                datatake=_optional_int(values["datatake"]),
                tile=_optional_int(values["tile"]),
                version=values["version"] if isinstance(values["version"], str) else None,
                acquired=_optional_time(values["acquired"]),
                processed=_optional_time(values["processed"]),
                updated=_optional_time(values.get("updated")),
                epsg=_optional_int(values["epsg"]),
                width=_optional_int(values.get("width")),
                height=_optional_int(values.get("height")),
                described_by=values.get("described_by") or "",
                footprint=values.get("geometry"),
                cloud_cover=_optional_float(values.get("cloud_cover")),
                cloud_shadow=_optional_float(values.get("cloud_shadow")),
                snow_cover=_optional_float(values.get("snow_cover")),
                haze_cover=_optional_float(values.get("haze_cover")),
                cirrus_cover=_optional_float(values.get("cirrus_cover")),
                water_cover=_optional_float(values.get("water_cover")),
                quality=_optional_float(values["quality"]),
                wavelengths_nm=_floats(values.get("wavelengths_nm")),
                fwhm_nm=_floats(values.get("fwhm_nm")),
                assets=tuple(values["assets"]),
                status=values["status"],
                rejection=Rejection(values["rejection"]) if isinstance(values["rejection"], str) else None,
                reason=values["reason"],
            )
        )
    return records


def scene_table_bytes(table: gpd.GeoDataFrame) -> bytes:
    """A scene table as GeoParquet (the corpus format's scene columns), with its query."""
    schema = pa.schema([field for field in SCHEMAS["scenes"] if field.name in table.columns])
    query = json.dumps(table.attrs.get("query", {}), sort_keys=True, default=str).encode()
    return parquet_bytes(to_arrow(table, schema, {_QUERY_KEY: query}))


def read_scene_table(files: CorpusFiles, key: str) -> gpd.GeoDataFrame:
    """Read a scene table written as ``scene_table_bytes``."""
    table: gpd.GeoDataFrame = read_table(files, key, "scenes", FORMAT_VERSION)
    meta = pq.read_schema(pa.BufferReader(files.read(key))).metadata or {}
    table.attrs["query"] = json.loads(meta.get(_QUERY_KEY, b"{}"))
    return table


def _optional_int(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)  # type: ignore[call-overload]


def _optional_float(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)  # type: ignore[arg-type]


def _floats(values: object) -> tuple[float, ...]:
    return () if values is None else tuple(float(v) for v in values)  # type: ignore[attr-defined]


def _optional_time(value: object) -> datetime | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).to_pydatetime()
