"""Seeded synthetic EnMAP L2A products in the real delivery layout, for tests, examples and benchmarks.

``write_example`` writes the scenes of ``SCENARIO`` (product folders and ZIPs) and a static STAC catalogue
of them; ``write_bad_products`` adds products that the pipeline must reject. Spectra are linear mixtures
of the real Berlin urban spectral library with smooth abundance maps of ground coordinates, so revisits
of a place look alike. Nodata, clouds, shadows, haze, snow, cirrus and water are placed in exact pixel
counts per grid cell, so every cell of ``SCENARIO`` has a known fate in the corpus.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
from affine import Affine
from pyproj import Transformer

from spectral_corpus.catalog.bands import N_BANDS, NODATA, REFLECTANCE_SCALE, band_table
from spectral_corpus.catalog.errors import ExampleError
from spectral_corpus.catalog.metadata import Bands, ProductMetadata, metadata_xml, projection_name
from spectral_corpus.catalog.product import ASSET_SUFFIXES, DLR_ASSET_KEYS, ProductName, asset_key, product_filename
from spectral_corpus.catalog.rasters import encode_raster
from spectral_corpus.stages.grid import ANCHOR_M, CELL_M, PATCH_PX, PIXEL_M

COLLECTION_ID = "ENMAP_HSI_L2A"
MARGIN_PX = 20
SCENE_PX = 2 * PATCH_PX + 2 * MARGIN_PX
#: Zone of the reference frame in which abundance maps are defined (so other zones see the same ground).
REFERENCE_EPSG = 32632
#: Each replica of the scenario lies at least this many cells south of the previous one.
REPLICA_STEP = 4
#: A scene placed beside another must overlap its eastern column by this share of each western cell.
MIN_BESIDE_SHARE = 0.25

KEEP, NODATA_FATE, CLOUD, CLOUDSHADOW, SNOW = "keep", "nodata", "cloud", "cloudshadow", "snow"
DUPLICATE, ZONE_OVERLAP, SUPERSEDED, REJECTED = "duplicate", "zone_overlap", "superseded", "rejected"
#: Fates of a cell: kept, dropped for a reason (as the plan stage names it), in a product superseded by a
#: newer processor version, or in a product the pipeline must reject (``write_bad_products``).
FATES = (KEEP, NODATA_FATE, CLOUD, CLOUDSHADOW, SNOW, DUPLICATE, ZONE_OVERLAP, SUPERSEDED, REJECTED)
#: Event kinds; each sets its quality layer (nodata: pixel mask and class 3; water: class 2).
EVENT_KINDS = ("nodata", "cloud", "cloudshadow", "haze", "snow", "cirrus", "water")
QUALITY_KEYS = tuple(key for key in ASSET_SUFFIXES if key not in ("image", "metadata"))
_LAYER_OF = {"nodata": "pixelmask", "water": "quality_classes"}

_LAND, _WATER, _BACKGROUND = 1, 2, 3
_EVENT_INSET_PX = 10
_EVENT_STRIDE_PX = 60
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)
_MIX = {"vegetation": 2, "impervious": 2, "soil": 1}
_TERMS = 12
_SHARPNESS = 2.5
_TIF = "image/tiff; application=geotiff"
_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
]
_README = """Synthetic EnMAP L2A example archive written by catalog.synth (not a product).
Spectra: linear mixtures of the Berlin urban spectral library, DOI 10.5880/enmap.2016.008.
"""
#: Where DLR's portal puts ordered products: ``<order folder>/ENMAP.HSI.L2A/<item folder>/<product>.ZIP``.
ORDER_FOLDER = "dims_op_oc_oc-en_701234567_1"
ORDER_ITEMS = "ENMAP.HSI.L2A"
#: Cover figure -> (quality layer, flagged values) it counts (water: class 2 of QL_QUALITY_CLASSES).
_COVER_LAYERS = {
    "cloud_cover": ("quality_cloud", None),
    "cloud_shadow": ("quality_cloudshadow", None),
    "snow_cover": ("quality_snow", None),
    "haze_cover": ("quality_haze", None),
    "cirrus_cover": ("quality_cirrus", None),
    "water_cover": ("quality_classes", 2),
}


@dataclass(frozen=True)
class Event:
    """``pixels`` flagged pixels of one kind in one compact block of a cell (see ``EVENT_KINDS``)."""

    kind: str
    pixels: int

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS or self.pixels < 1:
            raise ValueError(f"bad event {self}")


@dataclass(frozen=True)
class CellPlan:
    """One full grid cell of a scene: row ``r`` (0 = north) and column ``c`` (0 = west), events, fate."""

    row: int
    col: int
    fate: str
    events: tuple[Event, ...] = ()

    def __post_init__(self) -> None:
        if self.fate not in FATES:
            raise ValueError(f"unknown fate {self.fate!r}; known: {FATES}")

    @property
    def slices(self) -> tuple[slice, slice]:
        """The cell's rows and columns in the scene raster."""
        top, left = MARGIN_PX + PATCH_PX * self.row, MARGIN_PX + PATCH_PX * self.col
        return slice(top, top + PATCH_PX), slice(left, left + PATCH_PX)


