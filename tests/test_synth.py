"""The synthetic example products: layout, pixel flags, spectra, STAC, determinism and the scenario."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.errors import RasterioIOError

from spectral_corpus.catalog.bands import N_BANDS, NODATA, band_table
from spectral_corpus.catalog.metadata import parse_metadata
from spectral_corpus.catalog.product import ASSET_SUFFIXES, DLR_ASSET_KEYS, ProductName, product_filename
from spectral_corpus.catalog.synth import (
    CELL_M,
    COLLECTION_ID,
    FATES,
    KEEP,
    ORDER_FOLDER,
    QUALITY_KEYS,
    SCENARIO,
    SUPERSEDED,
    CellPlan,
    Event,
    Example,
    Landscape,
    ScenePlan,
    scenario,
    write_bad_products,
    write_example,
)
from stac_schemas import validate_stac_collection, validate_stac_item

LAYER_OF_KIND = {
    "nodata": "pixelmask",
    "cloud": "quality_cloud",
    "cloudshadow": "quality_cloudshadow",
    "haze": "quality_haze",
    "snow": "quality_snow",
    "cirrus": "quality_cirrus",
}


@pytest.fixture(scope="module")
def items(example: Example) -> dict[str, pystac.Item]:
    return {item.id: item for item in pystac.ItemCollection.from_file(str(example.stac_items))}


def plan_of(label: str, version: str = "010402") -> ScenePlan:
    return next(p for p in SCENARIO if p.label == label and p.version == version)


def cell_of(plan: ScenePlan, rc: str) -> CellPlan:
    return next(c for c in plan.cells if (c.row, c.col) == (int(rc[0]), int(rc[1])))


def read(items: dict[str, pystac.Item], plan: ScenePlan, key: str, bands: int | list[int] = 1) -> np.ndarray:
    with rasterio.open(items[plan.name].assets[DLR_ASSET_KEYS.get(key, key)].href) as src:
        return src.read(bands)


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# --- layout ---------------------------------------------------------------------------------------


def test_products_are_named_and_laid_out_as_delivered(example: Example) -> None:
    assert example.products == tuple(plan.name for plan in SCENARIO)
    assert all(str(ProductName.parse(name)) == name for name in example.products)
    expected = {p.name for p in SCENARIO if not p.zipped} | {"README.txt", ORDER_FOLDER}
    assert {path.name for path in example.archive.iterdir()} == expected
    order = example.archive / ORDER_FOLDER
    assert sorted(p.name for p in order.iterdir()) == ["ENMAP.HSI.L2A", "iif", "readme.html", "tools"]
    a = plan_of("A")
    assert sorted(path.name for path in (example.archive / a.name).iterdir()) == delivered_files(a.name)


def delivered_files(name: str, ext: str = "TIF") -> list[str]:
    """What DLR delivers: every asset, the quicklooks and the processing history."""
    extra = [f"{name}-QL_VNIR.{ext}", f"{name}-QL_SWIR.{ext}", f"{name}-HISTORY.XML"]
    return sorted([*(product_filename(name, key, ext) for key in ASSET_SUFFIXES), *extra])


def test_zip_members_are_stored_product_files(example: Example) -> None:
    for plan in (p for p in SCENARIO if p.zipped):
        assert plan.path.parts == (ORDER_FOLDER, "ENMAP.HSI.L2A", plan.name, f"{plan.name}.ZIP")
        with zipfile.ZipFile(example.archive / plan.path) as zf:
            assert zf.namelist() == [f"{plan.name}/{file}" for file in delivered_files(plan.name)]
            assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}
    assert {p.label for p in SCENARIO if p.zipped} == {"C", "E"}


def test_spectral_image_format(example: Example, items: dict[str, pystac.Item]) -> None:
    a = plan_of("A")
    with rasterio.open(items[a.name].assets["image"].href) as src:
        assert (src.count, src.width, src.height) == (N_BANDS, 296, 296)
        assert set(src.dtypes) == {"int16"} and src.nodata == NODATA
        assert src.crs.to_epsg() == 32632
        assert src.transform == Affine(30, 0, 15 + 3840 * 181 - 600, 0, -30, 15 + 3840 * 1502 + 600)
        assert src.block_shapes[0][1] == 296 and src.block_shapes[0][0] < 296  # strips, as DLR writes them
        assert src.compression is None and src.interleaving.name == "band"
        centre = band_table()["center_nm"][11]
        assert src.descriptions[11] == f"band 12 ({centre:.1f} nm)"
    with rasterio.open(items[a.name].assets["quality_cloud"].href) as src:
        assert (src.count, src.dtypes[0], src.transform, src.compression) == (1, "uint8", a.transform, None)
    b = plan_of("B")  # stored as DLR's cloud archive serves it
    href = items[b.name].assets["image"].href
    assert href.endswith("-SPECTRAL_IMAGE_COG.TIF")
    with rasterio.open(href) as src:
        assert src.compression.name == "deflate" and src.block_shapes[0] == (512, 512)


def test_metadata_describes_the_product(example: Example, items: dict[str, pystac.Item]) -> None:
    c = plan_of("C")
    with zipfile.ZipFile(example.archive / c.path) as zf:
        meta = parse_metadata(zf.read(f"{c.name}/{product_filename(c.name, 'metadata')}"), c.name)
    assert (meta.name, meta.epsg, meta.width, meta.height, meta.n_bands) == (c.name, 32632, 296, 296, N_BANDS)
    assert (meta.datatake, meta.tile, meta.processor, meta.level) == (1002, 1, "01.04.02", "L2A")
    nominal = band_table()["center_nm"].to_numpy()
    shift = np.asarray(meta.bands.centres_nm) - nominal
    assert 0 < abs(shift.mean()) < 0.4 and np.abs(shift - shift.mean()).max() < 0.1  # a fraction of a nm
    assert set(meta.bands.gains) == {1e-4} and set(meta.bands.offsets) == {0.0} and meta.quality == 1
    valid = read(items, c, "pixelmask") == 0
    cloudy = np.count_nonzero(read(items, c, "quality_cloud")[valid])
    assert meta.cloud_cover == round(100 * cloudy / valid.sum())
    assert meta.cloud_cover > 10
    lon, lat = Transformer.from_crs(32632, 4326, always_xy=True).transform(c.transform.c + 300, c.transform.f)
    assert meta.corners[0] == pytest.approx((lon, lat), abs=1e-6)  # the valid swath starts 10 px in


# --- pixel flags ----------------------------------------------------------------------------------


def test_a01_has_exactly_163_cloud_pixels(items: dict[str, pystac.Item]) -> None:
    a = plan_of("A")
    cloud = read(items, a, "quality_cloud")
    assert np.count_nonzero(cloud[cell_of(a, "01").slices]) == 163
    assert set(np.unique(cloud)) == {0, 1}


def test_a00_nodata_pixel_in_every_layer(items: dict[str, pystac.Item]) -> None:
    a = plan_of("A")
    window = cell_of(a, "00").slices
    image = read(items, a, "image", list(range(1, N_BANDS + 1)))[(slice(None), *window)]
    assert np.count_nonzero(read(items, a, "pixelmask")[window]) == 1
    assert np.count_nonzero(read(items, a, "quality_classes")[window] == 3) == 1
    nodata = image == NODATA
    assert np.count_nonzero(nodata.all(axis=0)) == 1 and np.array_equal(nodata.any(axis=0), nodata.all(axis=0))


@pytest.mark.parametrize("plan", SCENARIO, ids=lambda p: f"{p.label}-{p.version}")
def test_flag_counts_per_cell_follow_the_events(items: dict[str, pystac.Item], plan: ScenePlan) -> None:
    layers = {key: read(items, plan, key) for key in QUALITY_KEYS}
    for cell in plan.cells:
        events: Counter[str] = Counter()
        for event in cell.events:
            events[event.kind] += event.pixels
        window = cell.slices
        for kind, key in LAYER_OF_KIND.items():
            assert np.count_nonzero(layers[key][window]) == events[kind], (plan.label, cell, kind)
        classes = layers["quality_classes"][window]
        assert np.count_nonzero(classes == 2) == events["water"]
        assert np.count_nonzero(classes == 3) == events["nodata"]
        assert np.count_nonzero(classes == 1) == CELL_M**2 // 900 - events["water"] - events["nodata"]
    assert not layers["quality_testflags"].any()
    cirrus = layers["quality_cirrus"]
    assert set(np.unique(cirrus)) == ({0, 1, 2, 3} if plan.label == "E" else {0})


def test_swath_edge_is_nodata_outside_the_cells(items: dict[str, pystac.Item]) -> None:
    mask = read(items, plan_of("B"), "pixelmask")
    per_row = mask.sum(axis=1)
    assert per_row.min() >= 10 and per_row.max() <= 13
    assert not mask[:, 20:].any()


# --- spectra --------------------------------------------------------------------------------------


def reflectance(items: dict[str, pystac.Item], plan: ScenePlan) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    cube = read(items, plan, "image", list(range(1, N_BANDS + 1))).astype(np.float32) * 1e-4
    return cube, {key: read(items, plan, key) for key in QUALITY_KEYS}


def test_land_spectra_are_realistic(items: dict[str, pystac.Item]) -> None:
    cube, layers = reflectance(items, plan_of("A"))
    clear = (layers["quality_classes"] == 1) & ~np.logical_or.reduce(
        [layers[key] != 0 for key in ("quality_cloud", "quality_cloudshadow", "quality_haze")]
    )
    land = cube[:, clear]
    assert 0.02 < land.mean() < 0.6
    assert land.min() > -0.01 and land.max() < 1.0
    kept = band_table()["kept_202"].to_numpy()
    means = land.mean(axis=1)
    assert means[126:141].max() < 0.25 * means[125] and means[160:167].max() < 0.25 * means[159]
    pairs = [(i, i + 1) for i in range(N_BANDS - 1) if kept[i] and kept[i + 1]]
    assert min(np.corrcoef(land[i], land[j])[0, 1] for i, j in pairs) > 0.9
    red, nir = (int(np.argmin(abs(band_table()["center_nm"] - nm))) for nm in (660, 860))
    assert np.percentile(land[nir] / land[red], 90) > 2  # some vegetation: a red edge


def test_event_spectra(items: dict[str, pystac.Item]) -> None:
    nm = band_table()["center_nm"].to_numpy()
    vnir, swir = nm < 800, (nm > 1500) & (nm < 1750)
    cube, layers = reflectance(items, plan_of("C"))
    cloud = cube[:, layers["quality_cloud"] == 1]
    assert 0.4 < cloud[vnir].mean() < 0.9 and cloud[swir].mean() > 0.35
    snow = cube[:, layers["quality_snow"] == 1]
    assert snow[vnir].mean() > 0.8 and snow[swir].mean() < 0.2
    shadow = layers["quality_cloudshadow"] == 1
    around = cell_of(plan_of("C"), "10").slices
    assert cube[:, shadow].mean() < 0.5 * cube[(slice(None), *around)].mean()
    cube, layers = reflectance(items, plan_of("E"))
    water = cube[:, layers["quality_classes"] == 2]
    assert water[nm > 900].mean() < 0.05


def test_revisits_of_a_cell_look_alike(items: dict[str, pystac.Item]) -> None:
    """A11, C11 and D11 are the same ground on three dates; E sees A's ground from another zone."""
    band = int(np.argmin(abs(band_table()["center_nm"] - 860))) + 1
    a, c, d = (
        read(items, p, "image", band)[cell_of(p, "11").slices]
        for p in (plan_of("A"), plan_of("C"), plan_of("D", "010500"))
    )
    for other in (c, d):
        assert np.corrcoef(a.ravel(), other.ravel())[0, 1] > 0.9
    e, a_plan, e_plan = read(items, plan_of("E"), "image", band), plan_of("A"), plan_of("E")
    rows, cols = (v.ravel() for v in np.mgrid[20:276:5, 20:148:5])
    x, y = e_plan.transform @ (cols + 0.5, rows + 0.5)
    col_a, row_a = (np.floor(v).astype(int) for v in ~a_plan.transform @ to_zone(32633, 32632)(x, y))
    inside = (row_a >= 0) & (row_a < 296) & (col_a >= 0) & (col_a < 296)
    assert inside.mean() > 0.5
    a_full = read(items, a_plan, "image", band)
    seen_by_a, seen_by_e = a_full[row_a[inside], col_a[inside]], e[rows[inside], cols[inside]]
    assert np.corrcoef(seen_by_a, seen_by_e)[0, 1] > 0.8


