"""Local archives of EnMAP L2A products: folders and ZIP files written here, read by index_archive."""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import box

from spectral_corpus.catalog.archive import index_archive
from spectral_corpus.catalog.bands import N_BANDS, band_table
from spectral_corpus.catalog.metadata import Bands, ProductMetadata, metadata_xml
from spectral_corpus.catalog.product import ProductName, product_filename
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.scenes import OK, REJECTED, SceneRecord
from spectral_corpus.catalog.sources import find_scenes

EPSG = 32633
FILES = ("image", "quality_cloud", "pixelmask")


def product_name(datatake: int = 1867, version: str = "010302", day: int = 24, tile: int = 8) -> str:
    """A product name acquired on 2022-07-``day`` at 10:45:26."""
    return f"ENMAP01-____L2A-DT{datatake:010d}_202207{day:02d}T104526Z_{tile:03d}_V{version}_20230628T165614Z"


def metadata(name: str, *, west: float = 13.0, cloud: float = 5.0, quality: int = 1) -> ProductMetadata:
    """Metadata of a product covering lon west..west+0.5, lat 52.0..52.3, with the nominal 224 bands."""
    parts = ProductName.parse(name)
    table = band_table()
    return ProductMetadata(
        name=name,
        level="L2A",
        datatake=parts.datatake,
        tile=parts.tile,
        processor=".".join(parts.version[i : i + 2] for i in (0, 2, 4)),
        acquired=parts.acquired,
        processed=parts.processed,
        n_bands=N_BANDS,
        corners=((west, 52.3), (west + 0.5, 52.3), (west + 0.5, 52.0), (west, 52.0)),
        bands=Bands(tuple(table["center_nm"]), tuple(table["fwhm_nm"]), (1e-4,) * N_BANDS, (0.0,) * N_BANDS),
        width=4,
        height=4,
        cloud_cover=cloud,
        snow_cover=1.5,
        quality=quality,
        projection="UTM_Zone33_North",
    )


def write_tif(path: Path, value: int) -> None:
    """A 4 x 4 px int16 GeoTIFF filled with ``value``."""
    profile = {
        "driver": "GTiff",
        "width": 4,
        "height": 4,
        "count": 1,
        "dtype": "int16",
        "crs": f"EPSG:{EPSG}",
        "transform": Affine(30.0, 0.0, 399975.0, 0.0, -30.0, 5800005.0),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, 4, 4), value, dtype=np.int16))


def write_folder(folder: Path, name: str, meta: ProductMetadata | None = None, files: tuple[str, ...] = FILES) -> Path:
    """A product folder ``folder/name`` with tiny TIFs (value = index in ``files``) and METADATA.XML."""
    product = folder / name
    product.mkdir(parents=True)
    for value, key in enumerate(files, start=1):
        write_tif(product / product_filename(name, key), value)
    if meta is not None:
        (product / product_filename(name, "metadata")).write_bytes(metadata_xml(meta))
    return product


def write_zip(folder: Path, name: str, meta: ProductMetadata, *, nested: bool = True, suffix: str = ".zip") -> Path:
    """A ZIP product whose members are ``<name>/<file>`` (``nested``) or ``<file>``."""
    path = folder / f"{name}{suffix}"
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(path, "w") as archive:
        for file in sorted(write_folder(Path(tmp), name, meta).iterdir()):
            archive.write(file, f"{name}/{file.name}" if nested else file.name)
    return path


def read_value(href: str) -> int:
    with rasterio.open(href) as src:
        return int(src.read(1)[0, 0])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    archive = tmp_path / "archive"
    archive.mkdir()
    return archive


def only(records: list[SceneRecord]) -> SceneRecord:
    assert len(records) == 1, records
    return records[0]


def test_folder_product_gives_full_record(root: Path) -> None:
    name = product_name()
    folder = write_folder(root, name, metadata(name, cloud=12.0))

    record = only(index_archive(root))

    assert record.status == OK and record.reason == ""
    assert (record.product, record.source) == (name, str(folder))
    assert (record.datatake, record.tile, record.version, record.epsg) == (1867, 8, "010302", EPSG)
    assert (record.width, record.height, record.described_by) == (4, 4, "METADATA.XML")
    assert record.acquired == datetime(2022, 7, 24, 10, 45, 26, tzinfo=UTC)
    assert record.processed == datetime(2023, 6, 28, 16, 56, 14, tzinfo=UTC)
    assert (record.cloud_cover, record.snow_cover, record.quality) == (12.0, 2.0, 1.0)  # whole percent, as DLR
    assert record.footprint is not None
    assert record.footprint.bounds == pytest.approx((13.0, 52.0, 13.5, 52.3))
    assets = record.asset_map
    assert sorted(assets) == ["image", "metadata", "pixelmask", "quality_cloud"]
    assert assets["metadata"] == str(folder / f"{name}-METADATA.XML")
    assert all(Path(href).is_absolute() for href in assets.values())
    assert [read_value(assets[key]) for key in FILES] == [1, 2, 3]