@dataclass(frozen=True)
class ScenePlan:
    """One product of the scenario: its name parts, where it lies (cells ix0..+1, iy0..+1), its cells.

    ``beside`` names the scene whose eastern column this scene's western column overlaps (another UTM
    zone); replicas keep that relation. ``stac_epsg`` False leaves ``proj:epsg`` out of its STAC item.
    """

    label: str
    epsg: int
    datatake: int
    tile: int
    acquired: datetime
    version: str
    processed: datetime
    ix0: int
    iy0: int
    cells: tuple[CellPlan, ...]
    zipped: bool = False
    cloudy_margins: bool = False
    stac_epsg: bool = True
    beside: str = ""
    quality: int = 0
    raster_format: str = "GTiff"

    @property
    def name(self) -> str:
        """The product name."""
        return str(ProductName(self.datatake, self.acquired, self.tile, self.version, self.processed))

    @property
    def transform(self) -> Affine:
        """North-up 30 m geotransform: full cells plus a margin of ``MARGIN_PX`` on every side."""
        x0 = ANCHOR_M + CELL_M * self.ix0 - MARGIN_PX * PIXEL_M
        y0 = ANCHOR_M + CELL_M * (self.iy0 + 2) + MARGIN_PX * PIXEL_M
        return Affine(PIXEL_M, 0, x0, 0, -PIXEL_M, y0)

    @property
    def path(self) -> Path:
        """Where the product lies in the archive: a folder, or a ZIP inside an order folder."""
        if self.zipped:
            return Path(ORDER_FOLDER, ORDER_ITEMS, self.name, f"{self.name}.ZIP")
        return Path(self.name)

    def location(self, cell: CellPlan) -> tuple[int, int, int]:
        """The grid key ``(epsg, ix, iy)`` of a cell."""
        return self.epsg, self.ix0 + cell.col, self.iy0 + 1 - cell.row

    def replica(self, k: int, cells_south: int) -> ScenePlan:
        """The scene of replica ``k``: moved south, datatake + 10 k, acquired and processed + k days."""
        days = timedelta(days=k)
        return replace(
            self,
            iy0=self.iy0 - cells_south,
            datatake=self.datatake + 10 * k,
            acquired=self.acquired + days,
            processed=self.processed + days,
        )


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _cells(*cells: tuple[str, str, tuple[Event, ...]]) -> tuple[CellPlan, ...]:
    return tuple(CellPlan(int(rc[0]), int(rc[1]), fate, events) for rc, fate, events in cells)


_CLEAN: tuple[Event, ...] = ()
_D_PARTS: dict[str, Any] = {
    "epsg": 32632, "datatake": 1003, "tile": 1, "acquired": _utc("2024-05-10T11:12:45"), "ix0": 181, "iy0": 1500,
}  # fmt: skip

#: The example scenes of replica 0, with every full cell's events and expected fate.
SCENARIO: tuple[ScenePlan, ...] = (
    ScenePlan(
        "A", 32632, 1001, 1, _utc("2023-06-29T11:01:32"), "010402", _utc("2024-06-30T02:07:48"), 181, 1500,
        _cells(
            ("00", NODATA_FATE, (Event("nodata", 1),)),
            ("01", KEEP, (Event("cloud", 163),)),
            ("10", DUPLICATE, (Event("haze", 100),)),
            ("11", KEEP, _CLEAN),
        ),
    ),
    ScenePlan(
        "B", 32632, 1001, 2, _utc("2023-06-29T11:01:36"), "010402", _utc("2024-06-30T02:08:03"), 181, 1499,
        _cells(
            ("00", KEEP, _CLEAN),
            ("01", DUPLICATE, _CLEAN),
            ("10", KEEP, (Event("cloudshadow", 163),)),
            ("11", CLOUDSHADOW, (Event("cloudshadow", 164),)),
        ),
        raster_format="COG",
    ),
    ScenePlan(
        "C", 32632, 1002, 1, _utc("2023-08-15T10:55:02"), "010402", _utc("2024-07-02T04:31:15"), 181, 1500,
        _cells(
            ("00", KEEP, _CLEAN),
            ("01", SNOW, (Event("snow", 1639),)),
            ("10", CLOUD, (Event("cloud", 164), Event("cloudshadow", 200))),
            ("11", KEEP, _CLEAN),
        ),
        zipped=True,
        cloudy_margins=True,
        quality=1,
    ),
    ScenePlan(
        **_D_PARTS, label="D", version="010402", processed=_utc("2024-05-12T03:00:00"),
        cells=_cells(
            ("00", SUPERSEDED, _CLEAN),
            ("01", SUPERSEDED, (Event("snow", 1638),)),
            ("10", SUPERSEDED, (Event("haze", 5000),)),
            ("11", SUPERSEDED, (Event("cloud", 500),)),
        ),
    ),
    ScenePlan(
        **_D_PARTS, label="D", version="010500", processed=_utc("2025-01-10T12:00:00"),
        cells=_cells(
            ("00", KEEP, _CLEAN),
            ("01", KEEP, (Event("snow", 1638),)),
            ("10", KEEP, (Event("haze", 5000),)),
            ("11", KEEP, _CLEAN),
        ),
    ),
    ScenePlan(
        "E", 32633, 1004, 1, _utc("2023-07-01T10:40:10"), "010402", _utc("2024-07-01T22:14:51"), 75, 1500,
        _cells(
            ("00", ZONE_OVERLAP, _CLEAN),
            ("01", KEEP, (Event("water", 3000),)),
            ("10", ZONE_OVERLAP, _CLEAN),
            ("11", KEEP, (Event("cirrus", 2000),)),
        ),
        zipped=True,
        stac_epsg=False,
        beside="A",
    ),
)  # fmt: skip