# --- STAC -----------------------------------------------------------------------------------------


def test_stac_items(example: Example, items: dict[str, pystac.Item]) -> None:
    assert list(items) == list(example.products)
    raw = {item["id"]: item for item in json.loads(example.stac_items.read_text())["features"]}
    dlr_keys = {DLR_ASSET_KEYS.get(key, key) for key in ASSET_SUFFIXES}
    for plan in SCENARIO:
        validate_stac_item(raw[plan.name])
        item, image = items[plan.name], raw[plan.name]["assets"]["image"]
        assert raw[plan.name]["properties"]["proj:epsg"] is None  # as in DLR's items: the CRS is on the assets
        assert image.get("proj:epsg") == (plan.epsg if plan.label != "E" else None)
        if plan.label != "E":
            assert image["proj:shape"] == [296, 296] and image["proj:transform"] == list(plan.transform)
        assert item.collection_id == COLLECTION_ID and item.get_single_link("collection") is not None
        assert item.datetime == plan.acquired
        bands = image["eo:bands"]
        assert len(bands) == N_BANDS and bands[0]["center_wavelength"] == pytest.approx(0.4182, abs=5e-4)
        assert {"eo:cloud_cover", "eo:snow_cover", "enmap:overallQuality", "enmap:cloud_shadow"} <= set(item.properties)
        assert item.properties["enmap:overallQuality"] == plan.quality
        assert set(item.assets) == dlr_keys
        assert item.assets["metadata"].media_type == "application/xml"
        assert item.assets["metadata"].roles == ["metadata"]
        cog = plan.raster_format == "COG"
        assert item.assets["image"].media_type == "image/tiff; application=geotiff" + "; profile=cloud-optimized" * cog
        assert item.assets["image"].roles == ["data"]
        href = item.assets["image"].href
        assert href.endswith("_COG.TIF" if cog else "-SPECTRAL_IMAGE.TIF")
        assert href.startswith("/vsizip/" if plan.zipped else "/") and Path(href.removeprefix("/vsizip")).is_absolute()
        with rasterio.open(href) as src:
            assert src.count == N_BANDS
        footprint = shapely.geometry.shape(item.geometry)
        assert footprint.is_valid and footprint.exterior.is_ccw
        assert footprint.bounds == pytest.approx(tuple(item.bbox or ()))