@pytest.mark.parametrize(("nested", "suffix"), [(True, ".zip"), (False, ".zip"), (True, ".ZIP")])
def test_zip_product_hrefs_open_through_vsizip(root: Path, nested: bool, suffix: str) -> None:
    name = product_name()
    path = write_zip(root, name, metadata(name), nested=nested, suffix=suffix)

    record = only(index_archive(root))

    assert (record.status, record.source, record.epsg) == (OK, str(path), EPSG)
    member = f"{name}/{name}" if nested else name
    assert record.asset_map["image"] == f"/vsizip/{path}/{member}-SPECTRAL_IMAGE.TIF"
    assert [read_value(record.asset_map[key]) for key in FILES] == [1, 2, 3]


def test_only_products_are_indexed_in_path_order(root: Path) -> None:
    first, second, nested = product_name(1), product_name(2), product_name(3)
    write_folder(root, second, metadata(second))
    write_zip(root, first, metadata(first))
    write_folder(root / "2023" / "july", nested, metadata(nested))
    (root / "README.txt").write_text("not a product")
    write_tif(root / "other.tif", 0)
    (root / "ENMAP01-not-a-product").mkdir()
    (root / "notes.zip").write_bytes(b"")
    (root / f"{first}.txt").write_text("a product name, but not a ZIP")

    records = index_archive(root)

    assert [r.product for r in records] == [nested, first, second]  # "2023/..." < "ENMAP..."
    assert all(r.status == OK for r in records)


def _zip_with_member(root: Path, member: str) -> None:
    name = product_name()
    path = write_zip(root, name, metadata(name))
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(member, b"boom")


def _folder_with_outside_link(root: Path) -> None:
    name = product_name()
    folder = write_folder(root, name, metadata(name))
    outside = root.parent / "secret.txt"
    outside.write_text("secret")
    (folder / "link.txt").symlink_to(outside)


def _linked_product_folder(root: Path) -> None:
    name = product_name()
    elsewhere = write_folder(root.parent / "elsewhere", name, metadata(name))
    (root / name).symlink_to(elsewhere, target_is_directory=True)


def _bad_xml(root: Path) -> None:
    folder = write_folder(root, product_name())
    (folder / f"{folder.name}-METADATA.XML").write_text("<level_X><metadata>")


def _incomplete_xml(root: Path) -> None:
    folder = write_folder(root, product_name())
    (folder / f"{folder.name}-METADATA.XML").write_text("<level_X><metadata/></level_X>")


def _other_name(root: Path) -> None:
    write_folder(root, product_name(), metadata(product_name(version="010400")))


def _no_image(root: Path) -> None:
    name = product_name()
    write_folder(root, name, metadata(name), files=("quality_cloud",))


def _corrupt_zip(root: Path) -> None:
    name = product_name()
    data = write_zip(root, name, metadata(name)).read_bytes()
    (root / f"{name}.zip").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda root: write_folder(root, product_name()), "no METADATA.XML"),
        (lambda root: _zip_with_member(root, "../evil.txt"), "unsafe ZIP member '../evil.txt'"),
        (lambda root: _zip_with_member(root, "a/../../evil.txt"), "unsafe ZIP member 'a/../../evil.txt'"),
        (lambda root: _zip_with_member(root, "/etc/evil.conf"), "unsafe ZIP member '/etc/evil.conf'"),
        (_folder_with_outside_link, "symlink 'link.txt' resolves outside the archive root"),
        (_linked_product_folder, f"symlink '{product_name()}' resolves outside the archive root"),
        (_bad_xml, "METADATA.XML is not well-formed XML"),
        (_incomplete_xml, "METADATA.XML lacks level_X/metadata/name"),
        (_other_name, f"METADATA.XML names product '{product_name(version='010400')}', not '{product_name()}'"),
        (_no_image, "no SPECTRAL_IMAGE file"),
        (_corrupt_zip, "corrupt ZIP file"),
    ],
)
def test_unusable_products_are_rejected_with_reason(root: Path, build: Callable[[Path], object], reason: str) -> None:
    build(root)

    record = only(index_archive(root))

    assert record.status == REJECTED
    assert reason in record.reason
    assert (record.product, record.datatake, record.version) == (product_name(), 1867, "010302")


def test_symlink_inside_root_is_followed(root: Path) -> None:
    name = product_name()
    staging = write_folder(root / "staging", name, metadata(name))
    folder = root / "products" / name
    folder.mkdir(parents=True)
    for file in staging.iterdir():
        (folder / file.name).symlink_to(file)

    records = index_archive(root / "products")
    assert [r.status for r in records] == [REJECTED]  # staging is outside this root

    records = [r for r in index_archive(root) if r.source == str(folder.resolve())]
    assert only(records).status == OK
    assert read_value(only(records).asset_map["image"]) == 1


def test_keep_newest_across_folder_and_zip(root: Path) -> None:
    old, new, other = product_name(version="010302"), product_name(version="010400"), product_name(tile=9)
    write_folder(root, old, metadata(old))
    new_zip = write_zip(root, new, metadata(new))
    write_folder(root, other, metadata(other))

    records = {r.product: r for r in find_scenes(str(root), SceneQuery())}

    assert records[new].status == OK and records[new].source == str(new_zip)
    assert records[other].status == OK
    assert records[old].status == REJECTED
    assert records[old].reason == f"superseded by newer processor version {new}"