def scenario(replicas: int = 1) -> tuple[ScenePlan, ...]:
    """The scenes of ``replicas`` copies of ``SCENARIO``, each ``REPLICA_STEP`` or more cells south.

    A replica moves a further cell south while a scene ``beside`` another cannot be placed so that its
    western cells overlap the other's eastern column and its eastern cells overlap nothing.
    """
    if replicas < 1:
        raise ExampleError(f"replicas must be at least 1, got {replicas}")
    plans: list[ScenePlan] = []
    south = 0
    for k in range(replicas):
        moved = _replica(k, south)
        while moved is None:
            south += 1
            moved = _replica(k, south)
        plans.extend(moved)
        south += REPLICA_STEP
    return tuple(plans)


def _replica(k: int, cells_south: int) -> list[ScenePlan] | None:
    if min(plan.iy0 for plan in SCENARIO) - cells_south < 1:
        raise ExampleError(f"replica {k} would leave the northern hemisphere; use fewer replicas")
    moved = [plan.replica(k, cells_south) for plan in SCENARIO]
    by_label = {plan.label: plan for plan in moved}
    placed = []
    for plan in moved:
        if plan.beside:
            spot = _place_beside(by_label[plan.beside], plan.epsg)
            if spot is None:
                return None
            plan = replace(plan, ix0=spot[0], iy0=spot[1])
        placed.append(plan)
    return placed


def _place_beside(west: ScenePlan, epsg: int) -> tuple[int, int] | None:
    """``(ix0, iy0)`` in zone ``epsg`` of a scene whose western column overlaps ``west``'s eastern one."""
    x0, x1 = ANCHOR_M + CELL_M * (west.ix0 + 1), ANCHOR_M + CELL_M * (west.ix0 + 2)
    y0, y1 = ANCHOR_M + CELL_M * west.iy0, ANCHOR_M + CELL_M * (west.iy0 + 2)
    xs, ys = _transformer(west.epsg, epsg).transform([x0, x1, x1, x0], [y1, y1, y0, y0])
    column = shapely.Polygon(zip(xs, ys, strict=True))
    ix0 = math.ceil((max(xs) + PIXEL_M - ANCHOR_M) / CELL_M) - 1
    iy0 = round((sum(ys) / 4 - ANCHOR_M) / CELL_M) - 1
    cells = [shapely.box(*_cell_bounds(ix0, iy)) for iy in (iy0, iy0 + 1)]
    shares = [column.intersection(cell).area / CELL_M**2 for cell in cells]
    return (ix0, iy0) if min(shares) >= MIN_BESIDE_SHARE else None


def _cell_bounds(ix: int, iy: int) -> tuple[float, float, float, float]:
    return ANCHOR_M + CELL_M * ix, ANCHOR_M + CELL_M * iy, ANCHOR_M + CELL_M * (ix + 1), ANCHOR_M + CELL_M * (iy + 1)


@cache
def _transformer(source: int, target: int) -> Transformer:
    return Transformer.from_crs(source, target, always_xy=True)


# --- spectra --------------------------------------------------------------------------------------


@cache
def _library() -> tuple[np.ndarray, tuple[str, ...]]:
    """The library's spectra as reflectance on the 224 EnMAP band centres, and their level_1 classes."""
    with files(__package__).joinpath("data/berlin_urban_spectral_library.csv").open() as f:
        table = pd.read_csv(f)
    wavelengths = table.columns[4:].astype(float).to_numpy()
    centres = _centres_nm()
    values = table.iloc[:, 4:].to_numpy(float) * REFLECTANCE_SCALE
    spectra = np.stack([np.interp(centres, wavelengths, row) for row in values])
    return spectra.astype(np.float32), tuple(table["level_1"])


def _centres_nm() -> np.ndarray:
    return band_table()["center_nm"].to_numpy(float)


def _band_descriptions() -> list[str]:
    return [f"band {band} ({centre:.1f} nm)" for band, centre in enumerate(_centres_nm(), 1)]


@cache
def _absorption() -> np.ndarray:
    """Per-band transmission: 1 for kept bands, 0.1 at the edges to 0.02 inside the water-vapour gaps."""
    dropped = ~band_table()["kept_202"].to_numpy()
    factor = np.ones(N_BANDS, np.float32)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], dropped.astype(np.int8), [0]])))
    for start, stop in edges.reshape(-1, 2):
        depth = np.sin(np.pi * (np.arange(stop - start) + 1) / (stop - start + 1))
        factor[start:stop] = 0.1 - 0.08 * depth
    return factor