def test_stac_collection(example: Example, items: dict[str, pystac.Item]) -> None:
    collection = pystac.Collection.from_file(str(example.collection))
    assert collection.id == COLLECTION_ID
    validate_stac_collection(json.loads(example.collection.read_text()))
    west, south, east, north = collection.extent.spatial.bboxes[0]
    for item in items.values():
        assert item.bbox is not None
        assert west <= item.bbox[0] and south <= item.bbox[1] and item.bbox[2] <= east and item.bbox[3] <= north


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_gives_identical_files(example: Example, tmp_path: Path) -> None:
    again = write_example(tmp_path, seed=0)
    assert file_digests(again.archive) == file_digests(example.archive)
    assert again.stac_items.read_text().replace(str(tmp_path), "ROOT") == example.stac_items.read_text().replace(
        str(example.root), "ROOT"
    )


def test_seeds_give_different_ground() -> None:
    zero, one = Landscape.from_seed(0), Landscape.from_seed(1)
    assert np.array_equal(zero.waves, Landscape.from_seed(0).waves)
    assert not np.array_equal(zero.waves, one.waves)


# --- the scenario ---------------------------------------------------------------------------------


def expected_counts(plans: tuple[ScenePlan, ...]) -> dict[str, object]:
    cells = [(plan, cell) for plan in plans for cell in plan.cells if cell.fate != SUPERSEDED]
    dates = defaultdict(set)
    for plan, cell in cells:
        if cell.fate == KEEP:
            dates[plan.location(cell)].add(plan.acquired)
    return {
        "candidates": len(cells),
        "observations": sum(len(d) for d in dates.values()),
        "locations": len(dates),
        "multi_date": sum(len(d) > 1 for d in dates.values()),
        "longest": max(len(d) for d in dates.values()),
        "drops": dict(Counter(cell.fate for _, cell in cells if cell.fate != KEEP)),
    }


