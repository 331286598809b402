"""Scene queries: the area, time span, scene cloud cover and quality to look for."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import geopandas as gpd
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from spectral_corpus.catalog.errors import SourceError
from spectral_corpus.catalog.scenes import SceneRecord

DEFAULT_COLLECTION = "ENMAP_HSI_L2A"
BBox = tuple[float, float, float, float]
TimeLike = str | date | datetime
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class SceneQuery:
    """What to look for; every filter left as None is not applied.

    ``bbox`` is (west, south, east, north) and ``aoi`` a geometry, both in lon/lat; ``start`` and
    ``end`` are inclusive UTC times of acquisition; ``max_cloud`` (scene ``eo:cloud_cover`` in %) is
    inclusive, as is ``max_quality`` (``enmap:overallQuality``: 0 nominal, 1 reduced, 2 low; lower is
    better, so ``max_quality=0`` keeps nominal scenes only). ``updated_since`` keeps scenes whose catalog
    entry changed at or after that time (a STAC item's ``updated``): what an extension asks for.
    """

    collection: str = DEFAULT_COLLECTION
    bbox: BBox | None = None
    aoi: BaseGeometry | None = None
    start: datetime | None = None
    end: datetime | None = None
    max_cloud: float | None = None
    max_quality: float | None = None
    updated_since: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end", "updated_since"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise SourceError(f"SceneQuery.{name} must be timezone-aware, got {value.isoformat()}")
        if self.start and self.end and self.start > self.end:
            raise SourceError(f"start {self.start.isoformat()} is after end {self.end.isoformat()}")
        if self.bbox is not None:
            _check_bbox(self.bbox)

    @classmethod
    def from_options(
        cls,
        *,
        collection: str = DEFAULT_COLLECTION,
        bbox: Sequence[float] | str | None = None,
        aoi_path: Path | str | None = None,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
        max_cloud: float | None = None,
        max_quality: float | None = None,
    ) -> SceneQuery:
        """Build a query from loose user input.

        ``bbox`` may be ``"w,s,e,n"``; ``aoi_path`` is a vector file (GeoJSON, GeoPackage...) whose
        geometries are reprojected to EPSG:4326 and merged; ``start``/``end`` are ISO dates or times
        (naive means UTC), and a date-only ``end`` includes that whole day.
        """
        return cls(
            collection=collection,
            bbox=_parse_bbox(bbox) if bbox is not None else None,
            aoi=read_aoi(Path(aoi_path)) if aoi_path is not None else None,
            start=_to_utc(start, end_of_day=False) if start is not None else None,
            end=_to_utc(end, end_of_day=True) if end is not None else None,
            max_cloud=None if max_cloud is None else float(max_cloud),
            max_quality=None if max_quality is None else float(max_quality),
        )

    def matches(self, record: SceneRecord, *, unknown_passes: bool = False) -> bool:
        """True when ``record`` satisfies every filter that is set.

        A record whose value for a set filter is unknown fails that filter, unless
        ``unknown_passes`` (used to keep rejected records that cannot be placed).
        """
        verdicts = (
            self._place_passes(record),
            self._time_passes(record),
            _within(record.cloud_cover, self.max_cloud, operator.le),
            _within(record.quality, self.max_quality, operator.le),
            _within(record.updated, self.updated_since, operator.ge),
        )
        return False not in verdicts if unknown_passes else all(v is True for v in verdicts)

    def as_dict(self) -> dict[str, object]:
        """The query as JSON-compatible values, for the scene table's metadata."""
        return {
            "collection": self.collection,
            "bbox": list(self.bbox) if self.bbox else None,
            "aoi": mapping(self.aoi) if self.aoi is not None else None,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "max_cloud": self.max_cloud,
            "max_quality": self.max_quality,
            **({"updated_since": self.updated_since.isoformat()} if self.updated_since else {}),
        }

    def _place_passes(self, record: SceneRecord) -> bool | None:
        areas = [box(*self.bbox)] if self.bbox else []
        areas += [self.aoi] if self.aoi is not None else []
        if not areas:
            return True
        if record.footprint is None:
            return None
        return all(record.footprint.intersects(area) for area in areas)

    def _time_passes(self, record: SceneRecord) -> bool | None:
        if self.start is None and self.end is None:
            return True
        if record.acquired is None:
            return None
        return (self.start is None or self.start <= record.acquired) and (
            self.end is None or record.acquired <= self.end
        )


def _within(value: Any, bound: Any, passes: Callable[[Any, Any], bool]) -> bool | None:
    """``passes(value, bound)``; True when there is no bound, None when the value is unknown."""
    if bound is None:
        return True
    return None if value is None else passes(value, bound)


def read_aoi(path: Path) -> BaseGeometry:
    """The union of all geometries in a vector file, in lon/lat (EPSG:4326)."""
    try:
        frame = gpd.read_file(path)
    except Exception as error:  # pyogrio/fiona raise their own types for a missing or unreadable file
        raise SourceError(f"AOI file {str(path)!r} cannot be read: {error}") from None
    if frame.empty:
        raise SourceError(f"AOI file {str(path)!r} holds no geometries")
    if frame.crs is None:
        raise SourceError(f"AOI file {str(path)!r} has no CRS; save it with one (GeoJSON is EPSG:4326)")
    return frame.to_crs(4326).geometry.union_all()


def _parse_bbox(value: Sequence[float] | str) -> BBox:
    parts = value.split(",") if isinstance(value, str) else list(value)
    if len(parts) != 4:
        raise SourceError(f"bbox needs 4 numbers west,south,east,north; got {value!r}")
    west, south, east, north = (float(p) for p in parts)
    return (west, south, east, north)


def _check_bbox(bbox: BBox) -> None:
    west, south, east, north = bbox
    if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
        raise SourceError(f"bbox {bbox} is not west,south,east,north in degrees (west <= east, south <= north)")


def _to_utc(value: TimeLike, *, end_of_day: bool) -> datetime:
    """A UTC datetime; a date (or date-only string) means its first or, for an end, its last instant."""
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value) if _DATE_ONLY.match(value) else datetime.fromisoformat(value)
        except ValueError:
            raise SourceError(f"{value!r} is not an ISO 8601 date or time (2024-05-01 or 2024-05-01T10:00Z)") from None
    if not isinstance(value, datetime):
        day_start = datetime.combine(value, time(), tzinfo=UTC)
        return day_start + timedelta(days=1, microseconds=-1) if end_of_day else day_start
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