def _water_spectrum() -> np.ndarray:
    spectra, classes = _library()
    return spectra[[c == "water" for c in classes]].mean(axis=0)


def _snow_spectrum() -> np.ndarray:
    nm = [400, 800, 1000, 1250, 1400, 1700, 1900, 2200, 2500]
    reflectance = [0.92, 0.9, 0.75, 0.45, 0.12, 0.14, 0.05, 0.1, 0.06]
    return np.interp(_centres_nm(), nm, reflectance).astype(np.float32)


@dataclass(frozen=True)
class Landscape:
    """The ground of one seed: endmember spectra and sinusoid fields over reference-zone coordinates.

    ``waves`` holds (kx, ky, phase, amplitude) of ``_TERMS`` sinusoids for each endmember's abundance
    field and, last, for the brightness texture.
    """

    endmembers: np.ndarray
    waves: np.ndarray

    @classmethod
    def from_seed(cls, seed: int) -> Landscape:
        """Pick the endmembers and draw the fields."""
        rng = np.random.default_rng([seed, 1])
        spectra, classes = _library()
        picks = [rng.choice([i for i, c in enumerate(classes) if c == label], n, replace=False)
                 for label, n in _MIX.items()]  # fmt: skip
        endmembers = spectra[np.concatenate(picks)]
        n_fields = len(endmembers) + 1
        scales = np.exp(rng.uniform(np.log(300), np.log(8000), (n_fields, _TERMS)))
        scales[-1] = rng.uniform(60, 600, _TERMS)
        angle = rng.uniform(0, 2 * np.pi, (n_fields, _TERMS))
        amplitude = np.sqrt(scales / scales.sum(axis=1, keepdims=True) * 2)
        waves = np.stack(
            [2 * np.pi / scales * np.cos(angle), 2 * np.pi / scales * np.sin(angle),
             rng.uniform(0, 2 * np.pi, (n_fields, _TERMS)), amplitude],
            axis=-1,
        )  # fmt: skip
        return cls(endmembers, waves)

    def reflectance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Reflectance (bands, pixels) at reference-zone coordinates ``x``, ``y`` (metres)."""
        kx, ky, phase, amplitude = (self.waves[..., i, None] for i in range(4))
        fields = (amplitude * np.sin(kx * x + ky * y + phase)).sum(axis=1).astype(np.float32)
        logits = _SHARPNESS * fields[:-1]
        abundance = np.exp(logits - logits.max(axis=0))
        abundance /= abundance.sum(axis=0)
        return (self.endmembers.T @ abundance) * (1 + 0.06 * fields[-1])


# --- one product ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Patch:
    """Flagged pixels (flat raster indices) of one event, with their layer values."""

    kind: str
    index: np.ndarray
    value: np.ndarray


def _patches(plan: ScenePlan) -> list[_Patch]:
    """All flagged pixels of a scene: the swath edge, cloudy margins and the cells' events."""
    rows = np.arange(SCENE_PX)
    edge = 10 + 3 * rows // (SCENE_PX - 1)
    cols = np.arange(SCENE_PX)
    swath = np.flatnonzero(cols[None, :] < edge[:, None])
    patches = [_Patch("nodata", swath, np.ones(swath.size, np.uint8))]
    if plan.cloudy_margins:
        valid = cols[None, :] >= edge[:, None]
        margins = (rows[:, None] >= SCENE_PX - MARGIN_PX) | (cols[None, :] >= SCENE_PX - MARGIN_PX)
        index = np.flatnonzero(margins & valid)
        patches.append(_Patch("cloud", index, np.ones(index.size, np.uint8)))
    for cell in plan.cells:
        patches.extend(_event_patch(cell, i, event) for i, event in enumerate(cell.events))
    return patches


def _event_patch(cell: CellPlan, slot: int, event: Event) -> _Patch:
    """A compact block filled row by row; slot ``s`` starts 10 + 60 s px into the cell (down and right)."""
    side = math.ceil(math.sqrt(event.pixels))
    inset = _EVENT_INSET_PX + _EVENT_STRIDE_PX * slot
    if inset + side > PATCH_PX:
        raise ValueError(f"event {event} does not fit slot {slot} of a cell")
    k = np.arange(event.pixels)
    rows = cell.slices[0].start + inset + k // side
    cols = cell.slices[1].start + inset + k % side
    value = 1 + 3 * k // event.pixels if event.kind == "cirrus" else np.ones(event.pixels)
    return _Patch(event.kind, rows * SCENE_PX + cols, value.astype(np.uint8))


def _quality_layers(patches: list[_Patch]) -> dict[str, np.ndarray]:
    """The quality layers (key -> uint8 raster) implied by the flagged pixels."""
    layers = {key: np.zeros(SCENE_PX * SCENE_PX, np.uint8) for key in QUALITY_KEYS}
    layers["quality_classes"][:] = _LAND
    for patch in patches:
        layers[_LAYER_OF.get(patch.kind, f"quality_{patch.kind}")][patch.index] = patch.value
        if patch.kind == "nodata":
            layers["quality_classes"][patch.index] = _BACKGROUND
        elif patch.kind == "water":
            layers["quality_classes"][patch.index] = _WATER
    return {key: layer.reshape(SCENE_PX, SCENE_PX) for key, layer in layers.items()}