def test_expected_counts_follow_from_the_scenario() -> None:
    assert scenario(1) == SCENARIO
    assert all(cell.fate in FATES for plan in SCENARIO for cell in plan.cells)
    assert expected_counts(SCENARIO) == {
        "candidates": 20,
        "observations": 12,
        "locations": 7,
        "multi_date": 4,
        "longest": 3,
        "drops": {"nodata": 1, "cloud": 1, "cloudshadow": 1, "snow": 1, "duplicate": 2, "zone_overlap": 2},
    }
    three = expected_counts(scenario(3))
    assert (three["candidates"], three["observations"], three["locations"]) == (60, 36, 21)


def test_plans_are_checked() -> None:
    with pytest.raises(ValueError, match="bad event"):
        Event("fog", 3)
    with pytest.raises(ValueError, match="unknown fate"):
        CellPlan(0, 0, "lost")
    with pytest.raises(ValueError, match="at least 1"):
        scenario(0)


def test_replicas_shift_datatakes_dates_and_places() -> None:
    plans = scenario(3)
    names = [p.name for p in plans]
    assert len(set(names)) == len(names)
    a0, a1 = plans[0], plans[len(SCENARIO)]
    assert (a1.datatake - a0.datatake, (a1.acquired - a0.acquired).days) == (10, 1)
    assert a0.iy0 - a1.iy0 >= 4
    n = len(SCENARIO)
    keys = [{p.location(c) for p in plans[k * n : (k + 1) * n] for c in p.cells} for k in range(3)]
    assert not keys[0] & keys[1] and not keys[1] & keys[2]