@pytest.fixture
def three_scenes(root: Path) -> dict[str, str]:
    """Scenes at lon 13, 14 and 15 on July 23, 24 and 25 with cloud cover 0, 10 and 20 %; one broken."""
    names = {}
    for i, label in enumerate(("a", "b", "c")):
        name = product_name(datatake=100 + i, day=23 + i)
        write_folder(root, name, metadata(name, west=13.0 + i, cloud=10.0 * i, quality=i))
        names[label] = name
    names["broken"] = product_name(datatake=999, day=22)
    write_folder(root, names["broken"])  # rejected (no METADATA.XML): place and cloud unknown
    return names


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "abc"),
        ({"bbox": (13.9, 51.0, 14.1, 53.0)}, "b"),
        ({"bbox": "14.4,52.1,15.2,52.2"}, "bc"),
        ({"start": "2022-07-24"}, "bc"),
        ({"end": "2022-07-24"}, "ab"),  # a date-only end includes that day
        ({"start": "2022-07-24T10:45:27", "end": "2022-07-25T00:00:00Z"}, ""),
        ({"max_cloud": 10}, "ab"),  # inclusive
        ({"max_cloud": 9.99, "bbox": (13.0, 52.0, 16.0, 53.0)}, "a"),
        ({"max_quality": 0}, "a"),  # overallQuality 0 nominal, 1 reduced, 2 low: lower is better
        ({"max_quality": 1}, "ab"),
        ({"max_quality": 2}, "abc"),
        ({"max_quality": 1, "max_cloud": 9}, "a"),
    ],
)
def test_query_filters_archive(
    root: Path, three_scenes: dict[str, str], options: dict[str, Any], expected: str
) -> None:
    records = index_archive(root, SceneQuery.from_options(**options))

    ok = {r.product for r in records if r.status == OK}
    assert ok == {three_scenes[label] for label in expected}
    # The broken product cannot be placed or its cloud judged, but its name dates it (July 22).
    broken_kept = three_scenes["broken"] in {r.product for r in records}
    assert broken_kept == ("start" not in options)


def test_query_from_aoi_file_is_reprojected_and_merged(root: Path, three_scenes: dict[str, str]) -> None:
    # Two small squares, one over scene a and one over scene c, saved in UTM 33N.
    squares = [box(13.1, 52.1, 13.2, 52.2), box(15.3, 52.1, 15.4, 52.2)]
    path = root.parent / "aoi.gpkg"
    gpd.GeoDataFrame(geometry=squares, crs=4326).to_crs(EPSG).to_file(path)

    query = SceneQuery.from_options(aoi_path=path, end="2022-07-25")

    assert query.aoi is not None and query.aoi.geom_type == "MultiPolygon"
    assert query.aoi.bounds == pytest.approx((13.1, 52.1, 15.4, 52.2), abs=1e-6)
    assert query.end == datetime(2022, 7, 25, 23, 59, 59, 999999, tzinfo=UTC)
    found = {r.product for r in index_archive(root, query) if r.status == OK}
    assert found == {three_scenes["a"], three_scenes["c"]}


def test_query_normalises_times_and_records_itself() -> None:
    query = SceneQuery.from_options(bbox=[1, 2, 3, 4], start="2023-01-01", end="2023-02-01T12:00:00+02:00", max_cloud=5)

    assert query.start == datetime(2023, 1, 1, tzinfo=UTC)
    assert query.end == datetime(2023, 2, 1, 10, tzinfo=UTC)
    assert json.loads(json.dumps(query.as_dict())) == {
        "collection": "ENMAP_HSI_L2A",
        "bbox": [1.0, 2.0, 3.0, 4.0],
        "aoi": None,
        "start": "2023-01-01T00:00:00+00:00",
        "end": "2023-02-01T10:00:00+00:00",
        "max_cloud": 5.0,
        "max_quality": None,
    }
    record = SceneRecord(product="x", source="y")
    assert not query.matches(record)  # nothing known fails every set filter...
    assert query.matches(record, unknown_passes=True)
    assert SceneQuery().matches(record)  # ...and passes when none is set
    assert query.matches(replace(record, acquired=datetime(2023, 1, 5, tzinfo=UTC)), unknown_passes=True)
    assert not query.matches(replace(record, acquired=datetime(2024, 1, 5, tzinfo=UTC)), unknown_passes=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bbox": "1,2,3"}, "bbox needs 4 numbers"),
        ({"bbox": (10, 0, 5, 1)}, "west <= east"),
        ({"start": "2023-02-01", "end": "2023-01-01"}, "is after end"),
    ],
)
def test_query_rejects_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SceneQuery.from_options(**options)


def test_unknown_source_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / "scenes.csv").write_text("")
    for source in ("ftp://example.org/stac", str(tmp_path / "missing"), str(tmp_path / "scenes.csv")):
        with pytest.raises(ValueError, match="SRC must be an http"):
            find_scenes(source, SceneQuery())