def _spectral_cube(plan: ScenePlan, patches: list[_Patch], landscape: Landscape, seed: int) -> np.ndarray:
    """The int16 image (bands, rows, cols): ground, events, water-vapour absorption, noise, nodata."""
    rng = np.random.default_rng([seed, plan.datatake, plan.tile])
    reflectance = landscape.reflectance(*_ground_xy(plan)) * np.float32(rng.uniform(0.95, 1.05))
    for patch in patches:
        _apply_event(reflectance, patch)
    dn = reflectance * (_absorption() / REFLECTANCE_SCALE).astype(np.float32)[:, None]
    sigma = dn * np.float32(0.004) + np.float32(3)
    dn += rng.standard_normal(dn.shape, dtype=np.float32) * sigma
    cube = np.clip(np.rint(dn), NODATA + 1, np.iinfo(np.int16).max).astype(np.int16)
    for patch in patches:
        if patch.kind == "nodata":
            cube[:, patch.index] = NODATA
    return cube.reshape(N_BANDS, SCENE_PX, SCENE_PX)


def _ground_xy(plan: ScenePlan) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (flat) in the reference zone."""
    t = plan.transform
    centres = np.arange(SCENE_PX) + 0.5
    x, y = np.meshgrid(t.c + t.a * centres, t.f + t.e * centres)
    if plan.epsg != REFERENCE_EPSG:
        x, y = _transformer(plan.epsg, REFERENCE_EPSG).transform(x, y)
    return np.ravel(x), np.ravel(y)


def _apply_event(reflectance: np.ndarray, patch: _Patch) -> None:
    """Change the spectra of an event's pixels in place (nodata is set later, on the integers)."""
    rows, cols = np.divmod(patch.index, SCENE_PX)
    u = (0.5 + 0.5 * np.sin(rows / 6) * np.cos(cols / 9)).astype(np.float32)
    ground = reflectance[:, patch.index]
    nm = _centres_nm()[:, None].astype(np.float32)
    if patch.kind == "cloud":
        new = (0.5 + 0.3 * u) * (1 - 0.1 * (nm - 400) / 2100)
    elif patch.kind == "cloudshadow":
        new = ground * (0.2 + 0.2 * u)
    elif patch.kind == "haze":
        new = 0.9 * ground + 0.07 * (nm / 450) ** -2 * (0.5 + u)
    elif patch.kind == "cirrus":
        new = ground + 0.03 * patch.value.astype(np.float32)
    elif patch.kind == "snow":
        new = _snow_spectrum()[:, None] * (0.95 + 0.05 * u)
    elif patch.kind == "water":
        new = _water_spectrum()[:, None] * (0.9 + 0.2 * u)
    else:
        return
    reflectance[:, patch.index] = new


def _metadata(plan: ScenePlan, layers: Mapping[str, np.ndarray]) -> ProductMetadata:
    """What the product's METADATA.XML says (always the 224 operational bands, whatever the image holds)."""
    valid = layers["pixelmask"] == 0
    covers = {
        name: _cover(layers[key] == value if value is not None else layers[key] != 0, valid)
        for name, (key, value) in _COVER_LAYERS.items()
    }
    return ProductMetadata(
        name=plan.name,
        level="L2A",
        datatake=plan.datatake,
        tile=plan.tile,
        processor=".".join(plan.version[i : i + 2] for i in (0, 2, 4)),
        acquired=plan.acquired,
        processed=plan.processed,
        n_bands=N_BANDS,
        corners=_swath_corners(plan),
        bands=scene_bands(plan),
        width=SCENE_PX,
        height=SCENE_PX,
        product_format=_PRODUCT_FORMATS[plan.raster_format],
        quality=plan.quality,
        projection=projection_name(plan.epsg),
        **covers,
    )


_PRODUCT_FORMATS = {
    "GTiff": "GeoTIFF+Metadata", "COG": "GeoTIFF+Metadata", "BSQ": "BSQ+Metadata", "BIL": "BIL+Metadata",
    "BIP": "BIP+Metadata", "JP2": "JPEG2000+Metadata",
}  # fmt: skip


def scene_bands(plan: ScenePlan) -> Bands:
    """The scene's band characterisation: the nominal table shifted by a fraction of a nanometre per scene."""
    table = band_table()
    rng = np.random.default_rng([plan.datatake, plan.tile, 7])
    centres = table["center_nm"].to_numpy() + rng.uniform(-0.4, 0.4) + rng.normal(0, 0.02, N_BANDS)
    return Bands(
        centres_nm=tuple(np.round(centres, 3).tolist()),
        fwhm_nm=tuple(np.round(table["fwhm_nm"].to_numpy(), 3).tolist()),
        gains=(REFLECTANCE_SCALE,) * N_BANDS,
        offsets=(0.0,) * N_BANDS,
    )