def to_zone(source: int, target: int) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return Transformer.from_crs(source, target, always_xy=True).transform


def cell_polygon(epsg: int, ix: int, iy: int) -> shapely.Polygon:
    """A cell outline in zone 32 coordinates (densified, so a zone 33 cell reprojects faithfully)."""
    box = shapely.segmentize(
        shapely.box(15 + CELL_M * ix, 15 + CELL_M * iy, 15 + CELL_M * (ix + 1), 15 + CELL_M * (iy + 1)), 60
    )
    to_32 = to_zone(epsg, 32632)
    return shapely.transform(box, lambda xy: np.column_stack(to_32(xy[:, 0], xy[:, 1])))


@pytest.mark.parametrize("replicas", [1, 12])
def test_e_overlaps_a_only_with_its_western_cells(replicas: int) -> None:
    plans = scenario(replicas)
    zone32 = {p.location(c) for p in plans if p.epsg == 32632 for c in p.cells}
    to_lonlat = Transformer.from_crs(32632, 4326, always_xy=True)
    for k in range(replicas):
        replica = plans[k * len(SCENARIO) : (k + 1) * len(SCENARIO)]
        a = next(p for p in replica if p.label == "A")
        e = next(p for p in replica if p.label == "E")
        a_east = [cell_polygon(*a.location(c)) for c in a.cells if c.col == 1]
        for cell in e.cells:
            outline = cell_polygon(*e.location(cell))
            if cell.col == 0:
                shares = [outline.intersection(other).area / CELL_M**2 for other in a_east]
                assert max(shares) > 0.01 and cell.fate == "zone_overlap"
                lon = to_lonlat.transform(*outline.centroid.coords[0])[0]
                assert abs(lon - 9) < abs(lon - 15)  # zone 32's meridian is nearer: E's cell loses
            else:
                assert not any(outline.intersects(cell_polygon(*key)) for key in zone32)


# --- bad products ---------------------------------------------------------------------------------


def test_bad_products(example: Example, tmp_path: Path) -> None:
    items = write_bad_products(tmp_path, seed=0)
    e = plan_of("E")
    names = {int(path.name[18:28]): path for path in tmp_path.iterdir() if path.name != ORDER_FOLDER}
    names[9003] = next(tmp_path.glob(f"{ORDER_FOLDER}/*/*/*9003*.ZIP"))
    assert sorted(names) == [9001, 9002, 9003, 9004]
    truncated = names[9001] / product_filename(names[9001].name, "image")
    with zipfile.ZipFile(example.archive / e.path) as zf:
        full = zf.getinfo(f"{e.name}/{product_filename(e.name, 'image')}").file_size
    assert truncated.stat().st_size == pytest.approx(0.6 * full, rel=0.02)
    with rasterio.open(truncated) as src, pytest.raises(RasterioIOError):
        src.read()
    assert not (names[9002] / product_filename(names[9002].name, "metadata")).exists()
    assert len(list(names[9002].iterdir())) == len(delivered_files(names[9002].name)) - 1
    with zipfile.ZipFile(names[9003]) as zf:
        assert "../evil.txt" in zf.namelist() and len(zf.namelist()) == len(delivered_files(names[9003].stem)) + 1
    with rasterio.open(names[9004] / product_filename(names[9004].name, "image")) as src:
        assert (src.count, src.transform, src.crs.to_epsg()) == (200, e.transform, 32633)
    meta = parse_metadata((names[9004] / product_filename(names[9004].name, "metadata")).read_bytes(), "9004")
    assert meta.n_bands == N_BANDS
    parsed = [pystac.Item.from_dict(item) for item in items]
    assert [ProductName.parse(item.id).datatake for item in parsed] == [9001, 9004, 9005]
    assert "image" in parsed[0].assets and "image" not in parsed[2].assets
    assert all(
        shapely.geometry.shape(item.geometry).equals(shapely.geometry.shape(parsed[0].geometry)) for item in parsed
    )
