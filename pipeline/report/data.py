"""What the report shows: pure functions of a corpus version's tables, and :func:`report_data`, every
number of the page as JSON-ready values."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import numpy as np
import pandas as pd
import shapely

from spectral_corpus.catalog.bands import REFLECTANCE_SCALE, band_table
from spectral_corpus.catalog.errors import ProductError
from spectral_corpus.catalog.product import ProductName
from spectral_corpus.pipeline.info import corpus_summary
from spectral_corpus.pipeline.reader import CorpusReader, list_versions

#: Band centres nearest these wavelengths (nm) make the RGB quicklooks.
RGB_NM = (640.0, 550.0, 460.0)
#: How many quicklooks: the longest stack's dates, then one patch of other locations.
STACK_QUICKLOOKS = 6
OTHER_QUICKLOOKS = 8
#: The location points are embedded in the page's data up to this many locations (the map draws all).
MAX_EMBEDDED_POINTS = 20_000

KEPT = "kept"


def stack_length_histogram(locations: pd.DataFrame) -> dict[int, int]:
    """Locations per stack length (``n_obs``; 0 for a location whose observations were all retired)."""
    counts = locations["n_obs"].astype(int).value_counts()
    return {int(n): int(counts[n]) for n in sorted(counts.index)}


def observations_per_month(observations: pd.DataFrame) -> dict[str, int]:
    """Observations per acquisition month (``YYYY-MM``, UTC), every month from the first to the last.

    Observations of unknown date (an import whose files did not say) are not counted here.
    """
    months = pd.to_datetime(observations["acquired"], utc=True).dropna().dt.tz_localize(None).dt.to_period("M")
    if months.empty:
        return {}
    counts = months.value_counts()
    span = pd.period_range(months.min(), months.max(), freq="M")
    return {str(month): int(counts.get(month, 0)) for month in span}


def scenes_per_month(scenes: pd.DataFrame) -> dict[str, int]:
    """Used scenes (those with observations) per acquisition month."""
    used = scenes[scenes["n_observations"].fillna(0) > 0]
    months = pd.to_datetime(used["acquired"], utc=True).dt.tz_localize(None).dt.to_period("M")
    return {str(month): int(count) for month, count in months.value_counts().sort_index().items()}


def dropped_by_scene(candidates: pd.DataFrame, reasons: Sequence[str]) -> list[dict[str, Any]]:
    """For each scene with candidates: kept and dropped counts per reason, most dropped first."""
    reason = candidates["drop_reason"].fillna("").replace("", KEPT)
    table = pd.crosstab(candidates["product"], reason)
    rows: list[dict[str, Any]] = [
        {
            "product": str(product),
            "kept": int(counts.get(KEPT, 0)),
            "dropped": {r: int(counts.get(r, 0)) for r in reasons},
        }
        for product, counts in table.iterrows()
    ]
    rows.sort(key=lambda row: (-sum(row["dropped"].values()), row["product"]))
    return rows


def water_vapour_windows() -> list[tuple[float, float]]:
    """The wavelength ranges (nm) of the bands SpectralEarth's 202-band selection leaves out.

    Each window runs between the midpoints to the kept neighbours of its first and last dropped band.
    """
    table = band_table()
    centre, kept = table["center_nm"].to_numpy(float), table["kept_202"].to_numpy(bool)
    windows, i = [], 0
    while i < len(table):
        if kept[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(table) and not kept[j + 1]:
            j += 1
        lo = (centre[i] + centre[i - 1]) / 2 if i > 0 else centre[i]
        hi = (centre[j] + centre[j + 1]) / 2 if j + 1 < len(table) else centre[j]
        windows.append((round(float(lo), 2), round(float(hi), 2)))
        i = j + 1
    return windows


def band_profile(reader: CorpusReader) -> dict[str, Any]:
    """Each band's mean and standard deviation of reflectance (the manifest's statistics x 1e-4)."""
    bands, stats = reader.metadata.bands, reader.manifest.stats
    return {
        "split": stats.split,
        "band": [int(b) for b in bands["band"]],
        "wavelength_nm": [float(w) for w in bands["center_nm"]],
        "mean_reflectance": [_reflectance(m) for m in stats.mean],
        "std_reflectance": [_reflectance(s) for s in stats.std],
        "pixels": int(max(stats.count, default=0)),
    }


def _reflectance(dn: float | None) -> float | None:
    """A DN statistic as reflectance; None (JSON null) where it is unknown (a band with no valid pixel)."""
    return round(float(dn) * REFLECTANCE_SCALE, 6) if dn is not None and np.isfinite(dn) else None


def rgb_bands(wavelengths_nm: Sequence[float]) -> list[int]:
    """Indices (0-based, into the corpus's bands) of the bands nearest ``RGB_NM``."""
    centres = np.asarray(wavelengths_nm, float)
    return [int(np.abs(centres - target).argmin()) for target in RGB_NM]


def quicklook_samples(observations: pd.DataFrame) -> tuple[list[int], list[int]]:
    """Observations to show: the longest stack (oldest first), then the newest patch of other locations.

    Other locations are taken evenly spaced over the location ids, so a large corpus shows its spread.
    """
    if observations.empty:
        return [], []
    ordered = observations.sort_values(["location_id", "acquired", "obs"])
    sizes = ordered.groupby("location_id").size()
    longest = int(sizes.sort_values(ascending=False, kind="stable").index[0])
    stack = ordered[ordered["location_id"] == longest]["obs"].head(STACK_QUICKLOOKS)
    others = ordered[ordered["location_id"] != longest].groupby("location_id").tail(1)
    picks = np.unique(np.linspace(0, len(others) - 1, min(OTHER_QUICKLOOKS, len(others))).round().astype(int))
    return [int(o) for o in stack], [int(o) for o in others["obs"].iloc[picks]] if len(others) else []


def location_points(locations: pd.DataFrame) -> pd.DataFrame:
    """``location_id``, ``lon``, ``lat`` (the cell's centroid in EPSG:4326) and ``n_obs`` of each location."""
    centroids = shapely.centroid(np.asarray(locations.geometry, dtype=object))
    return pd.DataFrame(
        {
            "location_id": locations["location_id"].astype(int).to_numpy(),
            "lon": shapely.get_x(centroids),
            "lat": shapely.get_y(centroids),
            "n_obs": locations["n_obs"].astype(int).to_numpy(),
        }
    )


def report_data(reader: CorpusReader) -> dict[str, Any]:
    """Every number the page shows, JSON-ready (what ``report-data`` holds)."""
    summary = corpus_summary(reader)
    locations = reader.table("locations")
    observations = reader.table("observations")
    points = location_points(locations)
    profile = band_profile(reader)
    stack, others = quicklook_samples(observations)
    by_obs = observations.set_index("obs")
    return {
        "corpus": reader.files.root,
        "version": reader.version,
        "created": reader.manifest.created,
        "software": _software_version(),
        "summary": summary,
        "stack_length_histogram": stack_length_histogram(locations),
        "observations_per_month": observations_per_month(observations),
        "observations_without_date": int(observations["acquired"].isna().sum()),
        "scenes_per_month": scenes_per_month(reader.table("scenes")),
        "dropped_by_reason": summary["dropped"],
        "dropped_by_scene": dropped_by_scene(reader.table("candidates"), list(summary["dropped"])),
        "band_statistics": profile,
        "water_vapour_windows_nm": [list(w) for w in water_vapour_windows()],
        "quicklooks": {
            "bands": [profile["band"][i] for i in rgb_bands(profile["wavelength_nm"])],
            "wavelength_nm": [profile["wavelength_nm"][i] for i in rgb_bands(profile["wavelength_nm"])],
            "stack": [_observation_facts(by_obs, obs) for obs in stack],
            "others": [_observation_facts(by_obs, obs) for obs in others],
        },
        "locations": {
            "count": len(points),
            "bbox": [float(v) for v in point_bounds(points)] if len(points) else None,
            "points": points.to_dict(orient="list") if len(points) <= MAX_EMBEDDED_POINTS else None,
        },
        "versions": list_versions(reader.files.root),
    }


def _observation_facts(by_obs: pd.DataFrame, obs: int) -> dict[str, Any]:
    row = by_obs.loc[obs]
    acquired = pd.Timestamp(row["acquired"])
    return {
        "obs": obs,
        "location_id": int(row["location_id"]),
        "acquired": "unknown date" if pd.isna(acquired) else acquired.strftime("%Y-%m-%d %H:%M UTC"),
        "product": str(row["product"]),
        "split": str(row["split"]),
    }


def _software_version() -> str:
    try:
        return package_version("spectral-corpus")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
        return "unknown"


def point_bounds(points: pd.DataFrame) -> tuple[float, float, float, float]:
    """West, south, east, north of :func:`location_points`."""
    lon, lat = points["lon"], points["lat"]
    return float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())


def scene_label(product: str) -> str:
    """A short name for a product: ``2023-06-29 11:01 · DT1001 · tile 1 · v01.04.02`` (else the name)."""
    try:
        name = ProductName.parse(product)
    except ProductError:
        return product
    version = ".".join(name.version[i : i + 2] for i in range(0, len(name.version), 2))
    return f"{name.acquired:%Y-%m-%d %H:%M} · DT{name.datatake} · tile {name.tile} · v{version}"