def _swath_corners(plan: ScenePlan) -> tuple[tuple[float, float], ...]:
    """(lon, lat) of the valid swath's corners (upper-left, upper-right, lower-right, lower-left)."""
    t = plan.transform
    left_top, left_bottom = t.c + 10 * PIXEL_M, t.c + 13 * PIXEL_M  # the swath edge of ``_patches``
    right, bottom = t.c + SCENE_PX * PIXEL_M, t.f - SCENE_PX * PIXEL_M
    xs, ys = [left_top, right, right, left_bottom], [t.f, t.f, bottom, bottom]
    lon, lat = _transformer(plan.epsg, 4326).transform(xs, ys)
    return tuple((round(a, 7), round(b, 7)) for a, b in zip(lon, lat, strict=True))


def _cover(flagged: np.ndarray, valid: np.ndarray) -> float:
    """Whole percent of valid pixels flagged, as DLR reports cover figures."""
    return float(round(100 * float(np.count_nonzero(flagged[valid])) / max(1, int(valid.sum()))))


@dataclass(frozen=True)
class _Product:
    """A product in memory: its metadata and its files (file name -> bytes)."""

    meta: ProductMetadata
    files: dict[str, bytes]


def _render(plan: ScenePlan, landscape: Landscape, seed: int, n_bands: int = N_BANDS) -> _Product:
    """Every file of a product, rasters in the plan's format, METADATA.XML listing them."""
    patches = _patches(plan)
    layers = _quality_layers(patches)
    meta = _metadata(plan, layers)
    cube = _spectral_cube(plan, patches, landscape, seed)[:n_bands]
    rasters = {
        "SPECTRAL_IMAGE": (cube, NODATA, _band_descriptions()[:n_bands]),
        "QL_VNIR": (_quicklook(cube, (48, 34, 16)), None, ()),
        "QL_SWIR": (_quicklook(cube, (203, 163, 110)), None, ()),
        **{ASSET_SUFFIXES[key]: (layer[None], None, ()) for key, layer in layers.items()},
    }
    files: dict[str, bytes] = {}
    for suffix, (array, nodata, descriptions) in rasters.items():
        files |= encode_raster(
            f"{plan.name}-{suffix}", array, crs=f"EPSG:{plan.epsg}", transform=plan.transform, nodata=nodata,
            fmt=plan.raster_format, descriptions=descriptions,
        )  # fmt: skip
    history = f"{plan.name}-HISTORY.XML"
    files[history] = _history(plan)
    metadata = product_filename(plan.name, "metadata")
    files[metadata] = metadata_xml(meta, files=sorted([*files, metadata]))
    return _Product(meta, dict(sorted(files.items())))


def _quicklook(cube: np.ndarray, bands: tuple[int, int, int]) -> np.ndarray:
    """A uint8 RGB quicklook of three bands (0-based; they exist in every cube written here)."""
    picked = cube[[b for b in bands if b < len(cube)] or [0]].astype(np.float32)
    return np.clip(picked / 20, 0, 255).astype(np.uint8)


def _history(plan: ScenePlan) -> bytes:
    """A short processing history, as DLR ships beside METADATA.XML (the pipeline ignores it)."""
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<history><product>{plan.name}</product>'
        f"<processor>{plan.version}</processor><note>synthetic example</note></history>\n"
    ).encode()


def _store(
    archive: Path, plan: ScenePlan, content: Mapping[str, bytes], loose: Mapping[str, bytes] | None = None
) -> dict[str, str]:
    """Write a product as a folder, or as a ZIP of ``<name>/<file>`` in an order folder; return key -> href.

    ``loose`` members go into the ZIP under their own paths (for a product that must be rejected).
    """
    name, path = plan.name, archive / plan.path
    path.parent.mkdir(parents=True, exist_ok=True)
    if plan.zipped:
        _order_files(archive / ORDER_FOLDER)
        members = {**{f"{name}/{member}": data for member, data in content.items()}, **(loose or {})}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            for member, data in members.items():
                info = zipfile.ZipInfo(member, _ZIP_TIME)
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
        prefix = f"/vsizip/{path.resolve()}/{name}"
    else:
        path.mkdir(parents=True, exist_ok=True)
        for member, data in content.items():
            (path / member).write_bytes(data)
        prefix = str(path.resolve())
    keys = {member: asset_key(member, name) for member in content}
    return {key: f"{prefix}/{member}" for member, key in keys.items() if key is not None}


def _order_files(order: Path) -> None:
    """What an order folder holds beside the products: ``readme.html``, ``iif/`` and ``tools/``."""
    (order / "iif").mkdir(parents=True, exist_ok=True)
    (order / "tools").mkdir(exist_ok=True)
    (order / "readme.html").write_text("<html><body>Synthetic EnMAP order (catalog.synth).</body></html>\n")
    (order / "iif" / "order.xml").write_text("<order><id>701234567</id></order>\n")


# --- STAC -----------------------------------------------------------------------------------------


#: How long after processing DLR's catalog lists a product (the real item in ../shared/data/real: 4 h 48 min).
PUBLISHED_AFTER = timedelta(hours=4, minutes=48)


def stac_item(
    meta: ProductMetadata, hrefs: Mapping[str, str], *, with_epsg: bool = True, transform: Affine | None = None
) -> dict[str, Any]:
    """A STAC item (dict) shaped like DLR's ``ENMAP_HSI_L2A`` items, but valid against the STAC schemas.

    As in DLR's items: asset keys ``quality_cloud_shadow`` and ``defective_pixel_mask``, item-level
    ``proj:epsg`` null with ``proj:epsg``/``proj:shape``/``proj:transform`` on each raster asset (left
    out with ``with_epsg`` False), ``eo:bands`` on the image asset, ``enmap:*`` cover figures. Unlike
    DLR's, numbers are JSON numbers (DLR writes ``"eo:cloud_cover": "0"``, which the eo schema refuses).
    """
    ring = [meta.corners[i] for i in (0, 3, 2, 1, 0)]
    lons, lats = zip(*ring, strict=True)
    properties: dict[str, Any] = {
        "datetime": _iso(meta.acquired),
        "platform": "enmap",
        "instruments": ["hsi"],
        "gsd": PIXEL_M,
        "eo:cloud_cover": meta.cloud_cover,
        "eo:snow_cover": meta.snow_cover,
        "enmap:cloud_shadow": meta.cloud_shadow,
        "enmap:haze_cover": meta.haze_cover,
        "enmap:cirrus_cover": meta.cirrus_cover,
        "enmap:water_cover": meta.water_cover,
        "enmap:overallQuality": meta.quality,
        "enmap:datatakeID": f"{meta.datatake:010d}",
        "enmap:tileID": f"{meta.tile:02d}",
        "processing:level": meta.level,
        "processing:version": meta.processor,
        "processing:datetime": _iso(meta.processed),
        # DLR's items are created, and last updated, hours after the product was processed
        "created": _iso(meta.processed + PUBLISHED_AFTER),
        "updated": _iso(meta.processed + PUBLISHED_AFTER),
        "proj:epsg": None,
    }
    raster = _raster_fields(meta, transform) if with_epsg else {}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": _EXTENSIONS,
        "id": meta.name,
        "collection": COLLECTION_ID,
        "geometry": {"type": "Polygon", "coordinates": [[list(point) for point in ring]]},
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": properties,
        "links": [{"rel": "collection", "href": "./collection.json", "type": "application/json"}],
        "assets": {DLR_ASSET_KEYS.get(key, key): _asset(key, href, meta, raster) for key, href in hrefs.items()},
    }


def _raster_fields(meta: ProductMetadata, transform: Affine | None) -> dict[str, Any]:
    """Asset-level projection fields, as DLR puts them."""
    if transform is None or meta.epsg is None or meta.width is None or meta.height is None:
        return {}
    return {"proj:epsg": meta.epsg, "proj:shape": [meta.height, meta.width], "proj:transform": list(transform)}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _eo_bands(bands: Bands) -> list[dict[str, Any]]:
    return [
        {"name": f"band {i}", "center_wavelength": round(c / 1000, 6), "full_width_half_max": round(w / 1000, 6)}
        for i, (c, w) in enumerate(zip(bands.centres_nm, bands.fwhm_nm, strict=True), 1)
    ]


def _asset(key: str, href: str, meta: ProductMetadata, raster: Mapping[str, Any]) -> dict[str, Any]:
    if key == "metadata":
        return {"href": href, "type": "application/xml", "title": "Metadata", "roles": ["metadata"]}
    media = _TIF + ("; profile=cloud-optimized" if "_COG." in href else "") if href.upper().endswith(".TIF") else None
    asset: dict[str, Any] = {"href": href, **({"type": media} if media else {}), "title": ASSET_SUFFIXES[key]}
    if key == "image":
        return {**asset, **raster, "eo:bands": _eo_bands(meta.bands), "roles": ["data"]}
    return {**asset, **raster, "roles": ["quality", "data-mask"] if key == "pixelmask" else ["quality"]}


def stac_collection(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The ENMAP_HSI_L2A collection covering ``items``."""
    boxes = np.array([item["bbox"] for item in items])
    times = sorted(item["properties"]["datetime"] for item in items)
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": _EXTENSIONS[:1],
        "id": COLLECTION_ID,
        "title": "EnMAP HSI L2A (synthetic example)",
        "description": "Synthetic EnMAP L2A surface reflectance products written by catalog.synth.",
        "license": "CC-BY-4.0",
        "extent": {
            "spatial": {"bbox": [[*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()]]},
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "summaries": {"platform": ["enmap"], "instruments": ["hsi"], "gsd": [PIXEL_M]},
        "links": [{"rel": "cite-as", "href": "https://doi.org/10.5880/enmap.2016.008"}],
    }


# --- public writers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """Where ``write_example`` put things."""

    root: Path
    archive: Path
    stac_items: Path
    collection: Path
    products: tuple[str, ...]


def write_example(
    outdir: Path, seed: int = 0, replicas: int = 1, raster_formats: Mapping[str, str] | None = None
) -> Example:
    """Write ``replicas`` copies of ``SCENARIO`` into ``outdir/archive`` and their STAC under ``outdir/stac``.

    ``raster_formats`` maps scene labels to a format of ``catalog.rasters.RASTER_FORMATS`` (default:
    DLR's uncompressed GeoTIFF strips, scene B as a COG). The same seed gives byte-identical files.
    Files of earlier runs that this one does not write stay.
    """
    root = Path(outdir)
    archive, stac = root / "archive", root / "stac"
    archive.mkdir(parents=True, exist_ok=True)
    stac.mkdir(parents=True, exist_ok=True)
    landscape = Landscape.from_seed(seed)
    formats = raster_formats or {}
    plans = tuple(replace(p, raster_format=formats.get(p.label, p.raster_format)) for p in scenario(replicas))
    items = [_write_scene(plan, archive, landscape, seed) for plan in plans]
    (archive / "README.txt").write_text(_README)
    example = Example(root, archive, stac / "items.json", stac / "collection.json", tuple(p.name for p in plans))
    _write_json(example.stac_items, {"type": "FeatureCollection", "features": items})
    _write_json(example.collection, stac_collection(items))
    return example


def write_scenes(archive: Path, plans: Iterable[ScenePlan], seed: int = 0) -> list[dict[str, Any]]:
    """Write the products of ``plans`` into ``archive`` (folders or ZIPs, as each says); return their STAC items.

    For products shaped otherwise than ``SCENARIO``'s (other cells kept, say), on the landscape that
    ``write_example`` uses with the same seed.
    """
    archive.mkdir(parents=True, exist_ok=True)
    landscape = Landscape.from_seed(seed)
    return [_write_scene(plan, archive, landscape, seed) for plan in plans]


def _write_scene(plan: ScenePlan, archive: Path, landscape: Landscape, seed: int) -> dict[str, Any]:
    product = _render(plan, landscape, seed)
    hrefs = _store(archive, plan, product.files)
    return stac_item(product.meta, hrefs, with_epsg=plan.stac_epsg, transform=plan.transform)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")


def bad_plans() -> dict[int, ScenePlan]:
    """The rejected products of ``write_bad_products`` by datatake, at E's place, one day apart."""
    e = next(plan for plan in SCENARIO if plan.label == "E")
    cells = tuple(replace(cell, events=(), fate=REJECTED) for cell in e.cells)
    return {
        datatake: replace(
            e, label=f"bad{datatake}", datatake=datatake, acquired=e.acquired + timedelta(days=datatake - 9000),
            cells=cells, zipped=datatake == 9003, beside="",
        )
        for datatake in (9001, 9002, 9003, 9004, 9005)
    }  # fmt: skip


def write_bad_products(archive: Path, seed: int = 0) -> list[dict[str, Any]]:
    """Write products the pipeline must reject, at E's location; return STAC items for 9001, 9004, 9005.

    9001: SPECTRAL_IMAGE.TIF truncated to 60 %; 9002: no METADATA.XML; 9003: a ZIP that also holds
    ``../evil.txt``; 9004: a 200-band image (METADATA.XML says 224); 9005 (item only): E's item under
    another name without an ``image`` asset.
    """
    archive = Path(archive)
    archive.mkdir(parents=True, exist_ok=True)
    landscape = Landscape.from_seed(seed)
    plans = bad_plans()
    items = []
    for datatake in (9001, 9002, 9003, 9004):
        plan = plans[datatake]
        product = _render(plan, landscape, seed, n_bands=200 if datatake == 9004 else N_BANDS)
        hrefs = _store(
            archive,
            plan,
            _spoil(datatake, plan.name, product.files),
            loose={"../evil.txt": b"outside the product folder\n"} if plan.zipped else None,
        )
        if datatake in (9001, 9004):
            items.append(stac_item(product.meta, hrefs, transform=plan.transform))
    items.append(_item_without_image(archive, plans[9005].name))
    return items


def _spoil(datatake: int, name: str, content: dict[str, bytes]) -> dict[str, bytes]:
    """9001: the image cut to 60 % of its bytes; 9002: no METADATA.XML; others unchanged."""
    image, metadata = product_filename(name, "image"), product_filename(name, "metadata")
    if datatake == 9001:
        return {**content, image: content[image][: len(content[image]) * 6 // 10]}
    if datatake == 9002:
        return {member: data for member, data in content.items() if member != metadata}
    return content


def _item_without_image(archive: Path, name: str) -> dict[str, Any]:
    """E's item (hrefs into ``archive``), renamed to ``name``, without its image asset."""
    e = next(plan for plan in SCENARIO if plan.label == "E")
    meta = _metadata(e, _quality_layers(_patches(e)))
    prefix = f"/vsizip/{(archive / e.path).resolve()}/{e.name}"
    hrefs = {key: f"{prefix}/{product_filename(e.name, key)}" for key in ASSET_SUFFIXES if key != "image"}
    item = stac_item(meta, hrefs, with_epsg=e.stac_epsg, transform=e.transform)
    return {**item, "id": name}
